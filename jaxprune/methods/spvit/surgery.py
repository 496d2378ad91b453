"""SPViT's search space as architectures: gates → ArchSpec, and the compact model materialised.

`derive_arch` reads the search model's gates (θ > 0) into an ArchSpec; `encode_arch` writes one
back; `materialise` builds the compact model by editing the search model's modules: attention
kept, or a real convolution collapsed from (v, proj, M) in its place, or nothing; the FFN narrowed
to its kept units (`Mlp.narrowed`). The result rebuilds from its ArchSpec alone. `search_macs` is
the differentiable MACs of the search model the budget loss drives.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import accounting
from jaxprune.arch import ArchSpec, BlockSpec, mlp_macs, normalised
from jaxprune.errors import UserError
from jaxprune.models.blocks import Block
from jaxprune.models.gates import GATE_INIT
from jaxprune.surgery import replace_blocks

OPS_BY_DEPTH = ("none", "conv1", "conv3", "msa")  # how many nested gates are on


def block_choices(block) -> tuple[str, np.ndarray]:
  """(attention op, kept FFN hidden units as a bool mask) of one search block, from θ > 0."""
  c = np.cumprod(np.asarray(block.theta_attn[...]) > 0)
  op = OPS_BY_DEPTH[int(c.sum())]
  keep = np.repeat(np.asarray(block.theta_mlp[...]) > 0, block.opts.ffn_group)
  return op, keep


def gate_masks(search_model: nnx.Module) -> list[str]:
  """Per block, the kept FFN gate groups (θ > 0) as a string of 0/1: what `search/archs.jsonl`
  records so that a logged architecture can be materialised later with the same units."""
  return ["".join("1" if t > 0 else "0" for t in np.asarray(b.theta_mlp[...]))
          for b in search_model.blocks]


def searched_block(dense: BlockSpec, op: str, mlp: int, conv_dim: int) -> BlockSpec:
  """The point of a dense block's search space that keeps `op` (one of `OPS_BY_DEPTH`) in the
  attention slot and `mlp` FFN units. A conv keeps the block's window and shift (on Swin it
  convolves inside them); a block whose FFN is pruned away keeps fc2's bias (`mlp_bias`)."""
  return normalised(dataclasses.replace(
      dense, attn=op, heads=dense.heads if op == "msa" else 0, mlp=mlp,
      conv_dim=conv_dim if op in ("conv1", "conv3") else 0, mlp_bias=mlp == 0))


def check_reachable(search_model, arch: ArchSpec, where: str) -> None:
  """Raises `UserError` unless `arch` is a point of the search space of `search_model`."""
  dense = search_model.spec
  if arch.replace(blocks=dense.blocks) != dense or arch.depth != dense.depth:
    raise UserError(f"{where}: the architecture does not prune this model (it must keep the "
                    f"dense model's fields and its {dense.depth} blocks)")
  for i, (block, b, d) in enumerate(zip(search_model.blocks, arch.blocks, dense.blocks)):
    g = block.opts.ffn_group
    if (b.attn not in OPS_BY_DEPTH or b.mlp % g or b.mlp > d.mlp
        or b != searched_block(d, b.attn, b.mlp, block.head_dim)):
      raise UserError(f"{where}: block {i} {b} is not in the search space (attention one of "
                      f"{', '.join(OPS_BY_DEPTH)} with heads {block.heads} / conv_dim "
                      f"{block.head_dim}, MLP a multiple of spvit.ffn_group = {g} up to "
                      f"{d.mlp}, mlp_bias only with MLP 0, the dense block's window/shift)")


def encode_arch(search_model: nnx.Module, arch: ArchSpec, masks: list[str] | None = None,
                rng: np.random.Generator | None = None) -> None:
  """Sets the search model's gates so that `derive_arch` returns `arch`. Which FFN groups are
  kept: `masks` (as recorded by `gate_masks`), else random ones from `rng`, else the groups
  with the largest gate logits θ."""
  for i, (block, b) in enumerate(zip(search_model.blocks, arch.blocks)):
    depth = OPS_BY_DEPTH.index(b.attn)
    block.theta_attn.set_value(jnp.asarray([GATE_INIT if j < depth else -GATE_INIT
                                            for j in range(3)], jnp.float32))
    theta = np.asarray(block.theta_mlp[...])
    k = b.mlp // block.opts.ffn_group
    if masks is not None:
      keep = np.array([c == "1" for c in masks[i]])
    elif rng is not None:
      keep = rng.permutation(len(theta)) < k
    else:
      keep = np.zeros(len(theta), bool)
      keep[np.argsort(-theta, kind="stable")[:k]] = True
    if keep.sum() != k:
      raise UserError(f"block {i}: {int(keep.sum())} FFN groups recorded but the architecture "
                      f"keeps {k}")
    block.theta_mlp.set_value(jnp.where(jnp.asarray(keep), GATE_INIT, -GATE_INIT))


def derive_arch(search_model: nnx.Module) -> ArchSpec:
  """The ArchSpec the search model's gates choose (eval-mode thresholds, no noise)."""
  spec = search_model.spec
  blocks = []
  for block, dense in zip(search_model.blocks, spec.blocks):
    op, keep = block_choices(block)
    blocks.append(searched_block(dense, op, int(keep.sum()), block.head_dim))
  return spec.replace(blocks=tuple(blocks))


