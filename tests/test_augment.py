"""The DeiT recipe's batch augmentations do what they say."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxprune.data.augment import augment, cutmix, random_erase


def _two_images(h=16, w=12):
  """Image 0 all zeros (class 0), image 1 all ones (class 1): a pixel's value says its source."""
  images = jnp.stack([jnp.zeros((h, w, 3)), jnp.ones((h, w, 3))])
  return images, jax.nn.one_hot(jnp.array([0, 1]), 2)


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_box_area_matches_the_mixed_label_weight(seed):
  images, targets = _two_images()
  out, mixed = cutmix(jax.random.key(seed), images, targets, alpha=1.0)
  out, mixed = np.asarray(out), np.asarray(mixed)
  assert set(np.unique(out)) <= {0.0, 1.0}  # pasted, not blended
  pasted = out[0].mean()  # fraction of image 0 that came from image 1
  np.testing.assert_allclose(mixed[0], [1 - pasted, pasted], atol=1e-6)
  np.testing.assert_allclose(mixed[1], [pasted, 1 - pasted], atol=1e-6)
  box = out[0, ..., 0] > 0  # one axis-aligned rectangle
  if box.any():
    rows, cols = np.flatnonzero(box.any(1)), np.flatnonzero(box.any(0))
    assert box[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()


def test_random_erasing_fills_one_box_per_chosen_image():
  images = jnp.full((64, 20, 20, 1), 0.5)
  out = np.asarray(random_erase(jax.random.key(0), images, p=1.0, mean=(0.1,), std=(0.0001,)))
  erased = np.abs(out - 0.5) > 1e-3
  frac = erased.mean(axis=(1, 2, 3))
  assert (frac > 0).all() and frac.min() >= 0.01 and frac.max() <= 0.36  # 2-33 %, pixel-rounded
  np.testing.assert_allclose(out[erased], 0.1, atol=1e-3)  # the fill is N(mean, std) per pixel
  untouched = np.asarray(random_erase(jax.random.key(0), images, p=0.0, mean=(0.1,), std=(1.0,)))
  np.testing.assert_array_equal(untouched, images)


def test_mixup_cutmix_switch_uses_both_and_labels_stay_distributions():
  images, targets = _two_images()
  labels = jnp.array([0, 1])
  cfg = ml_collections.ConfigDict(dict(crop_scale_min=1.0, shift=0, flip=False, mixup=0.8,
                                       cutmix=1.0, erase=0.0))
  kinds = set()
  for seed in range(12):
    out, mixed = augment(jax.random.key(seed), images, labels, 2, cfg)
    np.testing.assert_allclose(np.asarray(mixed).sum(1), 1.0, atol=1e-6)
    values = np.unique(np.asarray(out))
    kinds.add("cutmix" if set(values) <= {0.0, 1.0} else "mixup")
  assert kinds == {"cutmix", "mixup"}


def test_old_augmentations_draw_the_same_random_streams():
  """Adding erasing and CutMix must not change the shift/flip/mixup draws of existing configs
  (every figure measured before them stays reproducible): recomputed here from the key split
  those augmentations always used."""
  from jaxprune.data.augment import _shift
  images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
  targets = jax.nn.one_hot(jnp.arange(4), 4)
  cfg = ml_collections.ConfigDict(dict(crop_scale_min=1.0, shift=2, flip=True, mixup=0.2,
                                       cutmix=0.0, erase=0.0))
  got, got_t = augment(jax.random.key(3), images, jnp.arange(4), 4, cfg)
  _, k_shift, k_flip, k_mix = jax.random.split(jax.random.key(3), 4)
  x = jax.vmap(lambda k, im: _shift(k, im, 2))(jax.random.split(k_shift, 4), images)
  x = jnp.where(jax.random.bernoulli(k_flip, 0.5, (4, 1, 1, 1)), x[:, :, ::-1], x)
  lam = jax.random.beta(k_mix, 0.2, 0.2)
  np.testing.assert_allclose(got, lam * x + (1 - lam) * x[::-1], atol=1e-6)
  np.testing.assert_allclose(got_t, lam * targets + (1 - lam) * targets[::-1], atol=1e-6)
