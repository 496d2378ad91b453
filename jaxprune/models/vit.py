"""ViT / DeiT built from an ArchSpec (timm parameter layout, NHWC inputs)."""

from __future__ import annotations

import importlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec, BlockSpec
from jaxprune.errors import UserError
from jaxprune.models.blocks import (Block, Classifier, PatchEmbed, apply_layers, block_maker,
                                    check_images, check_patches, layer_norm, linear)


class ViT(Classifier):
  """Vision Transformer: patch embedding, class (+distillation) token, learned position
  embedding, blocks, final LayerNorm and head(s).

  Called on float NHWC images (already normalised) it returns class logits `[batch, classes]`.
  With a distillation head the eval logits are the mean of both heads, as in DeiT; in training
  `return_dist=True` returns the pair `(class_logits, dist_logits)`.
  """

  def __init__(self, spec: ArchSpec, *, rngs: nnx.Rngs, make_block=None):
    """`make_block(spec, block_spec, index, rngs, shape)` builds each block (default: `Block`)."""
    if spec.family != "vit":
      raise ValueError(f"ViT needs an ArchSpec of family 'vit', got {spec.family!r}")
    self.spec = spec
    make_block = block_maker(lambda spec, b, i, rngs, shape: Block(spec, b, rngs=rngs,
                                                                    shape=shape), make_block)
    c, p = spec.width, spec.patch_size
    self.patch_embed = PatchEmbed(spec.in_channels, c, p, rngs=rngs)
    normal = nnx.initializers.normal(0.02)
    self.cls_token = nnx.Param(jnp.zeros((1, 1, c), jnp.float32))
    self.dist_token = (nnx.Param(normal(rngs.params(), (1, 1, c), jnp.float32))
                       if spec.dist_token else None)
    self.pos_embed = nnx.Param(normal(rngs.params(), (1, spec.num_tokens, c), jnp.float32))
    self.blocks = nnx.List([make_block(spec, b, i, rngs, shape) for i, (b, shape)
                            in enumerate(zip(spec.blocks, spec.block_shapes()))])
    self.norm = layer_norm(c, spec.ln_eps, rngs)
    self.head = linear(c, spec.num_classes, rngs)
    self.head_dist = linear(c, spec.num_classes, rngs) if spec.dist_head else None

  def embed(self, images: jax.Array) -> jax.Array:
    """Images [B,H,W,C_in] → tokens [B, N, C] with position embedding added."""
    spec = self.spec
    check_images(images, spec, "ViT")
    x = self.patch_embed(images)
    b = x.shape[0]
    x = x.reshape(b, -1, spec.width)
    prefix = [jnp.broadcast_to(self.cls_token[...], (b, 1, spec.width))]
    if self.dist_token is not None:
      prefix.append(jnp.broadcast_to(self.dist_token[...], (b, 1, spec.width)))
    return jnp.concatenate(prefix + [x], axis=1) + self.pos_embed[...]

  def features(self, images: jax.Array, train: bool = False, **block_kwargs) -> jax.Array:
    """All tokens after the final LayerNorm, [B, N, C] (what DC-ViT's feature mimicking matches).

    `block_kwargs` go to every block (e.g. the SPViT search blocks' gate key), except
    `drop_rate`/`drop_key` (stochastic depth, `blocks.apply_layers`).
    """
    x = self.embed(images)
    return self.norm(apply_layers(self.blocks, x, train, **block_kwargs))

  def logits(self, feats: jax.Array, return_dist: bool = False) -> Any:
    """Head(s) on the final-norm tokens."""
    cls_logits = self.head(feats[:, 0])
    if self.head_dist is None:
      return (cls_logits, cls_logits) if return_dist else cls_logits
    dist_logits = self.head_dist(feats[:, 1])
    if return_dist:
      return cls_logits, dist_logits
    return (cls_logits + dist_logits) / 2



def _vit_stem(spec: ArchSpec, norm: int = 1) -> tuple[int, int]:
  """(MACs, params) of the patch embedding, the prefix tokens and the position embedding."""
  c, p, n = spec.width, spec.patch_size, spec.num_patches
  return (n * c * spec.in_channels * p * p,
          p * p * spec.in_channels * c + c + spec.num_prefix * c + spec.num_tokens * c)


