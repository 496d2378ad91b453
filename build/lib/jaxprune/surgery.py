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
from jaxprune.models.gates import nested

OPS_BY_DEPTH = ("none", "conv1", "conv3", "msa")  # how many nested gates are on


def block_choices(block) -> tuple[str, np.ndarray]:
  """(attention op, kept FFN hidden units as a bool mask) of one search block, from θ > 0."""
  c = np.asarray(nested((block.theta_attn[...] > 0).astype(jnp.float32)))
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
                            conv_dim=block.head_dim if op in ("conv1", "conv3") else 0))
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
    out["blocks"][i] = dst
  state.replace_by_pure_dict(jax.tree.map(jnp.asarray, out))
  return nnx.merge(graphdef, state)
