"""Swin Transformer built from an ArchSpec of family "swin" (timm-style parameter names).

Stem: patch embedding (p×p conv, stride p) and LayerNorm; then the spec's layers in order —
blocks with (shifted) window attention (`blocks.WindowAttention`) and patch merging between
stages (`blocks.PatchMerging`); final LayerNorm, average over tokens, linear head. No class
token and no absolute position embedding (Swin's defaults).
"""

from __future__ import annotations

from typing import Sequence

import jax
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec, BlockSpec, MergeSpec
from jaxprune.errors import UserError
from jaxprune.models.blocks import (Block, PatchEmbed, PatchMerging, PooledClassifier, apply_layers,
                                    block_maker, check_images, check_patches, layer_norm, linear)


class Swin(PooledClassifier):
  """Called on float NHWC images (already normalised) it returns class logits `[batch, classes]`.

  `layers` mirrors `spec.layers` one for one; `blocks` lists the transformer blocks among them.
  """

  def __init__(self, spec: ArchSpec, *, rngs: nnx.Rngs, make_block=None):
    """`make_block(spec, block_spec, index, rngs, shape)` builds each block (default: `Block`)."""
    if spec.family != "swin":
      raise ValueError(f"Swin needs an ArchSpec of family 'swin', got {spec.family!r}")
    self.spec = spec
    make_block = block_maker(lambda spec, b, i, rngs, shape: Block(spec, b, rngs=rngs,
                                                                    shape=shape), make_block)
    c, p = spec.width, spec.patch_size
    self.patch_embed = PatchEmbed(spec.in_channels, c, p, rngs=rngs)
    self.patch_norm = layer_norm(c, spec.ln_eps, rngs)
    layers, index = [], 0
    for layer, shape in spec.walk():
      if isinstance(layer, MergeSpec):
        layers.append(PatchMerging(shape.width, layer.out_width, shape.grid, spec.ln_eps,
                                   rngs=rngs))
      else:
        layers.append(make_block(spec, layer, index, rngs, shape))
        index += 1
    self.layers = nnx.List(layers)
    out = spec.out_shape.width
    self.norm = layer_norm(out, spec.ln_eps, rngs)
    self.head = linear(out, spec.num_classes, rngs)

  @property
  def blocks(self) -> list[nnx.Module]:
    return [m for m in self.layers if not isinstance(m, PatchMerging)]

  def embed(self, images: jax.Array) -> jax.Array:
    """Images [B,H,W,C_in] → patch tokens [B, N, C] after the patch LayerNorm."""
    spec = self.spec
    check_images(images, spec, "Swin")
    x = self.patch_embed(images)
    return self.patch_norm(x.reshape(x.shape[0], -1, spec.width))

  def features(self, images: jax.Array, train: bool = False, **block_kwargs) -> jax.Array:
    """All tokens of the last stage after the final LayerNorm, [B, N, C_last]."""
    x = self.embed(images)
    return self.norm(apply_layers(self.layers, x, train, **block_kwargs))



def _swin_stem(spec: ArchSpec, norm: int = 1) -> tuple[int, int]:
  """(MACs, params) of the patch embedding and its LayerNorm."""
  c, p, n = spec.width, spec.patch_size, spec.num_patches
  return n * c * spec.in_channels * p * p + norm * n * c, p * p * spec.in_channels * c + 3 * c


def _swin_check(spec: ArchSpec) -> None:
  check_patches(spec)
  if spec.class_token or spec.dist_token:
    raise UserError("ArchSpec: Swin models have no class or distillation token "
                    "(class_token and dist_token must be False)")
  for i, (b, shape) in enumerate(zip(spec.blocks, spec.block_shapes())):
    where = f"ArchSpec.blocks[{i}]"
    if b.attn == "msa" and not 1 <= b.window <= shape.grid:
      raise UserError(f"{where}.window = {b.window}: Swin attention needs 1 <= window <= "
                      f"the grid at this block ({shape.grid})")
    if b.window > shape.grid:
      raise UserError(f"{where}.window = {b.window}: a convolution inside windows needs "
                      f"window <= the grid at this block ({shape.grid}), or 0 for the whole "
                      "grid")


