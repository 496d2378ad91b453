"""Surgery: the one place shapes change. Gates/choices → ArchSpec → physically smaller model.

`derive_arch` reads SPViT's gates (θ > 0) into an ArchSpec; `materialise` builds the compact
model from it with weights gathered/collapsed from the search model: conv1/conv3 become real
convolutions collapsed from (v, proj, M), FFN rows/columns are gathered, skip becomes attention
kind `none`. The result rebuilds from its ArchSpec alone.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec, BlockSpec, normalised
from jaxprune.errors import UserError
from jaxprune.models import build_model
from jaxprune.models.gates import GATE_INIT

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
  """The compact model of `arch` (default: `derive_arch(search_model)`), weights taken from the
  search model. Its eval outputs equal the gated model's eval outputs (unless `arch` is in
  `conv_form(..., "grid")`, whose conv3 blocks convolve the whole grid instead)."""
  arch = derive_arch(search_model) if arch is None else arch
  states = []
  for i, (block, b, s) in enumerate(zip(search_model.blocks, arch.blocks,
                                        block_states(search_model))):
    op, keep = block_choices(block)
    if (op, int(keep.sum())) != (b.attn, b.mlp):
      raise ValueError(f"arch block {i} is ({b.attn}, mlp {b.mlp}) but the gates choose "
                       f"({op}, mlp {int(keep.sum())})")
    dst = {}
    if op == "msa":
      dst["norm1"], dst["attn"] = s["norm1"], s["attn"]
    elif op in ("conv1", "conv3"):
      kernel, bias, out_kernel, out_bias = block.conv_parts(1 if op == "conv1" else 3)
      bn = s["bn1" if op == "conv1" else "bn3"]
      dst["norm1"] = s["norm1"]
      dst["attn"] = {"conv": {"kernel": kernel, "bias": bias}, "bn": bn,
                     "proj": {"kernel": out_kernel, "bias": out_bias}}
    if b.mlp:
      idx = np.flatnonzero(keep)
      fc1, fc2 = s["mlp"]["fc1"], s["mlp"]["fc2"]
      dst["norm2"] = s["norm2"]
      dst["mlp"] = {"fc1": {"kernel": fc1["kernel"][:, idx], "bias": fc1["bias"][idx]},
                    "fc2": {"kernel": fc2["kernel"][idx], "bias": fc2["bias"]}}
    elif b.mlp_bias:  # every unit gated off: the search block still adds fc2's bias
      dst["mlp_bias"] = s["mlp"]["fc2"]["bias"]
    states.append(dst)
  return transplant(search_model, nnx.eval_shape(lambda: build_model(arch)), states)


# Moving weights between models --------------------------------------------------------------------
def block_slots(spec: ArchSpec) -> tuple[str, list[int]]:
  """Where the blocks live in a model's state: (collection, index of each block in it)."""
  family = registry.family(spec.family)
  return family.collection, family.slots(spec)


def block_states(model: nnx.Module) -> list[dict]:
  """The state (a pure dict) of each block of `model`, in `spec.blocks` order."""
  coll, slots = block_slots(model.spec)
  src = nnx.to_pure_dict(nnx.state(model))[coll]
  return [src[j] for j in slots]


def _fill(dst: dict, src: dict, where: str) -> None:
  for k, v in src.items():
    if k not in dst:
      raise ValueError(f"transplant: {where}/{k} has no place in the target model")
    if isinstance(v, dict):
      _fill(dst[k], v, f"{where}/{k}")
    elif tuple(dst[k].shape) != tuple(np.shape(v)):
      raise ValueError(f"transplant: {where}/{k} has shape {np.shape(v)}, the target "
                       f"{tuple(dst[k].shape)}")
    else:
      dst[k] = v


