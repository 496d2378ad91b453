"""`train_phase`: the one pipeline every training phase of every method runs.

Optimizer state for the model (weights and gates trained, BatchNorm statistics carried), the
jitted step of the phase's loss sharded over the mesh, `train.loop.fit` (resumable, checkpointed,
logged), and the trained model back on the host. Pre-training, SPViT's search and fine-tune, and
feature mimicking (DC-ViT's trials and steps, PRACTISE's adaptors and fine-tune) differ only in
the loss, the evaluation and the schedule knobs they pass here.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import ml_collections

from jaxprune.data.pipeline import fingerprint
from jaxprune.methods import common
from jaxprune.train.logging import MetricWriter
from jaxprune.train.loop import Schedule, fit
from jaxprune.train.optim import make_optimizer, set_trainable, trainable_paths
from jaxprune.models.precision import compute_dtype
from jaxprune.train.step import init_state, make_train_step, merge, place


_SHARED: dict = {}  # train_phase(shared=...): key -> jitted step, least recently used first


class Trained(NamedTuple):
  model: Any
  metrics: dict[str, Any]   # the last evaluation's ({} without one)
  step: int                 # the step the phase ended at (early stop included)


def train_phase(cfg: ml_collections.ConfigDict, workdir: str, phase: str, model, loss_fn,
                s: common.Setup, writer: MetricWriter, *, steps: int | None = None,
                seed: int | None = None, aux: Any = None, evaluate: bool | Callable = True,
                eval_every: int | None = None, meta: dict[str, Any] | None = None,
                show=("loss", "accuracy"), stop_when=None, on_start=None,
                trainable=None, shared: str | None = None) -> Trained:
  """Trains `model` on `loss_fn(model, batch, key[, aux]) -> (loss, metrics)` as phase `phase`.

  Args:
    cfg: the phase's config (`common.phase_config`): its `train` and `optim` sections.
    s: the phase's data and mesh (`common.setup(cfg)`).
    steps: default `common.total_steps(cfg, s)`.
    seed: the step keys' seed (default `cfg.seed`).
    aux: a pytree every step receives after the key (a teacher's state).
    evaluate: True = test accuracy every `train.eval_every_epochs`; a callable
      `evaluate(graphdef) -> (state -> metrics)` for the phase's own evaluation; False = none.
    eval_every: in steps, overriding `train.eval_every_epochs`.
    trainable: an NNX filter of the weights the phase trains (the others frozen, on top of
      `optim.frozen`); None = all. One that selects nothing is an error.
    shared: the phases that pass the same `shared` name promise the same `loss_fn` for the same
      config: those of one graph and recipe then share one jitted step (traced and compiled
      once; e.g. every DC-ViT trial on `models.masked`), the trainable set being optimizer state.
    meta, show, stop_when, on_start: as `fit`.
  """
  steps = steps or common.total_steps(cfg, s)
  paths = None if trainable is None else trainable_paths(model, trainable, f"phase {phase}")
  seed = cfg.seed if seed is None else seed
  dtype = compute_dtype(cfg.train.get("compute_dtype", "float32"))
  if shared is None:
    graphdef, state, tx = init_state(model, lambda p: make_optimizer(cfg.optim, p, steps, paths))
    step_fn = make_train_step(graphdef, tx, loss_fn, s.mesh, seed, aux=aux, compute_dtype=dtype)
  else:
    graphdef, state, tx = init_state(model, lambda p: make_optimizer(cfg.optim, p, steps,
                                                                     traced_trainable=True))
    if paths is not None:
      state["opt"] = set_trainable(state["opt"], state["params"], paths)
    key = (shared, graphdef, steps, seed, str(dtype), tuple(s.mesh.devices.flat),
           cfg.optim.to_json(), cfg.train.to_json())
    step_fn = make_train_step(graphdef, tx, loss_fn, s.mesh, seed, aux=aux, compute_dtype=dtype,
                              jitted=_SHARED.pop(key, None))
    _SHARED[key] = step_fn.jitted
    while len(_SHARED) > 4:  # the most recently used steps (each holds a compiled program)
      _SHARED.pop(next(iter(_SHARED)))
  if evaluate is True:
    evaluate_fn = common.evaluator(cfg, graphdef, s)
  else:
    evaluate_fn = evaluate(graphdef) if evaluate else None
  if eval_every is None:
    eval_every = cfg.train.eval_every_epochs * s.batches.steps_per_epoch
  schedule = Schedule(total_steps=steps, log_every=cfg.train.log_every,
                      eval_every=eval_every if evaluate_fn else 0,
                      checkpoint_every=cfg.train.checkpoint_every)
  meta = dict(meta or {}, data=fingerprint(s.train))
  try:
    state, metrics = fit(workdir=workdir, phase=phase, state=place(state, s.mesh),
                         train_step=step_fn, batches=s.batches, schedule=schedule, writer=writer,
                         evaluate=evaluate_fn, meta=meta, show=show, stop_when=stop_when,
                         on_start=on_start)
  finally:
    s.batches.close()  # the loader's threads and worker processes
  state = jax.device_get(state)
  return Trained(merge(graphdef, state), metrics, int(state["step"]))
