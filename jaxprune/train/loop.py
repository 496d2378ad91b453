"""`fit`: the one training loop every method phase runs.

Restores the phase's latest checkpoint if any, steps the jitted update, logs and shows progress,
evaluates and checkpoints every so often, stops on a non-finite loss with the last good
checkpoint intact, and saves at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from jaxprune.errors import UserError
from jaxprune.train import peers
from jaxprune.train.checkpoint import PhaseCheckpoints, all_finite
from jaxprune.train.logging import MetricWriter, Progress


class _CtrlC:
  """Within `with`: a first Ctrl-C only sets `requested`, which the loop checks between steps,
  so it never lands inside a checkpoint write or an XLA call; a second one interrupts at once.
  Only where Ctrl-C would raise KeyboardInterrupt anyway: in the main thread (the only one that
  may set handlers), and not where SIGINT is ignored (`nohup`, background jobs) or handled by
  the caller."""

  def __enter__(self):
    self.requested, self._previous, self._shielded, self._held = False, None, False, False
    if (threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested:
      if self._shielded:  # never inside a checkpoint write: at its end
        self._held = True
        return
      raise KeyboardInterrupt
    self.requested = True
    print("\n[interrupt] stopping after this step and saving a checkpoint (Ctrl-C again to stop "
          "at once)", flush=True)

  @contextlib.contextmanager
  def shield(self):
    """A second Ctrl-C inside the block (a checkpoint write) stops at its end instead of
    cutting the write: KeyboardInterrupt is raised when the block finishes."""
    self._shielded, self._held = True, False
    try:
      yield
    finally:
      self._shielded = False
      if self._held:
        self._held = False
        raise KeyboardInterrupt

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)


@dataclasses.dataclass
class Schedule:
  """When a phase logs, evaluates and checkpoints (in steps; 0 = only at the end)."""

  total_steps: int
  log_every: int = 50
  eval_every: int = 0
  checkpoint_every: int = 200


class NonFiniteLoss(UserError):
  pass


class Interrupted(Exception):
  """Ctrl-C during a phase: where it stopped and what a rerun resumes from."""

  def __init__(self, phase: str, step: int, checkpoint: int | None):
    resume = (f"the last checkpoint is step {checkpoint}" if checkpoint is not None
              else "no checkpoint of this phase yet")
    super().__init__(f"interrupted at step {step} of phase {phase} ({resume}); rerun the same "
                     "command to resume")


# Meta entries naming what a phase trains: a checkpoint written for other values is not resumed.
# (An ArchSpec alone does not tell which blocks were dropped: dropping block 10 or block 11 of a
# plain ViT gives the same one.)
IDENTITY_KEYS = ("arch", "dropped", "compressed")


def _check_same_work(directory: str, phase: str, meta: dict[str, Any],
                     saved: dict[str, Any]) -> None:
  for key in IDENTITY_KEYS:
    if key in meta and key in saved and json.loads(json.dumps(meta[key])) != saved[key]:
      raise UserError(f"{directory} holds a checkpoint of phase {phase} for another {key} "
                      f"({_short(saved[key])}, now {_short(meta[key])}); delete that folder to "
                      "train the phase again")


def _warn_other_data(phase: str, meta: dict[str, Any], saved: dict[str, Any]) -> None:
  """Says loudly when the training data differ from what the checkpoint was trained on (meta
  `data`: `data.pipeline.fingerprint`): the phase resumes, but not exactly."""
  now, then = meta.get("data"), saved.get("data")
  if now is None or then is None or now == then or jax.process_index() != 0:
    return
  how = (f"{then['images']} → {now['images']} images" if then["images"] != now["images"]
         else "the same number of images, other files or labels")
  logging.warning("%s: training data changed since the checkpoint (%s)", phase, how)
  print(f"[{phase}] WARNING: the training data changed since checkpoint step {saved['step']} "
        f"was written ({how}): this resume is not exact (other batches from here on); restore "
        "the data to resume exactly", flush=True)


def _short(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 80 else text[:77] + "..."


def fit(*, workdir: str, phase: str, state: Any, train_step: Callable, batches: Callable[[int], Any],
        schedule: Schedule, writer: MetricWriter, meta: dict[str, Any] | None = None,
        evaluate: Callable[[Any], dict[str, float]] | None = None,
        stop_when: Callable[[int, dict[str, Any]], bool] | None = None,
        on_start: Callable[[int], None] | None = None,
        show: tuple[str, ...] = ("loss", "accuracy")) -> tuple[Any, dict[str, Any]]:
  """Runs (or resumes) a phase to `schedule.total_steps`; returns (state, last eval metrics).

  Args:
    state: the freshly initialised train state (also the restore target).
    train_step: `(state, batch) -> (state, metrics)`.
    batches: `step -> batch` (a pure function of the step, so the data position is the step).
    evaluate: `state -> metrics`, run every `eval_every` steps and at the end.
    stop_when: `(step, eval metrics) -> bool`, asked after each evaluation; True ends the phase
      early. The final checkpoint is marked done, so a rerun does not train further.
    on_start: called with the step the phase starts from (0, or the restored checkpoint's), so
      a caller's own logs can drop rows of steps that will be replayed (metrics.jsonl is
      truncated here).
    show: the train metrics on the progress line (all go to metrics.jsonl).

  Raises:
    NonFiniteLoss: the loss or the state became non-finite (never saved in a checkpoint).
    Interrupted: Ctrl-C; the message names the step and the checkpoint a rerun resumes from.
  """
  ckpts = PhaseCheckpoints(workdir, phase)
  peers.running(phase, ckpts.directory)
  meta = dict(meta or {}, phase=phase)
  start, done = 0, False
  if ckpts.latest_step() is not None:
    state, saved = ckpts.restore(state)
    _check_same_work(ckpts.directory, phase, meta, saved)
    _warn_other_data(phase, meta, saved)
    start, done = int(saved["step"]), bool(saved.get("done", False))
    logging.info("%s: resumed from step %d", phase, start)
    if jax.process_index() == 0:
      print(f"[{phase}] resumed from checkpoint at step {start}"
            f"{' (phase already done)' if done else ''}", flush=True)
  writer.truncate(phase, start)
  if on_start is not None and jax.process_index() == 0:
    on_start(start)
  progress = Progress(phase, schedule.total_steps, start)
  pending: list[tuple[int, Any]] = []  # device metrics not yet checked on the host
  eval_metrics: dict[str, Any] = {}

  def stop(what: str, at: int) -> None:
    ckpts.close()
    saved = ckpts.latest_step()
    kept = (f"The last good checkpoint (step {saved}) in {ckpts.directory} is intact"
            if saved is not None else f"No checkpoint of {phase} was saved before it")
    raise NonFiniteLoss(f"{phase}: {what} at step {at}; stopped. {kept}; lower the phase's "
                        "optim.lr or set optim.grad_clip")

  def check_pending() -> None:
    for s, m in pending:
      loss = float(np.asarray(m["loss"]))
      if not np.isfinite(loss):
        stop(f"loss became {loss}", s)
    pending.clear()

  step = start
  with _CtrlC() as ctrl_c:
    try:
      while step < schedule.total_steps and not done:
        if ctrl_c.requested:
          raise KeyboardInterrupt
        state, metrics = train_step(state, batches(step))
        step += 1
        pending.append((step, metrics))
        log_now = schedule.log_every and step % schedule.log_every == 0
        ckpt_now = schedule.checkpoint_every and step % schedule.checkpoint_every == 0
        eval_now = schedule.eval_every and step % schedule.eval_every == 0
        if log_now or ckpt_now or eval_now or step == schedule.total_steps:
          last = jax.device_get(pending[-1][1])
          check_pending()
          if log_now:
            writer.write(phase, step, last)
            progress.update(step, {k: last[k] for k in show if k in last})
          if (eval_now or step == schedule.total_steps) and evaluate is not None:
            eval_metrics = evaluate(state)
            writer.write(phase + "/eval", step, eval_metrics)
            progress.update(step, eval_metrics, label="eval ")
            done = bool(stop_when and stop_when(step, eval_metrics))
          done = done or step == schedule.total_steps
          if ckpt_now or done:
            # The loss of step s is computed before its update: the state after it may still
            # have overflowed. A non-finite state is never saved.
            if not all_finite(state):
              stop("the weights became non-finite (the loss was still finite)", step)
            with ctrl_c.shield():
              ckpts.save(step, state, dict(meta, step=step, data_position=step, done=done))
    except KeyboardInterrupt:
      # A first Ctrl-C stops between steps: the state is whole, so it is saved (when finite).
      # Further Ctrl-Cs wait for the write to end: one line, the right step, nothing cut.
      try:
        with ctrl_c.shield():
          if ctrl_c.requested and step > (ckpts.latest_step() or 0) and all_finite(state):
            ckpts.save(step, state, dict(meta, step=step, data_position=step, done=False))
          ckpts.close()
      except KeyboardInterrupt:
        pass
      raise Interrupted(phase, step, ckpts.latest_step()) from None
  if evaluate is not None and not eval_metrics:
    eval_metrics = evaluate(state)
  ckpts.close()
  return state, eval_metrics
