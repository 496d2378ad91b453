"""Surgery: the generic edits of built models — blocks replaced, removed, weights moved.

Methods change a model's structure by editing its NNX modules (`Mlp.narrowed`, a block's
sub-layers set to None, whole blocks replaced: `replace_blocks`), and the ArchSpec is read back
from the edited modules (`read_spec`), so spec and weights cannot drift apart. `transplant` moves
weights between models of different structure by name (the search model built from a dense one,
PRACTISE's adaptors). The methods' own edits live with them: SPViT's `materialise`
(`methods/spvit/surgery.py`), DC-ViT's `compress_block` (`methods/dcvit/structure.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec
from jaxprune.models import build_model


def read_spec(model: nnx.Module, template: ArchSpec | None = None) -> ArchSpec:
  """The ArchSpec of `model` as its modules now are: each block's `layer_spec`, against
  `template`'s (default: `model.spec`) for what the modules do not hold."""
  template = template or model.spec
  return template.replace(blocks=tuple(m.layer_spec(b) for m, b in zip(model.blocks,
                                                                         template.blocks)))


def replace_blocks(model: nnx.Module, blocks, spec: ArchSpec | None = None) -> nnx.Module:
  """Puts the block modules `blocks` in `model`'s block slots (in place) and reads its spec back;
  with `spec`, checks that the edited model is that architecture. Every variable must be
  concrete (a block built abstract, `nnx.eval_shape`, must have had all its weights set)."""
  family = registry.family(model.spec.family)
  layers = getattr(model, family.collection)
  slots = family.slots(model.spec)
  if len(blocks) != len(slots):
    raise ValueError(f"replace_blocks: {len(blocks)} blocks for {len(slots)} slots")
  for j, block in zip(slots, blocks):
    layers[j] = block
  got = read_spec(model, spec or model.spec)
  if spec is not None and got != spec:
    raise ValueError(f"replace_blocks: the edited model is {got}, not {spec}")
  model.spec = got
  missing = [jax.tree_util.keystr(k) for k, v in
             jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model)))
             if isinstance(v, jax.ShapeDtypeStruct)]
  if missing:
    raise ValueError(f"replace_blocks: no weights set for {missing[:5]}")
  return model


def random_units(total: int, keep: int, seed: int, index: int) -> np.ndarray:
  """DC-ViT's random-unit rule: `keep` of `total` units (hidden units, channels), a uniformly
  random subset seeded by (`seed`, block `index`), in order."""
  return np.sort(np.random.default_rng([seed, index]).choice(total, keep, replace=False))


def edit_block(model: nnx.Module, index: int, edit, spec: ArchSpec) -> nnx.Module:
  """A copy of `model` whose block `index` is `edit(block)` (which may change the block in
  place and return it), checked to be the architecture `spec`."""
  model = nnx.clone(model)
  blocks = list(model.blocks)
  blocks[index] = edit(blocks[index])
  return replace_blocks(model, blocks, spec)


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


# PRACTISE ------------------------------------------------------------------------------------------
def drop_blocks(model: nnx.Module, indices) -> nnx.Module:
  """PRACTISE: the model without the blocks at `indices` (they vanish from the ArchSpec)."""
  drop = set(indices)
  states = block_states(model)
  arch = model.spec.drop_blocks(drop)
  return transplant(model, nnx.eval_shape(lambda: build_model(arch)),
                    [s for i, s in enumerate(states) if i not in drop])
