"""The `Gate` variable type: learnable architecture choices, kept apart from the weights.

`nnx.split(model, nnx.Param, Gate, ...)` returns weights, gates and the remaining state (BatchNorm
statistics) as three pytrees, so each can have its own optimizer, schedule and checkpoint key.
"""

from flax import nnx


class Gate(nnx.Variable):
  """A gate logit (e.g. SPViT's θ). Not an `nnx.Param`: weight optimizers never see it."""
