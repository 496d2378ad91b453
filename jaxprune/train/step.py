"""Jitted, sharded train and eval steps over the functional split of a model.

The train state is a plain dict of pytrees:
  step    int32 scalar
  params  {"weights": nnx.State of Params, "gates": nnx.State of Gates}   (what is trained)
  rest    nnx.State of everything else (BatchNorm statistics)
  opt     optax state
A method supplies `loss_fn(model, batch, key) -> (loss, metrics)`; the step merges the model
inside the loss (`nnx.merge`), differentiates w.r.t. `params`, and carries `rest` forward.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxprune.models import Gate
from jaxprune.models.precision import set_compute_dtype
from jaxprune.train.mesh import data_sharding, replicated

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def init_state(model: nnx.Module,
               make_tx: Callable[[Any], optax.GradientTransformation]):
  """(graphdef, state, tx) for `model`: weights and gates trained, the rest carried.

  `make_tx(params)` builds the optimizer for the `{"weights", "gates"}` tree (path rules need it).
  """
  graphdef, weights, gates, rest = nnx.split(model, nnx.Param, Gate, ...)
  params = {"weights": weights, "gates": gates}
  tx = make_tx(params)
  return graphdef, {"step": jnp.zeros((), jnp.int32), "params": params, "rest": rest,
                    "opt": tx.init(params)}, tx


def merge(graphdef, state) -> nnx.Module:
  return nnx.merge(graphdef, state["params"]["weights"], state["params"]["gates"], state["rest"])


def soft_cross_entropy(logits: jax.Array, targets: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
  """Mean cross-entropy against soft targets [B, classes], with optional label smoothing."""
  if label_smoothing:
    targets = targets * (1 - label_smoothing) + label_smoothing / targets.shape[-1]
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def make_train_step(graphdef, tx: optax.GradientTransformation, loss_fn: LossFn, mesh,
                    seed: int, aux: Any = None, compute_dtype=None,
                    jitted: Callable | None = None) -> Callable:
  """`step(state, batch) -> (state, metrics)`: jitted, state replicated and donated, batch
  sharded on the `data` axis. The step's key is `fold_in(key(seed), state.step)`.

  `loss_fn(model, batch, key)`, or `loss_fn(model, batch, key, aux)` when `aux` is given: a
  constant pytree (e.g. a teacher's weights) passed to the jitted step as an argument, replicated,
  never differentiated nor baked into the program as constants.
  `compute_dtype` (e.g. bfloat16): the model computes in it over float32 parameters
  (models/precision.py). `jitted`: the `.jitted` of an earlier step made with the same
  arguments (all but `aux`'s values), reused instead of traced and compiled again.
  """
  base_key = jax.random.key(seed)

  def step(state, batch, aux):
    key = jax.random.fold_in(base_key, state["step"])

    def compute(params, rest):
      # Fresh Variables at this trace level: BatchNorm updates its statistics in place.
      rest = jax.tree.map(lambda x: x, rest)
      model = set_compute_dtype(
          nnx.merge(graphdef, params["weights"], params["gates"], rest), compute_dtype)
      args = (model, batch, key) if aux is None else (model, batch, key, aux)
      loss, metrics = loss_fn(*args)
      _, _, _, rest = nnx.split(model, nnx.Param, Gate, ...)
      return loss, (metrics, rest)

    (loss, (metrics, rest)), grads = jax.value_and_grad(compute, has_aux=True)(
        state["params"], state["rest"])
    updates, opt = tx.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}
    return {"step": state["step"] + 1, "params": params, "rest": rest, "opt": opt}, metrics

  rep, data = replicated(mesh), data_sharding(mesh)
  if jitted is None:
    jitted = jax.jit(step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                     donate_argnums=0)
  if aux is not None:
    aux = place(aux, mesh)
  bound = lambda state, batch: jitted(state, batch, aux)  # noqa: E731
  bound.jitted = jitted
  return bound


def make_eval_step(graphdef, mesh, compute_dtype=None) -> Callable:
  """`eval_step(state, batch) -> {"correct", "count", "loss_sum"}` over masked rows."""

  def eval_step(state, batch):
    logits = set_compute_dtype(merge(graphdef, state), compute_dtype)(batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"correct": jnp.sum(correct * mask), "count": jnp.sum(mask),
            "loss_sum": jnp.sum(ce * mask)}

  return jax.jit(eval_step, in_shardings=(replicated(mesh), data_sharding(mesh)),
                 out_shardings=replicated(mesh))


def place(state: Any, mesh) -> Any:
  """A copy of `state` replicated on the mesh. Always a copy: train steps donate their state,
  which must never delete the arrays of a model the caller still holds. (JAX 0.10's
  `may_alias=False` still reuses a one-device array's buffer as the first shard of a
  multi-device copy, hence the explicit copy of those.)"""
  def copy(x):
    if isinstance(x, jax.Array) and len(x.sharding.device_set) == 1:
      return jnp.copy(x)
    return x

  return jax.device_put(jax.tree.map(copy, state), replicated(mesh), may_alias=False)
