import gzip
import os

import numpy as np
import pytest

from jaxprune.data import batch_indices, fewshot_indices, load_source
from jaxprune.data.sources import read_idx
from jaxprune.errors import UserError


def test_mnist5k_split_is_per_class():
  ds = load_source("mnist5k")
  assert len(ds.train) == 4000 and len(ds.test) == 1000 and ds.num_classes == 10
  assert np.bincount(ds.train.labels).tolist() == [400] * 10
  assert np.bincount(ds.test.labels).tolist() == [100] * 10
  images, labels = ds.train.get(np.arange(3))
  assert images.shape == (3, 28, 28, 1) and images.dtype == np.uint8 and images.max() > 100
  again = load_source("mnist5k")
  np.testing.assert_array_equal(again.test.images, ds.test.images)


def test_resize_on_load():
  ds = load_source("mnist5k", image_size=16)
  assert ds.image_shape == (16, 16, 1) and ds.train.get(np.arange(2))[0].shape == (2, 16, 16, 1)


def _write_folder(root, sizes=(8, 8)):
  from PIL import Image
  rng = np.random.default_rng(0)
  for split, n in (("train", 5), ("test", 2)):
    for cls in ("cat", "dog", "emu"):
      os.makedirs(root / split / cls)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*sizes, 3), dtype=np.uint8)).save(
            root / split / cls / f"{i}.png")


def test_folder_source(tmp_path):
  _write_folder(tmp_path)
  ds = load_source(f"folder:{tmp_path}")
  assert ds.num_classes == 3 and ds.image_shape == (8, 8, 3)
  assert len(ds.train) == 15 and len(ds.test) == 6
  assert ds.train.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
  assert load_source(f"folder:{tmp_path}", image_size=12).image_shape == (12, 12, 3)


def test_folder_source_errors(tmp_path):
  with pytest.raises(UserError, match="train is not a directory"):
    load_source(f"folder:{tmp_path}")


def _write_idx(path, array, gz):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  data = header + array.astype(np.uint8).tobytes()
  if gz:
    with gzip.open(str(path) + ".gz", "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_source(tmp_path, gz):
  rng = np.random.default_rng(1)
  arrays = {"train-images-idx3-ubyte": rng.integers(0, 255, (12, 6, 6)),
            "train-labels-idx1-ubyte": np.arange(12) % 4,
            "t10k-images-idx3-ubyte": rng.integers(0, 255, (4, 6, 6)),
            "t10k-labels-idx1-ubyte": np.arange(4)}
  for name, a in arrays.items():
    _write_idx(tmp_path / name, a, gz)
  ds = load_source(f"idx:{tmp_path}")
  assert ds.num_classes == 4 and ds.image_shape == (6, 6, 1)
  np.testing.assert_array_equal(ds.train.images[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(ds.test.labels, arrays["t10k-labels-idx1-ubyte"])


def test_idx_bad_magic(tmp_path):
  (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04")
  with pytest.raises(UserError, match="not an IDX file"):
    read_idx(str(tmp_path / "x"))


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=20):
    ds = load_source("tfds:mnist", image_size=16)
    assert ds.num_classes == 10 and ds.image_shape == (16, 16, 1)
    images, labels = ds.train.get(np.array([0, 5, 7]))
    assert images.shape == (3, 16, 16, 1) and images.dtype == np.uint8
    assert labels.shape == (3,) and len(ds.train.labels) == 20


def test_unknown_source():
  with pytest.raises(UserError, match="data.source = 'mnist' is unknown; allowed are mnist5k"):
    load_source("mnist")


def test_fewshot_is_deterministic_per_seed_and_balanced():
  labels = np.repeat(np.arange(10), 50)
  a = fewshot_indices(labels, 100, seed=3)
  np.testing.assert_array_equal(a, fewshot_indices(labels, 100, seed=3))
  assert not np.array_equal(a, fewshot_indices(labels, 100, seed=4))
  assert np.bincount(labels[a]).tolist() == [10] * 10
  b = fewshot_indices(labels, 55, seed=0)
  assert sorted(np.bincount(labels[b]).tolist()) == [5] * 5 + [6] * 5
  c = fewshot_indices(labels, 37, seed=0, balanced=False)
  assert len(np.unique(c)) == 37
  with pytest.raises(UserError, match="data.fewshot = 600"):
    fewshot_indices(labels, 600, seed=0)


def test_batch_indices_cover_each_epoch_and_allow_batch_larger_than_data():
  first_epoch = np.concatenate([batch_indices(10, 5, s, seed=0) for s in range(2)])
  assert sorted(first_epoch.tolist()) == list(range(10))
  big = batch_indices(10, 64, 3, seed=0)
  assert big.shape == (64,) and set(big.tolist()) == set(range(10))
  np.testing.assert_array_equal(batch_indices(10, 64, 3, seed=0), big)


# Damaged and awkward inputs (issue 10, cases 10, 12, 13) ----------------------------------------
def test_class_folder_without_training_images_is_named(tmp_path):
  _write_folder(tmp_path)
  for f in os.listdir(tmp_path / "train" / "dog"):
    os.remove(tmp_path / "train" / "dog" / f)
  (tmp_path / "train" / "dog" / "readme.txt").write_text("no images here")
  with pytest.raises(UserError, match=r"class folder .*train/dog has no images"):
    load_source(f"folder:{tmp_path}")


def test_grayscale_and_rgb_in_one_folder_share_one_channel_count(tmp_path):
  from PIL import Image
  _write_folder(tmp_path)
  gray = np.full((8, 8), 200, np.uint8)
  for split in ("train", "test"):  # the first file of each split is grayscale, the rest RGB
    Image.fromarray(gray, "L").save(tmp_path / split / "cat" / "0.png")
  ds = load_source(f"folder:{tmp_path}")
  assert ds.image_shape == (8, 8, 3)
  assert ds.train.images.shape[1:] == ds.test.images.shape[1:] == (8, 8, 3)
  np.testing.assert_array_equal(ds.train.images[0], np.full((8, 8, 3), 200, np.uint8))


def test_corrupt_image_is_named_or_skipped_with_a_count(tmp_path, capsys):
  _write_folder(tmp_path)
  bad = tmp_path / "train" / "emu" / "3.png"
  bad.write_bytes(bad.read_bytes()[:40])  # truncated inside the image data
  with pytest.raises(UserError, match=r"cannot read image .*train/emu/3.png .*data.skip_corrupt"):
    load_source(f"folder:{tmp_path}")
  ds = load_source(f"folder:{tmp_path}", None, None, True)
  assert len(ds.train) == 14 and np.bincount(ds.train.labels).tolist() == [5, 5, 4]
  assert "skipped 1 unreadable images" in capsys.readouterr().out


@pytest.mark.parametrize("content, gz, expected", [
    (bytes([0, 0, 8, 3, 0, 0]), False, "truncated IDX header"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 9]) + bytes(4), False, r"header says shape \(9,\) but the file "
                                                        "holds 4 values"),
    (None, True, "cannot read it .*truncated or corrupt"),
])
def test_damaged_idx_files_are_clear_errors(tmp_path, content, gz, expected):
  path = tmp_path / ("x.gz" if gz else "x")
  if gz:
    full = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(100))
    path.write_bytes(full[:len(full) // 2])
  else:
    path.write_bytes(content)
  with pytest.raises(UserError, match=expected):
    read_idx(str(path))
