"""The `Gate` variable type and SPViT's gate maths.

`nnx.split(model, nnx.Param, Gate, ...)` returns weights, gates and the remaining state (BatchNorm
statistics) as three pytrees, so each can have its own optimizer, schedule and checkpoint key.

Gate values are 0/1 in the forward pass; what differs is how gradients reach the logits θ:
- `sample_st` (training path, feeds the task loss): relaxed Bernoulli with logistic noise at
  temperature τ, hard value forward, straight-through gradient of the relaxed sample.
- `threshold_surrogate` (FLOPs path, feeds the budget loss, and eval): θ > 0 forward, surrogate
  gradient σ'(σ(θ) − 0.5)·σ'(θ) backward.
- The three MSA-layer gates (≥conv1, ≥conv3, msa) become cumulative products c = cumprod(g):
  `single_path` on the training path detaches the product *entries* below the chosen op, as the
  reference does; `flops_path` on the budget path detaches nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

GATE_INIT = 1.5  # initial gate logit θ: every op and unit on, with margin


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


def single_path(g: jax.Array) -> jax.Array:
  """Training path: nested gates c = cumprod(g) over the last axis (levels ≥conv1, ≥conv3, msa),
  then, as the reference does, the *entries* of lower levels are detached once a higher one is
  on: c0 when c1 is on (c1 on implies c0 on), c1 when c2 is on. The factors are not detached,
  so g0 still learns through c1 = g0·g1 and c2 = g0·g1·g2; only c0's own path is cut.
  """
  c = jnp.cumprod(g, axis=-1)
  on = jax.lax.stop_gradient(c) > 0.5
  c0 = jnp.where(on[..., 1], jax.lax.stop_gradient(c[..., 0]), c[..., 0])
  c1 = jnp.where(on[..., 2], jax.lax.stop_gradient(c[..., 1]), c[..., 1])
  return jnp.stack([c0, c1, c[..., 2]], axis=-1)


def flops_path(g: jax.Array) -> jax.Array:
  """FLOPs path: plain nested products c = cumprod(g), nothing detached, so the budget
  gradient reaches all three gates (θ0 through every level)."""
  return jnp.cumprod(g, axis=-1)


def op_coefficients(c: jax.Array) -> dict[str, jax.Array]:
  """Mixing coefficients of the candidate ops from the nested gates c = (c0, c1, c2):
  msa c2, conv3 c1(1−c2), conv1 c0(1−c1)(1−c2); skip gets what is left."""
  c0, c1, c2 = c[..., 0], c[..., 1], c[..., 2]
  return {"msa": c2, "conv3": c1 * (1 - c2), "conv1": c0 * (1 - c1) * (1 - c2)}
