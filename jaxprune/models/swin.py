"""Swin Transformer built from an ArchSpec of family "swin" (timm-style parameter names).

Stem: patch embedding (p×p conv, stride p) and LayerNorm; then the spec's layers in order —
blocks with (shifted) window attention (`blocks.WindowAttention`) and patch merging between
stages (`blocks.PatchMerging`); final LayerNorm, average over tokens, linear head. No class
token and no absolute position embedding (Swin's defaults).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec, MergeSpec
from jaxprune.errors import UserError
from jaxprune.models.blocks import (Block, PatchMerging, apply_layers, check_images, layer_norm,
                                    linear)


class Swin(nnx.Module):
  """Called on float NHWC images (already normalised) it returns class logits `[batch, classes]`.

  `layers` mirrors `spec.layers` one for one; `blocks` lists the transformer blocks among them.
  """

  def __init__(self, spec: ArchSpec, *, rngs: nnx.Rngs, make_block=None):
    """`make_block(spec, block_spec, index, rngs, shape)` builds each block (default: `Block`)."""
    if spec.family != "swin":
      raise ValueError(f"Swin needs an ArchSpec of family 'swin', got {spec.family!r}")
    self.spec = spec
    make_block = make_block or (lambda spec, b, i, rngs, shape: Block(spec, b, rngs=rngs,
                                                                       shape=shape))
    c, p = spec.width, spec.patch_size
    self.patch_embed = nnx.Conv(spec.in_channels, c, (p, p), strides=(p, p), padding="VALID",
                                rngs=rngs)
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

  def logits(self, feats: jax.Array, return_dist: bool = False) -> Any:
    """Head on the token average (one head: `return_dist` gives it twice, as ViT does)."""
    logits = self.head(feats.mean(axis=1))
    return (logits, logits) if return_dist else logits

  def __call__(self, images: jax.Array, train: bool = False, return_dist: bool = False,
               **block_kwargs) -> Any:
    return self.logits(self.features(images, train=train, **block_kwargs),
                       return_dist=return_dist)


def _swin_stem(spec: ArchSpec, norm: int = 1) -> tuple[int, int]:
  """(MACs, params) of the patch embedding and its LayerNorm."""
  c, p, n = spec.width, spec.patch_size, spec.num_patches
  return n * c * spec.in_channels * p * p + norm * n * c, p * p * spec.in_channels * c + 3 * c


def _swin_check(spec: ArchSpec) -> None:
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


registry.register_family(registry.Family(
    "swin", build=lambda spec, rngs, make_block=None: Swin(spec, rngs=rngs, make_block=make_block),
    stem=_swin_stem, check=_swin_check, collection="layers", layer_kinds=("block", "merge"),
    windows=True, block_unit=2,
    summary="Swin: (shifted) window attention, patch merging between stages"))