def conv_form(arch: ArchSpec, form: str) -> ArchSpec:
  """SPViT's conv3 blocks on Swin in `form` (`spvit.swin_conv`): "window" keeps them inside the
  (shifted, padded) windows the search convolved in, so the compact model is the gated one;
  "grid" makes each a plain 3×3 conv on the whole unshifted grid, as the reference's
  fine-tuning model does (same weights, a different function at window borders that
  fine-tuning recovers; a plain conv any runtime runs fast). ViT conv blocks have no windows."""
  if form not in ("window", "grid"):
    raise UserError(f"spvit.swin_conv = {form!r}: allowed are window, grid")
  if form == "window":
    return arch
  return arch.replace(blocks=tuple(dataclasses.replace(b, window=0, shift=0)
                                   if b.attn == "conv3" else b for b in arch.blocks))


def materialise(search_model: nnx.Module, arch: ArchSpec | None = None) -> nnx.Module:
  """The compact model of `arch` (default: `derive_arch(search_model)`), made by editing a copy of
  the search model: each search block is replaced by a plain block holding the search block's
  own modules — its attention, or the conv collapsed from (v, proj, M) with the candidate's
  BatchNorm, and its FFN narrowed to the kept units. Its eval outputs equal the gated model's
  eval outputs (unless `arch` is in `conv_form(..., "grid")`, whose conv3 blocks convolve the
  whole grid instead)."""
  arch = derive_arch(search_model) if arch is None else arch
  model = nnx.clone(search_model)
  blocks = []
  for i, (block, b, shape) in enumerate(zip(model.blocks, arch.blocks, arch.block_shapes())):
    op, keep = block_choices(block)
    if (op, int(keep.sum())) != (b.attn, b.mlp):
      raise ValueError(f"arch block {i} is ({b.attn}, mlp {b.mlp}) but the gates choose "
                       f"({op}, mlp {int(keep.sum())})")
    new = nnx.eval_shape(lambda b=b, shape=shape: Block(arch, b, rngs=nnx.Rngs(0), shape=shape))
    if op == "msa":
      new.norm1, new.attn = block.norm1, block.attn
    elif op in ("conv1", "conv3"):
      kernel, bias, out_kernel, out_bias = block.conv_parts(1 if op == "conv1" else 3)
      new.norm1 = block.norm1
      new.attn.conv.kernel.set_value(kernel)
      new.attn.conv.bias.set_value(bias)
      new.attn.bn = block.bn1 if op == "conv1" else block.bn3
      new.attn.proj.kernel.set_value(out_kernel)
      new.attn.proj.bias.set_value(out_bias)
    if b.mlp:
      new.norm2, new.mlp = block.norm2, block.mlp.narrowed(np.flatnonzero(keep))
    elif b.mlp_bias:  # every unit gated off: the search block still adds fc2's bias
      new.mlp_bias.set_value(block.mlp.fc2.bias[...])
    blocks.append(new)
  return replace_blocks(model, blocks, arch)


def search_macs(spec: ArchSpec, gates, masks, conv_dims) -> jax.Array:
  """Differentiable MACs of an SPViT search model (for the budget loss).

  Args:
    spec: the dense spec searched over.
    gates: per block, the nested attention gates c = (c0 "≥conv1", c1 "≥conv3", c2 "msa") of
      the FLOPs path (0/1 forward).
    masks: per block, the FFN hidden-unit mask.
    conv_dims: per block, the bottleneck width of its conv candidates.

  The attention slot costs the reference's telescoping sum (SPViT_DeiT `models_pruning.py`
  `flops`, SPViT_Swin `spvit_swin.py` the same): c0·F_conv1 + c1·(F_conv3 − F_conv1) +
  c2·(F_msa − F_conv3). On hard gates that is the chosen op's MACs; its gradient gives each
  level's gate that level's increment (all on: F_msa, F_msa − F_conv1, F_msa − F_conv3 for
  g0, g1, g2 through c = cumprod(g)), which the mixing coefficients would not.
  With hard gates this equals `macs(derive_arch(...))` exactly.
  """
  dense = accounting.count(spec)
  total = jnp.asarray(float(dense.macs - sum(dense.block_macs)))
  for b, shape, c, mask, d in zip(spec.blocks, spec.block_shapes(), gates, masks, conv_dims):
    n, ch = shape.tokens, shape.width
    f = {op: accounting._block_macs(spec, normalised(dataclasses.replace(
        b, attn=op, heads=0, head_dim=0, conv_dim=d, mlp=0)), True, shape)
         for op in ("conv1", "conv3")}
    f["msa"] = accounting._block_macs(spec, dataclasses.replace(b, mlp=0), True, shape)
    total = total + (c[0] * f["conv1"] + c[1] * (f["conv3"] - f["conv1"])
                     + c[2] * (f["msa"] - f["conv3"]))
    total = total + mlp_macs(n, ch, jnp.sum(mask), present=jnp.max(mask))
  return total
