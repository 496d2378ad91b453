"""On-device preprocessing: uint8 → normalised float, and training augmentation.

Everything runs inside the jitted step from a key folded with the step number, so augmentation
is sharded with the batch and exactly reproducible after a resume.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections


def normalise(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 (or [0,1] float) NHWC images → (x/255 − mean) / std, float32."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _random_resized_crop(key, image, scale_min: float, ratio=(3 / 4, 4 / 3)):
  h, w = image.shape[:2]
  k1, k2, k3, k4 = jax.random.split(key, 4)
  area = jax.random.uniform(k1, (), minval=scale_min, maxval=1.0)
  log_r = jax.random.uniform(k2, (), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
  r = jnp.exp(log_r)
  ch = jnp.clip(jnp.sqrt(area / r) * h, 1.0, h)
  cw = jnp.clip(jnp.sqrt(area * r) * w, 1.0, w)
  y0 = jax.random.uniform(k3, ()) * (h - ch)
  x0 = jax.random.uniform(k4, ()) * (w - cw)
  scale = jnp.stack([h / ch, w / cw])
  translation = -jnp.stack([y0, x0]) * scale
  return jax.image.scale_and_translate(image, image.shape, (0, 1), scale, translation,
                                       method="linear", antialias=False)


def _shift(key, image, pixels: int):
  h, w, _ = image.shape
  padded = jnp.pad(image, ((pixels, pixels), (pixels, pixels), (0, 0)))
  dy, dx = jax.random.randint(key, (2,), 0, 2 * pixels + 1)
  return jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, image.shape[2]))


def augment(key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int,
            cfg: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """Augments float [0,1] images; returns (images, soft labels [B, classes]).

  cfg fields: `crop_scale_min` (random resized crop when < 1), `shift` (± pixels, zero padded),
  `flip` (horizontal, p=0.5), `mixup` (Beta(α, α) mixing with the reversed batch when α > 0).
  """
  b = images.shape[0]
  k_crop, k_shift, k_flip, k_mix = jax.random.split(key, 4)
  if cfg.crop_scale_min < 1.0:
    keys = jax.random.split(k_crop, b)
    images = jax.vmap(lambda k, x: _random_resized_crop(k, x, cfg.crop_scale_min))(keys, images)
  if cfg.shift > 0:
    keys = jax.random.split(k_shift, b)
    images = jax.vmap(lambda k, x: _shift(k, x, cfg.shift))(keys, images)
  if cfg.flip:
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1], images)
  targets = jax.nn.one_hot(labels, num_classes)
  if cfg.mixup > 0:
    lam = jax.random.beta(k_mix, cfg.mixup, cfg.mixup)
    images = lam * images + (1 - lam) * images[::-1]
    targets = lam * targets + (1 - lam) * targets[::-1]
  return images, targets
