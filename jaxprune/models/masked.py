"""Dense-shaped blocks switched by fixed masks: one compiled program for every DC-ViT trial
and every PRACTISE adaptor phase of a model.

A DC-ViT block trial compresses one unit of blocks (attention and its LayerNorm removed, the
MLP cut to a seeded random subset of its units: `methods/dcvit/structure.compress_block`) and
recovers the model by feature mimicking. Built as its own architecture, every trial traced and
compiled its own train step (15–25 s each at 224 px on the 2-core CPU). A `MaskedBlock` keeps
the dense block's shape and computes the compressed block through `Mask` variables: `attn_on`
and `mlp_on` (0/1 scalars on the two residual branches) and `units` (0/1 per MLP hidden unit,
after the activation). The masks are carried state, never trained, so every trial of a model is
the same graph with the same shapes, and one jitted step serves them all
(`train_phase(shared=…)`, where the trainable set is optimizer state).

PRACTISE's adaptor phases (the reference's placement: adaptors after fc2 of the blocks before
the dropped unit, before qkv of those after it) the same way: `build_masked(dense,
adaptors=True)` puts an identity adaptor at both places of every block; a phase switches its
unit's branches off and trains the adaptors of its placement (`practise_trainable`), the
others staying identity — exactly the function of the pruned model with its adaptors.

A masked block computes what the cut block computes (the removed parts multiply by 0; their
parameters get zero gradients), up to the order of float sums; `plain` gives back the ordinary
dense-shaped model, on which `compress_block` cuts exactly what the masks switched off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune.arch import ArchSpec, BlockSpec
from jaxprune.models.blocks import Block
from jaxprune.models.build import build_model


class Mask(nnx.Variable):
  """A fixed 0/1 mask carried with the model: neither a weight nor a gate, so never trained."""


class MaskedBlock(Block):
  """A `Block` whose attention branch and MLP hidden units are switched by `Mask`s (all 1: the
  block itself)."""

  def __init__(self, spec: ArchSpec, block: BlockSpec, *, rngs: nnx.Rngs, shape=None):
    super().__init__(spec, block, rngs=rngs, shape=shape)
    self.attn_on = Mask(jnp.ones((), jnp.float32))
    self.mlp_on = Mask(jnp.ones((), jnp.float32))
    self.units = Mask(jnp.ones((block.mlp,), jnp.float32)) if self.mlp is not None else None

  def masks(self):
    return None, None if self.units is None else self.units[...]

  def branches_on(self) -> tuple[jax.Array, jax.Array]:
    return self.attn_on[...], self.mlp_on[...]


def is_masked(model: nnx.Module) -> bool:
  """Whether `model` has `MaskedBlock`s (built by `build_masked`)."""
  return any(isinstance(b, MaskedBlock) for b in model.blocks)


def build_masked(dense: nnx.Module, adaptors: bool = False) -> nnx.Module:
  """`dense` with every block a `MaskedBlock` (masks at 1: the same function), its weights;
  `adaptors`: with PRACTISE's identity adaptors after every fc2 and before every qkv."""
  from jaxprune.models.blocks import WithAdaptor  # noqa: PLC0415
  from jaxprune.surgery import transplant  # noqa: PLC0415  (surgery imports models)
  model = build_model(dense.spec, 0, make_block=lambda s, b, i, rngs, shape: MaskedBlock(
      s, b, rngs=rngs, shape=shape))
  model = transplant(dense, model)
  if adaptors:
    rngs = nnx.Rngs(0)  # identity adaptors: their values do not depend on it
    for block in model.blocks:
      if block.mlp is not None:
        block.mlp.fc2 = WithAdaptor(block.mlp.fc2, "post", rngs=rngs)
      if hasattr(block.attn, "qkv"):  # attention (not a conv, not none)
        block.attn.qkv = WithAdaptor(block.attn.qkv, "pre", rngs=rngs)
  return model


def switched(masked: nnx.Module, cut: dict[int, np.ndarray | None] | None = None,
             dropped=()) -> nnx.Module:
  """A copy of `masked` with, for each block index in `cut`, the attention branch off and only
  the hidden units `cut[i]` kept (None: every unit); the blocks in `dropped` off entirely;
  every other block fully on."""
  cut = cut or {}
  model = nnx.clone(masked)
  for i, block in enumerate(model.blocks):
    block.attn_on[...] = jnp.asarray(0.0 if i in cut or i in dropped else 1.0)
    block.mlp_on[...] = jnp.asarray(0.0 if i in dropped else 1.0)
    if block.units is not None:
      keep = cut.get(i)
      units = np.ones(block.units.shape, np.float32)
      if keep is not None:
        units[:] = 0.0
        units[np.asarray(keep, int)] = 1.0
      block.units[...] = jnp.asarray(units)
  return model


def practise_trainable(spec: ArchSpec, unit):
  """An NNX filter of the adaptors PRACTISE trains when `unit` (block indices of `spec`) is
  dropped: the reference's placement, after fc2 of every earlier block and before qkv of every
  later one."""
  from jaxprune import registry  # noqa: PLC0415
  family = registry.family(spec.family)
  block_of = {slot: i for i, slot in enumerate(family.slots(spec))}
  first, last = min(unit), max(unit)

  def keep(path, value) -> bool:
    names = [str(p) for p in path]
    if "practise_adaptor" not in names or names[0] != family.collection:
      return False
    i = block_of[int(names[1])]
    return (i < first and "fc2" in names) or (i > last and "qkv" in names)

  return nnx.All(nnx.Param, keep)


def plain(masked: nnx.Module) -> nnx.Module:
  """The ordinary dense-shaped model holding `masked`'s weights (the masks dropped)."""
  _, _, state = nnx.split(masked, Mask, ...)
  model = build_model(masked.spec, 0)
  nnx.update(model, state)
  return model