SWIN_VARIANTS = {
    # name: (embed width, blocks per stage, heads per stage, window, mlp_ratio)
    "swin_tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 4),
    "swin_small": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 4),
    "swin_base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 4),
    "swin_test": (32, (2, 2), (2, 4), 7, 2),   # tests and CPU runs (28 px, patch 2)
    "swin_mini": (32, (2, 6, 2), (2, 4, 8), 7, 2),  # CPU runs of DC-ViT/PRACTISE (3 stages)
}


def swin_spec(variant: str = "swin_tiny", *, image_size: int = 224, patch_size: int = 4,
              num_classes: int = 1000, in_channels: int = 3, width: int | None = None,
              depths: Sequence[int] | None = None, heads: Sequence[int] | None = None,
              window: int | None = None, mlp_ratio: float | None = None,
              ln_eps: float = 1e-5) -> ArchSpec:
  """A dense Swin spec: stages of blocks alternating regular and shifted windows, patch merging
  (width doubles, grid halves) between stages; heads keep one head_dim = width // heads[0].

  As in the reference implementations, a stage whose grid is not larger than the window uses one
  window covering the whole grid and no shift.
  """
  if variant not in SWIN_VARIANTS:
    raise UserError(f"Swin variant {variant!r} is unknown; allowed are "
                    f"{', '.join(SWIN_VARIANTS)}")
  w0, d0, h0, win0, r0 = SWIN_VARIANTS[variant]
  w, depths, heads = width or w0, tuple(depths or d0), tuple(heads or h0)
  window, r = window or win0, mlp_ratio or r0
  if len(depths) != len(heads):
    raise UserError(f"Swin: depths {depths} and heads {heads} must have one entry per stage")
  if image_size % patch_size:
    raise UserError(f"ArchSpec: image_size {image_size} is not divisible by "
                    f"patch_size {patch_size}")
  if w % heads[0]:
    raise UserError(f"Swin: width {w} is not divisible by heads[0] = {heads[0]}")
  head_dim, grid, layers = w // heads[0], image_size // patch_size, []
  for s, (depth, h) in enumerate(zip(depths, heads)):
    width_s = w * 2**s
    win = min(window, grid)
    for i in range(depth):
      layers.append(BlockSpec("msa", heads=h, mlp=int(round(width_s * r)), head_dim=head_dim,
                              window=win, shift=win // 2 if i % 2 and grid > window else 0))
    if s < len(depths) - 1:
      layers.append(MergeSpec(out_width=2 * width_s))
      grid = (grid + 1) // 2
  return ArchSpec(image_size=image_size, patch_size=patch_size, width=w, num_heads=heads[0],
                  num_classes=num_classes, in_channels=in_channels, layers=tuple(layers),
                  family="swin", class_token=False, ln_eps=ln_eps)


def _swin_preset(variant: str, *, patch_size: int | None = None, ln_eps: float | None = None,
                 depth: int | None = None, num_heads: int | None = None, distilled: bool = False,
                 **rest) -> ArchSpec:
  """`arch.dense_spec` for a Swin variant (its stages are set by the variant)."""
  for name, value in (("depth", depth), ("num_heads", num_heads), ("distilled", distilled)):
    if value:
      raise UserError(f"model.{name} = {value!r} does not apply to Swin variant {variant!r} "
                      "(its stages are set by the variant)")
  return swin_spec(variant, patch_size=patch_size or 4, ln_eps=ln_eps or 1e-5, **rest)


registry.register_family(registry.Family(
    "swin", presets=tuple(SWIN_VARIANTS), preset=_swin_preset,
    build=lambda spec, rngs, make_block=None: Swin(spec, rngs=rngs, make_block=make_block),
    stem=_swin_stem, check=_swin_check, collection="layers", layer_kinds=("block", "merge"),
    windows=True, block_unit=2,
    summary="Swin: (shifted) window attention, patch merging between stages"))
