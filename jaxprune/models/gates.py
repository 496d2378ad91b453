"""The `Gate` variable type and SPViT's gate maths.

`nnx.split(model, nnx.Param, Gate, ...)` returns weights, gates and the remaining state (BatchNorm
statistics) as three pytrees, so each can have its own optimizer, schedule and checkpoint key.

Gate values are 0/1 in the forward pass; what differs is how gradients reach the logits θ:
- `sample_st` (training path, feeds the task loss): relaxed Bernoulli with logistic noise at
  temperature τ, hard value forward, straight-through gradient of the relaxed sample.
- `threshold_surrogate` (FLOPs path, feeds the budget loss, and eval): θ > 0 forward, surrogate
  gradient σ'(σ(θ) − 0.5)·σ'(θ) backward.
- `nested` turns the three MSA-layer gates (≥conv1, ≥conv3, msa) into cumulative products, with
  the gradient of a level stopped when the op actually chosen lies above it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Gate(nnx.Variable):
  """A gate logit (e.g. SPViT's θ). Not an `nnx.Param`: weight optimizers never see it."""


def _dsigmoid(z: jax.Array) -> jax.Array:
  s = jax.nn.sigmoid(z)
  return s * (1 - s)


def sample_st(theta: jax.Array, key: jax.Array, temperature: float = 1.0) -> jax.Array:
  """Hard 0/1 sample of Bernoulli(σ(θ)) with a straight-through relaxed-sample gradient."""
  u = jax.random.uniform(key, theta.shape, theta.dtype, minval=1e-6, maxval=1 - 1e-6)
  soft = jax.nn.sigmoid((theta + jnp.log(u) - jnp.log1p(-u)) / temperature)
  hard = (soft > 0.5).astype(theta.dtype)
  return hard + soft - jax.lax.stop_gradient(soft)


@jax.custom_vjp
def threshold_surrogate(theta: jax.Array) -> jax.Array:
  """(θ > 0) as 0/1, with the surrogate gradient σ'(σ(θ) − 0.5)·σ'(θ)."""
  return (theta > 0).astype(theta.dtype)


def _threshold_fwd(theta):
  return threshold_surrogate(theta), theta


def _threshold_bwd(theta, g):
  return (g * _dsigmoid(jax.nn.sigmoid(theta) - 0.5) * _dsigmoid(theta),)


threshold_surrogate.defvjp(_threshold_fwd, _threshold_bwd)


def nested(g: jax.Array) -> jax.Array:
  """Cumulative products c_i = g_0·…·g_i over the last axis (levels ≥conv1, ≥conv3, msa).

  The gradient of level i is stopped when c_{i+1} = 1, i.e. when the chosen op lies above level i.
  """
  hard = jax.lax.stop_gradient(g)
  c_hard = jnp.cumprod(hard, axis=-1)
  above = jnp.concatenate([c_hard[..., 1:], jnp.zeros_like(c_hard[..., :1])], axis=-1) > 0.5
  g = jnp.where(above, jax.lax.stop_gradient(g), g)
  return jnp.cumprod(g, axis=-1)


def op_coefficients(c: jax.Array) -> dict[str, jax.Array]:
  """Mixing coefficients of the candidate ops from the nested gates c = (c0, c1, c2):
  msa c2, conv3 c1(1−c2), conv1 c0(1−c1)(1−c2); skip gets what is left."""
  c0, c1, c2 = c[..., 0], c[..., 1], c[..., 2]
  return {"msa": c2, "conv3": c1 * (1 - c2), "conv1": c0 * (1 - c1) * (1 - c2)}
