"""ViT-Slim's search space: soft masks over every block's attention head dimensions, MLP
hidden units and (optionally) token positions, and the slicing of a thresholded model into an
ordinary ArchSpec.

Chavan et al., "Vision Transformer Slimming: Multi-Dimension Searching in Continuous
Optimization Space", CVPR 2022 (arXiv:2201.00814); reference code Arnav0400/ViT-Slim
(`models/layers.py`: `SparseAttention`, `SparseMlp`). A `SlimBlock` is a ViT `Block` with two
`Gate` variables (their own pytree, as SPViT's gates), initialised to 1: ζ_attn [heads, head_dim]
scales q, k and v per head dimension, ζ_mlp [hidden] the MLP's hidden units after the GELU.
With token masks, a third: ζ_tok [patches], initialised to 3, whose tanh scales every patch
token's normalised input to both sub-layers (the reference's `patch_zeta`; class and
distillation tokens are never masked, where the reference masks them too).

Slicing keeps what a threshold t on |ζ| keeps, rounded to what an ArchSpec holds (one head
width per block): a head survives if any of its dimensions does; the block's head_dim is its
kept dimensions averaged over the surviving heads (rounded, at least 1), each head keeping its
largest-|ζ| dimensions; q's columns are rescaled by √(head_dim'/head_dim) so that the sliced
attention's 1/√head_dim' scale computes the same logits. A block keeps at least one dimension
of one head (a fully masked attention still adds its projection's bias); one with no unit left
loses its MLP (fc2's bias kept as the block's vector). As the reference, the kept masks
become 1: their learned magnitudes are not folded into the weights.

Tokens, as the reference's `compress_patch`: a block keeps the patches whose tanh(ζ_tok)
reaches the token threshold in it *or in any later block* (so what a block drops, every later
block drops too), at least one patch in the last block. Where the reference then only zeroes
the dropped tokens' inputs (they still cost their compute, and still serve as keys), the
sliced model removes them (`BlockSpec.keep_tokens`): a real speed-up, and a function that
differs from the masked one by the dropped tokens' bias-only keys and values; the fine-tune
recovers it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune.arch import ArchSpec, BlockSpec
from jaxprune.models.blocks import Attention, Block
from jaxprune.models.build import build_model
from jaxprune.models.gates import Gate


class SlimBlock(Block):
  """A `Block` with ViT-Slim's soft masks (see the module docstring)."""

  def __init__(self, spec: ArchSpec, block: BlockSpec, *, rngs: nnx.Rngs, shape=None,
               tokens: bool = False):
    super().__init__(spec, block, rngs=rngs, shape=shape)
    heads, hd = block.heads, spec.head_dim_of(block)
    self.attn_zeta = Gate(jnp.ones((heads, hd), jnp.float32)) if self.attn is not None else None
    self.mlp_zeta = Gate(jnp.ones((block.mlp,), jnp.float32)) if self.mlp is not None else None
    patches = (shape or spec.stem_shape).patches
    self.token_zeta = Gate(jnp.full((patches,), 3.0, jnp.float32)) if tokens else None

  def masks(self):
    return (None if self.attn_zeta is None else self.attn_zeta[...],
            None if self.mlp_zeta is None else self.mlp_zeta[...])

  def token_mask(self):
    """[tokens]: 1 for the class / distillation tokens, then tanh(ζ_tok) (None: no token mask)."""
    if self.token_zeta is None:
      return None
    z = jnp.tanh(self.token_zeta[...])
    return jnp.concatenate([jnp.ones((sum(self.prefix),), z.dtype), z])


def build_slim_model(dense: nnx.Module, tokens: bool = False) -> nnx.Module:
  """The search model over `dense`'s spec (global-attention `msa` blocks), holding its weights;
  every mask at 1 (the same function as `dense`; with `tokens`, token masks at tanh(3))."""
  from jaxprune.surgery import transplant  # noqa: PLC0415  (surgery imports models)
  for i, b in enumerate(dense.spec.blocks):
    if b.attn != "msa" or b.window or b.merge_r or b.keep_tokens:
      raise ValueError(f"ViT-Slim searches global 'msa' blocks on every token; block {i} is "
                       f"{b.attn!r}{' in windows' if b.window else ''}"
                       f"{' merging tokens' if b.merge_r else ''}"
                       f"{' pruning tokens' if b.keep_tokens else ''}")
  model = build_model(dense.spec, 0, make_block=lambda s, b, i, rngs, shape: SlimBlock(
      s, b, rngs=rngs, shape=shape, tokens=tokens))
  return transplant(dense, model)