def _vit_check(spec: ArchSpec) -> None:
  check_patches(spec)
  if not spec.class_token:
    raise UserError("ArchSpec.class_token = False: ViT models need a class token")


def _vit_hf_fit(spec: ArchSpec) -> str | None:
  """Why `spec` does not fit a Hugging Face ViT/DeiT config (one line), or None when it does:
  every block attention with the model's heads and one MLP width (a dense model, PRACTISE's
  dropped blocks, uniformly narrowed MLPs)."""
  if not spec.blocks:
    return "the model has no blocks"
  mlp = spec.blocks[0].mlp
  for i, b in enumerate(spec.blocks):
    if (b.attn != "msa" or b.heads != spec.num_heads or spec.head_dim_of(b) * b.heads
        != spec.width or b.mlp != mlp or not b.mlp or b.mlp_bias or b.merge_r
        or b.keep_tokens):
      merging = (f", merge_r {b.merge_r}" if b.merge_r else "") + (
          f", keeps {len(b.keep_tokens)} patches" if b.keep_tokens else "")
      return (f"block {i} (attention {b.attn!r}, {b.heads} heads, MLP {b.mlp}{merging}) does "
              f"not fit a Hugging Face ViT config: every block must be 'msa' with "
              f"{spec.num_heads} heads of {spec.width // spec.num_heads}, one MLP width (block "
              f"0's: {mlp}) and no token merging or pruning")
  return None


VIT_VARIANTS = {
    # name: (width, depth, heads, mlp_ratio)
    "deit_tiny": (192, 12, 3, 4),
    "deit_small": (384, 12, 6, 4),
    "deit_base": (768, 12, 12, 4),
    "test_micro": (32, 2, 2, 2),
    "test_small": (64, 4, 2, 2),
}


def vit_spec(variant: str = "deit_tiny", *, image_size: int = 224, patch_size: int | None = None,
             num_classes: int = 1000, in_channels: int = 3, depth: int | None = None,
             width: int | None = None, num_heads: int | None = None,
             mlp_ratio: float | None = None, distilled: bool = False,
             ln_eps: float | None = None, window: int | None = None) -> ArchSpec:
  """A dense ViT/DeiT spec from a named variant (deit_tiny/small/base: 192/384/768 wide, 3/6/12
  heads, depth 12, MLP x4; test_micro/test_small for tests and CPU runs), any field overridable;
  patch 16 and LayerNorm eps 1e-6 by default; `distilled`: DeiT's distillation token and head.
  """
  if variant not in VIT_VARIANTS:
    raise UserError(f"ViT variant {variant!r} is unknown; allowed are "
                    f"{', '.join(VIT_VARIANTS)}")
  if window:
    raise UserError(f"model.window = {window!r} applies to Swin variants only, not {variant!r}")
  w, dep, h, r = VIT_VARIANTS[variant]
  w, dep, h, r = width or w, depth or dep, num_heads or h, mlp_ratio or r
  mlp = int(round(w * r))
  return ArchSpec(image_size=image_size, patch_size=patch_size or 16, width=w, num_heads=h,
                  num_classes=num_classes, in_channels=in_channels,
                  layers=tuple(BlockSpec("msa", heads=h, mlp=mlp) for _ in range(dep)),
                  dist_token=distilled, dist_head=distilled, ln_eps=ln_eps or 1e-6)


registry.register_family(registry.Family(
    "vit", presets=tuple(VIT_VARIANTS), preset=vit_spec,
    build=lambda spec, rngs, make_block=None: ViT(spec, rngs=rngs, make_block=make_block),
    stem=_vit_stem, check=_vit_check, collection="blocks", hf_fit=_vit_hf_fit,
    token_merging=True,
    hf_save=lambda model: importlib.import_module("jaxprune.deploy").vit_hf_save(model),
    summary="ViT / DeiT: class (+distillation) token, global attention"))
