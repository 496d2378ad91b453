"""Resumable checkpoints (orbax `CheckpointManager`).

Each phase of a method checkpoints under `workdir/checkpoints/<phase>/<step>/` two items:
`state` (the whole train state) and `meta` (JSON: step, data position, ArchSpec, phase). Orbax
writes to a temporary folder and renames it when complete, so a process killed mid-save leaves
the previous checkpoint as the latest. A checkpoint that does not read back (truncated, a
folder deleted) or holds non-finite values is skipped with a message naming it and why, and the
newest good one is restored instead.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from jaxprune.errors import UserError


class PhaseCheckpoints:
  """Checkpoints of one phase: save every so often, restore the latest."""

  def __init__(self, workdir: str, phase: str, max_to_keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints", phase)
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores onto the shapes, dtypes and shardings of `target` (e.g. a fresh state).

    Without `step`, the newest checkpoint that reads back and holds only finite values; the
    ones skipped on the way are reported and deleted (so the phase can save those steps again).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise UserError(f"no checkpoint in {self.directory}")
    problems = []
    for s in steps:
      try:
        out = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state, meta = out["state"], dict(out["meta"])
        if not all_finite(state):
          raise ValueError("it holds non-finite values")
        if "step" not in meta:
          raise ValueError("its metadata has no step")
      except Exception as e:  # orbax/tensorstore raise many types for a damaged checkpoint
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        problems.append(f"step {s}: {reason}")
        print(f"[{os.path.basename(self.directory)}] warning: skipped the checkpoint at step {s} "
              f"in {self.directory}: it does not restore ({reason})", flush=True)
        logging.warning("skipped checkpoint %s step %d: %s", self.directory, s, reason)
        if step is None:
          self._discard(s)
        continue
      return state, meta
    raise UserError(f"no checkpoint in {self.directory} restores ({'; '.join(problems)}); "
                    f"delete {self.directory} to restart this phase from scratch")

  def _discard(self, step: int) -> None:
    if jax.process_index() == 0:
      shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def all_finite(tree: Any) -> bool:
  """True when every floating-point leaf of `tree` is finite (reduced on device).

  One small program per leaf shape, not one per tree: a tree-wide jit recompiled for every
  model structure (each DC-ViT trial, each phase) and cost more than the check itself.
  """
  flags = [_leaf_finite(x) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]  # all dispatched, then read
  return all(bool(f) for f in flags)


@jax.jit
def _leaf_finite(x):
  return jnp.all(jnp.isfinite(x))