def zetas(model) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
  """Each block's (ζ_attn, ζ_mlp) as NumPy arrays (None where absent)."""
  out = []
  for block in model.blocks:
    a, m = block.masks()
    out.append((None if a is None else np.asarray(a), None if m is None else np.asarray(m)))
  return out


def token_zetas(model) -> list[np.ndarray] | None:
  """Each block's tanh(ζ_tok) [patches] (None: the model has no token masks)."""
  if model.blocks[0].token_zeta is None:
    return None
  return [np.tanh(np.asarray(b.token_zeta[...])) for b in model.blocks]


def token_threshold(model, budget: float) -> float | None:
  """The reference's `calculate_search_threshold` for tokens: the value at which `budget` of all
  blocks' tanh(ζ_tok) entries reach it (before the later-blocks rule adds some back); None
  without token masks or at budget 1 (every token stays)."""
  z = token_zetas(model)
  if z is None or budget >= 1:
    return None
  values = np.sort(np.concatenate(z))
  return float(values[int((1.0 - budget) * len(values))])


def kept_tokens(model, threshold: float | None) -> list[tuple[int, ...] | None]:
  """Each block's kept patches (original positions, increasing) at the token `threshold`: those
  reaching it in the block or in a later one (module docstring); None: all (no threshold)."""
  z = token_zetas(model)
  if z is None or threshold is None:
    return [None] * len(model.blocks)
  keep = np.zeros(len(z[-1]), bool)
  if not (z[-1] >= threshold).any():  # the last block keeps one patch at least
    keep[int(np.argmax(z[-1]))] = True
  out = []
  for zi in reversed(z):
    keep = keep | (zi >= threshold)
    out.append(tuple(np.flatnonzero(keep).tolist()))
  return out[::-1]


@dataclasses.dataclass(frozen=True)
class Kept:
  """What one block keeps: per surviving head its dimensions (sorted), the hidden units, and
  the patches (original positions; None: all)."""

  heads: tuple[tuple[int, tuple[int, ...]], ...]
  units: tuple[int, ...]
  tokens: tuple[int, ...] | None = None


def kept_at(model, threshold: float, token_threshold: float | None = None) -> list[Kept]:
  """Each block's kept heads, dimensions and units at `threshold` on |ζ|, and patches at
  `token_threshold` on tanh(ζ_tok) (module docstring)."""
  out = []
  for (a, m), tokens in zip(zetas(model), kept_tokens(model, token_threshold)):
    heads = ()
    if a is not None:
      keep = np.abs(a) >= threshold
      alive = [h for h in range(a.shape[0]) if keep[h].any()]
      if not alive:  # one dimension stays: an all-masked attention still adds proj's bias
        alive = [int(np.argmax(np.abs(a).max(axis=1)))]
      hd = max(1, int(round(keep[alive].sum() / len(alive))))
      heads = tuple((h, tuple(sorted(np.argsort(-np.abs(a[h]), kind="stable")[:hd].tolist())))
                    for h in alive)
    units = () if m is None else tuple(np.flatnonzero(np.abs(m) >= threshold).tolist())
    out.append(Kept(heads, units, tokens))
  return out


def _keep_tokens(kept: list[Kept], patches: int) -> list[tuple[int, ...]]:
  """Each block's `BlockSpec.keep_tokens`: its kept patches as indices into the previous
  block's (() where it keeps them all); `patches` at the first block."""
  out, before = [], tuple(range(patches))
  for k in kept:
    tokens = before if k.tokens is None else k.tokens
    where = {p: i for i, p in enumerate(before)}
    out.append(() if tokens == before else tuple(where[p] for p in tokens))
    before = tokens
  return out


