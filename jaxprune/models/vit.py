"""ViT / DeiT built from an ArchSpec (timm parameter layout, NHWC inputs)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec
from jaxprune.errors import UserError
from jaxprune.models.blocks import Block, apply_layers, check_images, layer_norm, linear


class ViT(nnx.Module):
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
    make_block = make_block or (lambda spec, b, i, rngs, shape: Block(spec, b, rngs=rngs))
    c, p = spec.width, spec.patch_size
    self.patch_embed = nnx.Conv(spec.in_channels, c, (p, p), strides=(p, p), padding="VALID",
                                rngs=rngs)
    normal = nnx.initializers.normal(0.02)
    self.cls_token = nnx.Param(jnp.zeros((1, 1, c), jnp.float32))
    self.dist_token = (nnx.Param(normal(rngs.params(), (1, 1, c), jnp.float32))
                       if spec.dist_token else None)
    self.pos_embed = nnx.Param(normal(rngs.params(), (1, spec.num_tokens, c), jnp.float32))
    self.blocks = nnx.List([make_block(spec, b, i, rngs, spec.stem_shape)
                            for i, b in enumerate(spec.blocks)])
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

  def __call__(self, images: jax.Array, train: bool = False, return_dist: bool = False,
               **block_kwargs) -> Any:
    return self.logits(self.features(images, train=train, **block_kwargs),
                       return_dist=return_dist)


def _vit_stem(spec: ArchSpec, norm: int = 1) -> tuple[int, int]:
  """(MACs, params) of the patch embedding, the prefix tokens and the position embedding."""
  c, p, n = spec.width, spec.patch_size, spec.num_patches
  return (n * c * spec.in_channels * p * p,
          p * p * spec.in_channels * c + c + spec.num_prefix * c + spec.num_tokens * c)


def _vit_check(spec: ArchSpec) -> None:
  if not spec.class_token:
    raise UserError("ArchSpec.class_token = False: ViT models need a class token")


registry.register_family(registry.Family(
    "vit", build=lambda spec, rngs, make_block=None: ViT(spec, rngs=rngs, make_block=make_block),
    stem=_vit_stem, check=_vit_check, collection="blocks", hf_model_type="vit",
    summary="ViT / DeiT: class (+distillation) token, global attention"))
