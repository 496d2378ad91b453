"""On-device preprocessing: uint8 → normalised float, and training augmentation.

Everything runs inside the jitted step from a key folded with the step number, so augmentation
is sharded with the batch and exactly reproducible after a resume.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections


MIX_SWITCH = 0.5  # with Mixup and CutMix both on: P(CutMix) per batch (timm/DeiT's switch_prob)


def normalise(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """uint8 (or [0,1] float) NHWC images → (x/255 − mean) / std, float32."""
  x = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    x = x / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def renormalise(x: jax.Array, src: tuple, dst: tuple) -> jax.Array:
  """Images normalised with `src` = (mean, std) → the same pixels normalised with `dst`."""
  (sm, ss), (dm, ds) = [(jnp.asarray(m, jnp.float32), jnp.asarray(s, jnp.float32))
                        for m, s in (src, dst)]
  return (x * ss + sm - dm) / ds


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


def _box(key, h: int, w: int, lam: jax.Array, scale=1.0, log_ratio=(0.0, 0.0)):
  """A random box of area ≈ (1 − lam)·scale·h·w and aspect ratio exp(U(log_ratio)), as a bool
  [h, w] mask; with `scale` = 1 and ratio 1 the CutMix box (centre uniform, clipped)."""
  k1, k2, k3 = jax.random.split(key, 3)
  r = jnp.exp(jax.random.uniform(k3, (), minval=log_ratio[0], maxval=log_ratio[1]))
  area = (1.0 - lam) * scale * h * w
  bh, bw = jnp.sqrt(area / r), jnp.sqrt(area * r)
  cy = jax.random.uniform(k1, (), maxval=h)
  cx = jax.random.uniform(k2, (), maxval=w)
  ys, xs = jnp.arange(h)[:, None] + 0.5, jnp.arange(w)[None, :] + 0.5
  return ((ys >= jnp.clip(cy - bh / 2, 0, h)) & (ys < jnp.clip(cy + bh / 2, 0, h))
          & (xs >= jnp.clip(cx - bw / 2, 0, w)) & (xs < jnp.clip(cx + bw / 2, 0, w)))


def cutmix(key, images: jax.Array, targets: jax.Array, alpha: float):
  """CutMix with the reversed batch: one box (area 1 − λ, λ ~ Beta(α, α)) pasted into every
  image; the label weight is the box's *actual* area after clipping, as timm does."""
  k_lam, k_box = jax.random.split(key)
  h, w = images.shape[1:3]
  box = _box(k_box, h, w, jax.random.beta(k_lam, alpha, alpha))
  lam = 1.0 - box.mean()
  images = jnp.where(box[None, :, :, None], images[::-1], images)
  return images, lam * targets + (1 - lam) * targets[::-1]


def mixup(key, images: jax.Array, targets: jax.Array, alpha: float):
  """Mixup with the reversed batch, λ ~ Beta(α, α)."""
  lam = jax.random.beta(key, alpha, alpha)
  return lam * images + (1 - lam) * images[::-1], lam * targets + (1 - lam) * targets[::-1]


def random_erase(key, images: jax.Array, p: float, mean, std) -> jax.Array:
  """Random Erasing (timm's "pixel" mode), per image with probability `p`: a box of 2-33 % of
  the image with aspect ratio in [0.3, 3.3] filled with per-pixel noise that is N(0, 1) after
  normalisation (so `mean + std·N(0, 1)` in [0, 1] pixel space)."""
  b, h, w, c = images.shape
  k_on, k_lam, k_box, k_noise = jax.random.split(key, 4)
  on = jax.random.bernoulli(k_on, p, (b,))
  # area fraction U(0.02, 1/3): _box takes 1 − lam as the fraction
  lam = 1.0 - jax.random.uniform(k_lam, (b,), minval=0.02, maxval=1 / 3)
  boxes = jax.vmap(lambda k, l: _box(k, h, w, l, log_ratio=(jnp.log(0.3), jnp.log(1 / 0.3))))(
      jax.random.split(k_box, b), lam)
  noise = (jnp.asarray(mean, jnp.float32) + jnp.asarray(std, jnp.float32)
           * jax.random.normal(k_noise, images.shape))
  return jnp.where((boxes & on[:, None, None])[..., None], noise, images)


def augment(key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int,
            cfg: ml_collections.ConfigDict, mean=(0.5,), std=(0.5,)
            ) -> tuple[jax.Array, jax.Array]:
  """Augments float [0,1] images; returns (images, soft labels [B, classes]).

  cfg fields: `crop_scale_min` (random resized crop when < 1), `shift` (± pixels, zero padded),
  `flip` (horizontal, p=0.5), `erase` (Random Erasing probability per image; the fill uses the
  normalisation `mean`/`std`), `mixup` / `cutmix` (Beta(α, α) mixing with the reversed batch
  when α > 0; with both, CutMix is chosen per batch with probability `MIX_SWITCH`), in the order
  of the DeiT recipe (per-image transforms, erasing, then batch mixing).
  """
  b = images.shape[0]
  k_crop, k_shift, k_flip, k_mix = jax.random.split(key, 4)  # as before erasing and CutMix:
  k_erase, k_switch = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)  # same streams
  if cfg.crop_scale_min < 1.0:
    keys = jax.random.split(k_crop, b)
    images = jax.vmap(lambda k, x: _random_resized_crop(k, x, cfg.crop_scale_min))(keys, images)
  if cfg.shift > 0:
    keys = jax.random.split(k_shift, b)
    images = jax.vmap(lambda k, x: _shift(k, x, cfg.shift))(keys, images)
  if cfg.flip:
    flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
    images = jnp.where(flip, images[:, :, ::-1], images)
  if cfg.get("erase", 0.0) > 0:
    images = random_erase(k_erase, images, cfg.erase, mean, std)
  targets = jax.nn.one_hot(labels, num_classes)
  mix, cut = cfg.mixup, cfg.get("cutmix", 0.0)
  if mix > 0 and cut > 0:
    use_cut = jax.random.bernoulli(k_switch, MIX_SWITCH)
    images, targets = jax.lax.cond(use_cut, lambda: cutmix(k_mix, images, targets, cut),
                                   lambda: mixup(k_mix, images, targets, mix))
  elif cut > 0:
    images, targets = cutmix(k_mix, images, targets, cut)
  elif mix > 0:
    images, targets = mixup(k_mix, images, targets, mix)
  return images, targets
