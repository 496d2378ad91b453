"""Surgery: the one place shapes change. Gates/choices → ArchSpec → physically smaller model.

`derive_arch` reads SPViT's gates (θ > 0) into an ArchSpec; `materialise` builds the compact
model from it with weights gathered/collapsed from the search model: conv1/conv3 become real
convolutions collapsed from (v, proj, M), FFN rows/columns are gathered, skip becomes attention
kind `none`. The result rebuilds from its ArchSpec alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune.arch import ArchSpec, BlockSpec
from jaxprune.models import ViT, build_model

OPS_BY_DEPTH = ("none", "conv1", "conv3", "msa")  # how many nested gates are on


def block_choices(block) -> tuple[str, np.ndarray]:
  """(attention op, kept FFN hidden units as a bool mask) of one search block, from θ > 0."""
  c = np.cumprod(np.asarray(block.theta_attn[...]) > 0)
  op = OPS_BY_DEPTH[int(c.sum())]
  keep = np.repeat(np.asarray(block.theta_mlp[...]) > 0, block.opts.ffn_group)
  return op, keep


def derive_arch(search_model: ViT) -> ArchSpec:
  """The ArchSpec the search model's gates choose (eval-mode thresholds, no noise)."""
  spec = search_model.spec
  blocks = []
  for block in search_model.blocks:
    op, keep = block_choices(block)
    blocks.append(BlockSpec(op, heads=block.heads if op == "msa" else 0, mlp=int(keep.sum()),
                            conv_dim=block.head_dim if op in ("conv1", "conv3") else 0,
                            mlp_bias=not keep.any()))
  return spec.replace(blocks=tuple(blocks))


def materialise(search_model: ViT, arch: ArchSpec | None = None) -> ViT:
  """The compact model of `arch` (default: `derive_arch(search_model)`), weights taken from the
  search model. Its eval outputs equal the gated model's eval outputs."""
  arch = derive_arch(search_model) if arch is None else arch
  compact = nnx.eval_shape(lambda: build_model(arch))
  graphdef, state = nnx.split(compact)
  src = nnx.state(search_model).to_pure_dict()
  out = {k: v for k, v in src.items() if k != "blocks"}
  out["blocks"] = {}
  for i, (block, b) in enumerate(zip(search_model.blocks, arch.blocks)):
    s = src["blocks"][i]
    op, keep = block_choices(block)
    if (op, int(keep.sum())) != (b.attn, b.mlp):
      raise ValueError(f"arch block {i} is ({b.attn}, mlp {b.mlp}) but the gates choose "
                       f"({op}, mlp {int(keep.sum())})")
    dst = {}
    if op == "msa":
      dst["norm1"], dst["attn"] = s["norm1"], s["attn"]
    elif op in ("conv1", "conv3"):
      kernel, bias, out_kernel = block.conv_parts(1 if op == "conv1" else 3)
      bn = s["bn1" if op == "conv1" else "bn3"]
      dst["norm1"] = s["norm1"]
      dst["attn"] = {"conv": {"kernel": kernel, "bias": bias}, "bn": bn,
                     "proj": {"kernel": out_kernel, "bias": s["attn"]["proj"]["bias"]}}
    if b.mlp:
      idx = np.flatnonzero(keep)
      fc1, fc2 = s["mlp"]["fc1"], s["mlp"]["fc2"]
      dst["norm2"] = s["norm2"]
      dst["mlp"] = {"fc1": {"kernel": fc1["kernel"][:, idx], "bias": fc1["bias"][idx]},
                    "fc2": {"kernel": fc2["kernel"][idx], "bias": fc2["bias"]}}
    elif b.mlp_bias:  # every unit gated off: the search block still adds fc2's bias
      dst["mlp_bias"] = s["mlp"]["fc2"]["bias"]
    out["blocks"][i] = dst
  state.replace_by_pure_dict(jax.tree.map(jnp.asarray, out))
  return nnx.merge(graphdef, state)


# DC-ViT and PRACTISE -------------------------------------------------------------------------------
def _rebuild(model: ViT, arch: ArchSpec, blocks_state: dict) -> ViT:
  """A model of `arch` holding `model`'s non-block weights and the given block states."""
  target = nnx.eval_shape(lambda: build_model(arch))
  graphdef, state = nnx.split(target)
  src = nnx.state(model).to_pure_dict()
  out = {k: v for k, v in src.items() if k != "blocks"}
  out["blocks"] = blocks_state
  state.replace_by_pure_dict(out)
  return nnx.merge(graphdef, state)


def compress_block(model: ViT, index: int, hidden: int, seed: int) -> ViT:
  """DC-ViT's compressed block at `index`: attention and its LayerNorm removed, MLP cut to a
  seeded uniformly random subset of `hidden` units (fc1 rows and bias, fc2 columns; fc2 bias
  kept): `y = x + fc2(gelu(fc1(LN2(x))))`; with `hidden` = 0, `y = x + b_fc2`."""
  spec = model.spec
  b = spec.blocks[index]
  if not 0 <= hidden <= b.mlp:
    raise ValueError(f"hidden {hidden} is outside 0..{b.mlp} for block {index}")
  arch = spec.replace_block(index, attn="none", heads=0, conv_dim=0, mlp=hidden,
                            mlp_bias=hidden == 0)
  src = nnx.state(model).to_pure_dict()["blocks"]
  blocks = dict(src)
  s = src[index]
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
  return _rebuild(model, arch, blocks)


def drop_blocks(model: ViT, indices) -> ViT:
  """PRACTISE: the model without the blocks at `indices` (they vanish from the ArchSpec)."""
  drop = set(indices)
  keep = [i for i in range(model.spec.depth) if i not in drop]
  arch = model.spec.replace(blocks=tuple(model.spec.blocks[i] for i in keep))
  src = nnx.state(model).to_pure_dict()["blocks"]
  return _rebuild(model, arch, {j: src[i] for j, i in enumerate(keep)})
