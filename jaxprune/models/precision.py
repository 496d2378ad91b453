"""Mixed precision: bfloat16 compute over float32 parameters (`train.compute_dtype`).

The parameters, their gradients and the optimizer state stay float32; inside the jitted step
the model's dense, convolution and LayerNorm layers compute in the chosen dtype (inputs and
weights cast on use, LayerNorm statistics in float32). The classifier heads stay float32, so
logits and losses are float32, and attention softmaxes run in float32 (blocks.softmax32).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxprune.errors import UserError

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
FLOAT32_LAYERS = ("head", "head_dist")  # logits in float32


def compute_dtype(name: str):
  if name not in COMPUTE_DTYPES:
    raise UserError(f"train.compute_dtype = {name!r}: allowed are {', '.join(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


def set_compute_dtype(model: nnx.Module, dtype) -> nnx.Module:
  """Makes `model`'s Linear, Conv and LayerNorm layers (heads excepted) compute in `dtype`
  (None = their parameters' float32). Returns `model`, changed in place."""
  if dtype is None:
    return model
  iter_modules = getattr(nnx, "iter_modules", None)  # newer Flax; older: the method
  for path, module in (iter_modules(model) if iter_modules else model.iter_modules()):
    if (isinstance(module, (nnx.Linear, nnx.Conv, nnx.LayerNorm))
        and not (path and path[-1] in FLOAT32_LAYERS)):
      module.dtype = dtype
  return model