def transplant(model: nnx.Module, target: nnx.Module, blocks=None) -> nnx.Module:
  """The one way weights move between models of different structure.

  Fills `target` (a model, or an abstract one from `nnx.eval_shape`) with `model`'s weights:
  everything outside the blocks (stem, patch merging layers in order, final norm, head) and, for
  target block i, the state `blocks[i]` (default: `model`'s blocks one for one). A given entry
  overrides the target's; entries not given keep the target's own values (a search model's
  gates, a fresh adaptor), which an abstract target does not have: that is an error.
  """
  graphdef, state = nnx.split(target)
  out = nnx.to_pure_dict(state)
  src = nnx.to_pure_dict(nnx.state(model))
  s_coll, s_slots = block_slots(model.spec)
  t_coll, t_slots = block_slots(target.spec)
  blocks = block_states(model) if blocks is None else list(blocks)
  if len(blocks) != len(t_slots):
    raise ValueError(f"transplant: {len(blocks)} block states for {len(t_slots)} target blocks")
  _fill(out, {k: v for k, v in src.items() if k != s_coll}, "")
  s_rest = [src[s_coll][j] for j in sorted(src[s_coll]) if j not in s_slots]
  t_rest = [j for j in sorted(out[t_coll]) if j not in t_slots]
  if len(s_rest) != len(t_rest):
    raise ValueError(f"transplant: {len(s_rest)} non-block layers (patch merging) in the "
                     f"source, {len(t_rest)} in the target")
  for j, s in zip(t_rest, s_rest):
    _fill(out[t_coll][j], s, f"{t_coll}/{j}")
  for j, s in zip(t_slots, blocks):
    _fill(out[t_coll][j], s, f"{t_coll}/{j}")
  missing = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(out)
             if isinstance(v, jax.ShapeDtypeStruct)]
  if missing:
    raise ValueError(f"transplant: no weights given for {missing[:5]} of an abstract target")
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, out))
  return nnx.merge(graphdef, state)


# DC-ViT and PRACTISE -------------------------------------------------------------------------------
def compress_block(model: nnx.Module, index: int, hidden: int, seed: int) -> nnx.Module:
  """DC-ViT's compressed block at `index`: attention and its LayerNorm removed, MLP cut to a
  seeded uniformly random subset of `hidden` units (fc1 rows and bias, fc2 columns; fc2 bias
  kept): `y = x + fc2(gelu(fc1(LN2(x))))`; with `hidden` = 0, `y = x + b_fc2`."""
  spec = model.spec
  b = spec.blocks[index]
  if not 0 <= hidden <= b.mlp:
    raise ValueError(f"hidden {hidden} is outside 0..{b.mlp} for block {index}")
  arch = spec.replace_block(index, attn="none", heads=0, conv_dim=0, mlp=hidden,
                            mlp_bias=hidden == 0)
  blocks = block_states(model)
  s = blocks[index]
  keep = np.sort(np.random.default_rng([seed, index]).choice(b.mlp, hidden, replace=False))
  new = {}
  if hidden:
    new["norm2"] = s["norm2"]
    new["mlp"] = {"fc1": {"kernel": s["mlp"]["fc1"]["kernel"][:, keep],
                          "bias": s["mlp"]["fc1"]["bias"][keep]},
                  "fc2": {"kernel": s["mlp"]["fc2"]["kernel"][keep],
                          "bias": s["mlp"]["fc2"]["bias"]}}
  else:  # no unit kept: fc2(0) = its bias, kept as the block's learned vector
    new["mlp_bias"] = s["mlp"]["fc2"]["bias"]
  blocks[index] = new
  return transplant(model, nnx.eval_shape(lambda: build_model(arch)), blocks)


def drop_blocks(model: nnx.Module, indices) -> nnx.Module:
  """PRACTISE: the model without the blocks at `indices` (they vanish from the ArchSpec)."""
  drop = set(indices)
  states = block_states(model)
  arch = model.spec.drop_blocks(drop)
  return transplant(model, nnx.eval_shape(lambda: build_model(arch)),
                    [s for i, s in enumerate(states) if i not in drop])
