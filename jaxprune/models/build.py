"""Building any registered family's model from its ArchSpec, and the functional split."""

from __future__ import annotations

from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec
from jaxprune.models.gates import Gate


def build_model(spec: ArchSpec, seed: int = 0, make_block=None) -> nnx.Module:
  """A randomly initialised model for `spec`, by its family (`registry.family(spec.family)`).

  `make_block(spec, block_spec, index, rngs, shape)` builds each block (default: the family's).
  """
  return registry.family(spec.family).build(spec, nnx.Rngs(seed), make_block)


def split_model(model: nnx.Module):
  """`(graphdef, weights, gates, rest)`: the functional view every train step works on.

  `rest` holds what is neither weight nor gate (BatchNorm statistics).
  """
  return nnx.split(model, nnx.Param, Gate, ...)
