"""Mixed precision over float32 parameters (`train.compute_dtype`).

The parameters, their gradients and the optimizer state stay float32 in every mode.

  "bfloat16"         inside the jitted step the model's dense, convolution and LayerNorm
                     layers compute in bfloat16 (inputs and weights cast on use, LayerNorm
                     statistics in float32); the GPU/TPU mode.
  "bfloat16_matmul"  only the dense layers' matrix products take bfloat16 operands, and they
                     accumulate and return float32 (forward and both backward products);
                     everything else stays float32. What a TPU does to a float32 matmul at
                     default precision; on CPUs with AVX-512 BF16 / AMX XLA runs these
                     products several times faster than float32 ones, where a bfloat16-output
                     product gains nothing (docs/speed.md).

The classifier heads stay float32, so logits and losses are float32, and attention softmaxes
run in float32 (blocks.softmax32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxprune.errors import UserError

BF16_MATMUL = "bfloat16_matmul"
COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, BF16_MATMUL: BF16_MATMUL}
FLOAT32_LAYERS = ("head", "head_dist")  # logits in float32


def compute_dtype(name: str, field: str = "train.compute_dtype"):
  if name not in COMPUTE_DTYPES:
    raise UserError(f"{field} = {name!r}: allowed are {', '.join(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]


def set_compute_dtype(model: nnx.Module, dtype) -> nnx.Module:
  """Makes `model`'s Linear, Conv and LayerNorm layers (heads excepted) compute in `dtype`
  (None = their parameters' float32). Returns `model`, changed in place."""
  if dtype is None:
    return model
  if dtype == BF16_MATMUL:
    for path, module in _modules(model):
      if isinstance(module, nnx.Linear) and not (path and path[-1] in FLOAT32_LAYERS):
        module.dot_general = bf16_dot_general
    return model
  for path, module in _modules(model):
    if (isinstance(module, (nnx.Linear, nnx.Conv, nnx.LayerNorm))
        and not (path and path[-1] in FLOAT32_LAYERS)):
      module.dtype = dtype
  return model


def _modules(model: nnx.Module):
  iter_modules = getattr(nnx, "iter_modules", None)  # newer Flax; older: the method
  return iter_modules(model) if iter_modules else model.iter_modules()


def bf16_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                     **kwargs):
  """`lax.dot_general` for nnx.Linear (contracting lhs's last axis with rhs's first, no batch
  axes) on bfloat16 operands with float32 accumulation and result; its backward products too."""
  del precision, preferred_element_type, kwargs
  if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2:
    raise ValueError(f"bf16_dot_general: only nnx.Linear's product, got {dimension_numbers}")
  return _linear_bf16(lhs, rhs)


def _mm(a, b, dims):
  return jax.lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), (dims, ((), ())),
                             preferred_element_type=jnp.float32)


@jax.custom_vjp
def _linear_bf16(x, w):
  return _mm(x, w, ((x.ndim - 1,), (0,)))


def _linear_fwd(x, w):
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  # zero-size arrays carry the primals' dtypes (residuals must be arrays)
  return _mm(xb, wb, ((x.ndim - 1,), (0,))), (xb, wb, jnp.zeros(0, x.dtype), jnp.zeros(0, w.dtype))


def _linear_bwd(res, ct):
  xb, wb, x_dtype, w_dtype = res
  dx = _mm(ct, wb, ((ct.ndim - 1,), (1,)))                       # [..., out] · [in, out]ᵀ
  rows = tuple(range(xb.ndim - 1))
  dw = _mm(xb, ct, (rows, rows))                                  # Σ over rows of x ⊗ ct
  return dx.astype(x_dtype.dtype), dw.astype(w_dtype.dtype)


_linear_bf16.defvjp(_linear_fwd, _linear_bwd)
