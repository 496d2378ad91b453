"""Host-side image transforms of sources decoded per batch (folder, TFDS), on full-resolution
pixels before they become `size` squares, as torchvision's (DeiT recipe) do:

  train  RandomResizedCrop (area U(scale_min, 1) of the image, aspect ratio log-uniform in
         [3/4, 4/3], ten tries then a centre crop of the nearest allowed ratio), bicubic, and a
         horizontal flip with probability 1/2;
  eval   resize the shorter side to size / crop and cut the centre size×size (DeiT: crop 0.875,
         256 → 224); crop 0 squashes the whole image to a square (the in-memory sources' way).

Each image's randomness comes from its own generator, seeded with (seed, step, row of the
global batch), so a batch does not depend on how many processes or workers made it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxprune.data.randaugment import RandAugment

RATIO = (3 / 4, 4 / 3)


def _pil(image):
  """A PIL image of a uint8 [H, W, C] array (a PIL image passes through)."""
  from PIL import Image
  if isinstance(image, Image.Image):
    return image
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _hw(image) -> tuple[int, int]:
  return (image.size[1], image.size[0]) if hasattr(image, "getbands") else image.shape[:2]


def _array(pil, size: int, channels: int) -> np.ndarray:
  return np.asarray(pil).reshape(size, size, channels)


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int,
                bicubic: bool = True) -> np.ndarray:
  """The `box` (top, left, height, width) of a uint8 [H, W, C] image cut out, then resized to
  size×size (no pixel outside the box contributes, as torchvision's `resized_crop`)."""
  from PIL import Image
  top, left, h, w = box
  pil = _pil(image)
  channels = len(pil.getbands())
  if _hw(image) == (h, w) == (size, size):
    return image if isinstance(image, np.ndarray) else _array(pil, size, channels)
  if (top, left, h, w) != (0, 0, *_hw(image)):
    pil = pil.crop((left, top, left + w, top + h))
  out = pil.resize((size, size), Image.BICUBIC if bicubic else Image.BILINEAR)
  return _array(out, size, channels)


def random_box(rng: np.random.Generator, h: int, w: int, scale_min: float
               ) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box for an h×w image."""
  area = h * w
  log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
  for _ in range(10):
    target = area * rng.uniform(scale_min, 1.0)
    ratio = math.exp(rng.uniform(*log_ratio))
    cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
  ratio = w / h  # fallback: the whole image's centre at the nearest allowed ratio
  if ratio < RATIO[0]:
    cw, ch = w, int(round(w / RATIO[0]))
  elif ratio > RATIO[1]:
    ch, cw = h, int(round(h * RATIO[1]))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclasses.dataclass(frozen=True)
class TrainCrop:
  """RandomResizedCrop to `size` (when `scale_min` < 1; else the eval view), optional flip and
  RandAugment."""

  size: int
  scale_min: float = 1.0
  flip: bool = False
  eval_crop: float = 0.0
  randaugment: RandAugment | None = None  # after the crop and flip, as timm orders them

  def __call__(self, image, rng: np.random.Generator) -> np.ndarray:
    """`image`: uint8 [H, W, C] or a PIL image; returns uint8 [size, size, C]."""
    h, w = _hw(image)
    if self.scale_min < 1.0:
      out = crop_resize(image, random_box(rng, h, w, self.scale_min), self.size)
    else:
      out = eval_view(image, self.size, self.eval_crop)
    if self.flip and rng.random() < 0.5:
      out = np.ascontiguousarray(out[:, ::-1])
    if self.randaugment is not None:
      out = self.randaugment(out, rng)
    return out


def eval_view(image: np.ndarray, size: int, crop: float) -> np.ndarray:
  """The eval transform (see the module docstring), with torchvision's roundings: the shorter
  side resized (bicubic) to int(size / crop), the longer in proportion, then the centre size
  square at offsets round((side − size) / 2). Crop 0 keeps the bilinear squash of the whole
  image that the in-memory sources use."""
  from PIL import Image
  h, w = _hw(image)
  if crop <= 0:
    return crop_resize(image, (0, 0, h, w), size, bicubic=False)
  short = int(size / crop)
  nh, nw = (int(short * h / w), short) if h > w else (short, int(short * w / h))
  pil = _pil(image)
  if (nh, nw) != (h, w):
    pil = pil.resize((nw, nh), Image.BICUBIC)
  top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
  out = pil.crop((left, top, left + size, top + size))
  return _array(out, size, len(pil.getbands()))
