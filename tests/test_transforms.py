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
