"""Host-side transforms of sources decoded per batch (data/transforms.py)."""

import math

import jax
import ml_collections
import numpy as np

from jaxprune.data import TrainBatches, load_source
from jaxprune.data.pipeline import _Rows
from jaxprune.data.transforms import TrainCrop, crop_resize, eval_view, random_box
from jaxprune.methods.common import preprocess


def test_random_box_follows_torchvisions_bounds():
  rng = np.random.default_rng(0)
  areas, ratios = [], []
  for _ in range(2000):
    top, left, h, w = random_box(rng, 120, 200, 0.08)
    assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 200
    areas.append(h * w / (120 * 200))
    ratios.append(w / h)
  assert 0.07 < min(areas) and max(areas) <= 1.0 and 0.3 < np.mean(areas) < 0.5  # large tries often do not fit
  assert min(ratios) > 3 / 4 * 0.9 and max(ratios) < 4 / 3 * 1.1
  assert random_box(np.random.default_rng(3), 50, 60, 0.3) == random_box(
      np.random.default_rng(3), 50, 60, 0.3)
  # no allowed box fits a 1x40 strip: the centre crop at the nearest allowed ratio
  assert random_box(np.random.default_rng(0), 1, 40, 0.9) == (0, 19, 1, 1)


def test_crop_resize_keeps_the_box_and_eval_view_the_centre():
  image = np.zeros((40, 60, 3), np.uint8)
  image[10:30, 20:40] = 255  # a white 20x20 square in the middle
  np.testing.assert_array_equal(crop_resize(image, (10, 20, 20, 20), 8), np.full((8, 8, 3), 255))
  view = eval_view(image, 35, 0.875)  # int(35 / 0.875) = 40: no scaling, the 35x35 centre
  np.testing.assert_array_equal(view, image[2:37, 12:47])  # offsets round(2.5), round(12.5)
  assert eval_view(image, 14, 0.875).shape == (14, 14, 3)
  assert eval_view(image, 12, 0.0).shape == (12, 12, 3)  # crop 0: the whole image squashed


def _folder(root, n=4, size=(24, 36)):
  import os

  from PIL import Image
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    for cls in ("a", "b"):
      os.makedirs(root / split / cls)
      for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
            root / split / cls / f"{i}.png")
  return load_source(f"folder:{root}", 16, None, False, 0.875)


def test_host_crops_do_not_depend_on_processes_or_workers(tmp_path):
  ds = _folder(tmp_path)
  assert ds.image_shape == (16, 16, 3) and ds.test.get(np.arange(2))[0].shape == (2, 16, 16, 3)
  crop = TrainCrop(16, 0.3, True, 0.875)
  whole = _Rows(ds.train, 8, 1, slice(0, 8), crop)(3)
  halves = [_Rows(ds.train, 8, 1, rows, crop)(3) for rows in (slice(0, 4), slice(4, 8))]
  np.testing.assert_array_equal(whole[0], np.concatenate([h[0] for h in halves]))
  np.testing.assert_array_equal(whole[1], np.concatenate([h[1] for h in halves]))
  plain = _Rows(ds.train, 8, 1, slice(0, 8))(3)
  assert np.array_equal(whole[1], plain[1]) and not np.array_equal(whole[0], plain[0])
  from jaxprune.train.mesh import data_sharding, make_mesh
  batches = TrainBatches(ds.train, 8, 1, data_sharding(make_mesh()), threads=2, host=crop)
  np.testing.assert_array_equal(np.asarray(batches(3)["image"]), whole[0])


def test_crop_and_flip_are_not_repeated_on_the_device_for_host_cropped_sources():
  aug = dict(crop_scale_min=0.3, shift=0, flip=True, mixup=0.0, cutmix=0.0, erase=0.0)
  images = jax.random.randint(jax.random.key(0), (4, 8, 8, 3), 0, 255).astype(np.uint8)
  batch = {"image": images, "label": np.arange(4) % 2}
  out = {}
  for source in ("folder:/x", "mnist5k"):
    config = ml_collections.ConfigDict({"data": {"source": source, "augment": aug,
                                                 "mean": (0.5,) * 3, "std": (0.5,) * 3}})
    out[source] = preprocess(config, 2, batch, jax.random.key(1), train=True)[0]
  np.testing.assert_allclose(out["folder:/x"], (images / 255.0 - 0.5) / 0.5, atol=1e-6)
  assert not np.allclose(out["mnist5k"], out["folder:/x"])
  assert math.isfinite(float(out["mnist5k"].sum()))


