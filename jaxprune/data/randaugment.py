"""RandAugment as the DeiT recipe uses it (timm's `rand-m9-mstd0.5-inc1`), on the host with PIL.

Per image: `num_layers` operations drawn uniformly with replacement from `OPS`, each applied
with probability `prob` at a magnitude drawn from N(magnitude, std) and clipped to [0, 10]
(levels are tenths of the strongest setting). The "increasing" variants are used throughout:
a larger magnitude is always a stronger distortion. Geometric operations fill with the mean
pixel of the model's normalisation and resample bicubically. Signed operations (rotate, shear,
translate, the enhancements) flip their sign with probability 1/2.

All randomness comes from the numpy generator passed in, so an image's augmentation is a pure
function of (seed, step, row) like the rest of the pipeline.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MAX_LEVEL = 10.0


def _signed(rng, value: float) -> float:
  return -value if rng.random() < 0.5 else value


def _affine(img, matrix, fill):
  from PIL import Image
  return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=fill)


def _enhance(kind):
  def op(img, level, rng, fill):
    from PIL import ImageEnhance
    factor = max(0.1, 1.0 + _signed(rng, level / MAX_LEVEL * 0.9))  # 1 = unchanged
    return getattr(ImageEnhance, kind)(img).enhance(factor)
  return op


def _auto_contrast(img, level, rng, fill):
  from PIL import ImageOps
  return ImageOps.autocontrast(img)


def _equalize(img, level, rng, fill):
  from PIL import ImageOps
  return ImageOps.equalize(img)


def _invert(img, level, rng, fill):
  from PIL import ImageOps
  return ImageOps.invert(img)


def _rotate(img, level, rng, fill):
  from PIL import Image
  return img.rotate(_signed(rng, level / MAX_LEVEL * 30.0), resample=Image.BICUBIC,
                    fillcolor=fill)


def _posterize(img, level, rng, fill):
  bits = 4 - int(level / MAX_LEVEL * 4)  # keep 4 down to 0 bits (Pillow's posterize refuses 0)
  mask = (0xFF << (8 - bits)) & 0xFF
  return img.point([i & mask for i in range(256)] * len(img.getbands()))


def _solarize(img, level, rng, fill):
  from PIL import ImageOps
  return ImageOps.solarize(img, 256 - min(256, int(level / MAX_LEVEL * 256)))


def _solarize_add(img, level, rng, fill, threshold=128):
  add = min(128, int(level / MAX_LEVEL * 110))
  lut = [min(255, i + add) if i < threshold else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def _shear(axis):
  def op(img, level, rng, fill):
    s = _signed(rng, level / MAX_LEVEL * 0.3)
    return _affine(img, (1, s, 0, 0, 1, 0) if axis == "x" else (1, 0, 0, s, 1, 0), fill)
  return op


def _translate(axis):
  def op(img, level, rng, fill):
    frac = _signed(rng, level / MAX_LEVEL * 0.45)
    if axis == "x":
      return _affine(img, (1, 0, frac * img.size[0], 0, 1, 0), fill)
    return _affine(img, (1, 0, 0, 0, 1, frac * img.size[1]), fill)
  return op


OPS = {
    "auto_contrast": _auto_contrast, "equalize": _equalize, "invert": _invert,
    "rotate": _rotate, "posterize": _posterize, "solarize": _solarize,
    "solarize_add": _solarize_add, "color": _enhance("Color"),
    "contrast": _enhance("Contrast"), "brightness": _enhance("Brightness"),
    "sharpness": _enhance("Sharpness"), "shear_x": _shear("x"), "shear_y": _shear("y"),
    "translate_x": _translate("x"), "translate_y": _translate("y"),
}


@dataclasses.dataclass(frozen=True)
class RandAugment:
  magnitude: float = 9.0
  std: float = 0.5
  num_layers: int = 2
  prob: float = 0.5
  fill: tuple[int, ...] = (124, 116, 104)  # the mean pixel (ImageNet's)

  def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    fill = self.fill[0] if img.mode == "L" else tuple(self.fill)
    names = list(OPS)
    for name in (names[i] for i in rng.integers(0, len(names), self.num_layers)):
      if rng.random() >= self.prob:
        continue
      level = self.magnitude + (rng.normal(0.0, self.std) if self.std > 0 else 0.0)
      img = OPS[name](img, float(np.clip(level, 0.0, MAX_LEVEL)), rng, fill)
    return np.asarray(img).reshape(image.shape)