def sliced_spec(spec: ArchSpec, kept: list[Kept]) -> ArchSpec:
  """`spec` with each block as `kept` says."""
  blocks = []
  for b, k, keep in zip(spec.blocks, kept, _keep_tokens(kept, spec.stem_shape.patches)):
    b = dataclasses.replace(b, heads=len(k.heads), head_dim=len(k.heads[0][1]), keep_tokens=keep)
    blocks.append(dataclasses.replace(b, mlp=len(k.units), mlp_bias=not k.units and b.mlp > 0))
  return spec.replace(blocks=tuple(blocks))


def _sliced_attention(attn: Attention, heads, head_dim: int) -> Attention:
  hd0, h0 = attn.head_dim, attn.heads
  dims = [h * hd0 + d for h, ds in heads for d in ds]
  cols = np.concatenate([np.asarray(dims) + p * h0 * hd0 for p in range(3)])
  scale = np.ones(len(cols), np.float32)
  scale[:len(dims)] = np.sqrt(head_dim / hd0)  # q: the sliced 1/sqrt(head_dim') scale
  width = attn.qkv.in_features
  out = nnx.eval_shape(lambda: Attention(width, len(heads), head_dim, rngs=nnx.Rngs(0)))
  out.qkv.kernel.set_value(attn.qkv.kernel[...][:, cols] * scale)
  out.qkv.bias.set_value(attn.qkv.bias[...][cols] * scale)
  out.proj.kernel.set_value(attn.proj.kernel[...][np.asarray(dims)])
  out.proj.bias.set_value(attn.proj.bias[...])
  return out


def slice_model(model, threshold: float, token_threshold: float | None = None) -> nnx.Module:
  """The ordinary model (no masks) of what the thresholds keep: `SlimBlock` weights sliced, the
  dropped patches removed."""
  from jaxprune.surgery import replace_blocks  # noqa: PLC0415
  kept = kept_at(model, threshold, token_threshold)
  spec = sliced_spec(model.spec, kept)
  _, _, state = nnx.split(model, Gate, ...)  # the weights (and statistics) without the masks
  plain = build_model(model.spec, 0)  # dense-shaped, masks dropped
  nnx.update(plain, state)
  blocks = list(plain.blocks)
  for block, k, b in zip(blocks, kept, spec.blocks):
    block.keep_tokens = b.keep_tokens
    block.attn = _sliced_attention(block.attn, k.heads, len(k.heads[0][1]))
    if k.units:
      block.mlp = block.mlp.narrowed(k.units)
    elif block.mlp is not None:
      block.without_mlp()
  return replace_blocks(plain, blocks, spec)


def masked_at(model, threshold: float) -> nnx.Module:
  """A copy of the search model with its head and unit masks set to what slicing keeps (1) and
  drops (0): the function `slice_model` computes without token pruning (tests compare the
  two; token masks are left as they are)."""
  out = nnx.clone(model)
  for block, k in zip(out.blocks, kept_at(model, threshold)):
    if block.attn_zeta is not None:
      a = np.zeros(block.attn_zeta.shape, np.float32)
      for h, ds in k.heads:
        a[h, list(ds)] = 1.0
      block.attn_zeta.set_value(jnp.asarray(a))
    if block.mlp_zeta is not None:
      m = np.zeros(block.mlp_zeta.shape, np.float32)
      m[list(k.units)] = 1.0
      block.mlp_zeta.set_value(jnp.asarray(m))
  return out


def l1(model) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Σ|ζ_attn|, Σ|ζ_mlp| and Σ|tanh ζ_tok| over the blocks (the search's sparsity terms; 0
  without token masks)."""
  a = [jnp.abs(b.attn_zeta[...]).sum() for b in model.blocks if b.attn_zeta is not None]
  m = [jnp.abs(b.mlp_zeta[...]).sum() for b in model.blocks if b.mlp_zeta is not None]
  t = [jnp.abs(jnp.tanh(b.token_zeta[...])).sum() for b in model.blocks
       if b.token_zeta is not None]
  return sum(a, jnp.zeros(())), sum(m, jnp.zeros(())), sum(t, jnp.zeros(()))