def test_randaugment_operations_do_what_they_say():
  from PIL import Image

  from jaxprune.data.randaugment import OPS, RandAugment
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
  img = Image.fromarray(image)
  op = lambda name, level, seed=0: np.asarray(  # noqa: E731
      OPS[name](img, level, np.random.default_rng(seed), (124, 116, 104))).astype(int)
  np.testing.assert_array_equal(op("invert", 5), 255 - image)
  assert set(np.unique(op("posterize", 10) % 256)) == {0}  # level 10 keeps no bits
  assert set(np.unique(op("posterize", 5) % 64)) == {0}  # level 5 keeps 2 bits
  np.testing.assert_array_equal(op("solarize", 0), image)  # threshold 256: nothing inverted
  np.testing.assert_array_equal(op("solarize", 10), 255 - image)  # threshold 0: all inverted
  added = op("solarize_add", 10)
  np.testing.assert_array_equal(added, np.where(image < 128, np.minimum(255, image + 110), image))
  for name in ("brightness", "color", "contrast", "sharpness", "rotate", "shear_x", "shear_y",
               "translate_x", "translate_y"):
    np.testing.assert_array_equal(op(name, 0), image)  # level 0 = unchanged
    assert np.abs(op(name, 10) - image).mean() > 5, name  # level 10 = a strong change
  shifted = op("translate_x", 10, seed=1)  # ±45 % of the width, filled with the mean pixel
  assert (shifted[:, :12] == (124, 116, 104)).all() or (shifted[:, -12:] == (124, 116, 104)).all()
  # the pipeline: per image a pure function of its generator; prob 0 = identity; magnitude
  # clipped to [0, 10] (a huge std does not fail)
  ra = RandAugment(9.0, 0.5)
  np.testing.assert_array_equal(ra(image, np.random.default_rng(7)), ra(image, np.random.default_rng(7)))
  np.testing.assert_array_equal(RandAugment(9.0, prob=0.0)(image, rng), image)
  assert RandAugment(9.0, std=100.0)(image, rng).shape == image.shape
  changed = [not np.array_equal(ra(image, np.random.default_rng(s)), image) for s in range(200)]
  assert 0.6 < np.mean(changed) < 0.9  # 2 layers at p = 0.5: 75 % of images see at least one


def test_randaugment_moves_crop_and_flip_to_the_host_for_in_memory_sources():
  from jaxprune.data.sources import augments_on_host
  data = lambda source, m: ml_collections.ConfigDict(  # noqa: E731
      {"source": source, "augment": {"randaugment": m}})
  assert not augments_on_host(data("mnist5k", 0.0)) and augments_on_host(data("mnist5k", 9.0))
  assert augments_on_host(data("folder:/x", 0.0))


def test_repeated_copies_are_augmented_differently(tmp_path):
  ds = _folder(tmp_path)
  crop = TrainCrop(16, 0.3, True, 0.875)
  images, labels = _Rows(ds.train, 6, 0, slice(0, 6), crop, repeats=3)(0)
  assert labels[0] == labels[1] == labels[2]
  assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])


def test_pil_fast_path_gives_the_pixels_of_the_array_path(tmp_path):
  ds = _folder(tmp_path)
  crop = TrainCrop(16, 0.3, True, 0.875)
  pil, label = ds.train.example_pil(3)
  array, label2 = ds.train.example(3)
  assert label == label2
  np.testing.assert_array_equal(crop(pil, np.random.default_rng(5)),
                                crop(array, np.random.default_rng(5)))
  np.testing.assert_array_equal(eval_view(pil, 16, 0.875), eval_view(array, 16, 0.875))
