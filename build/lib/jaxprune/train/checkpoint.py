"""Resumable checkpoints (orbax `CheckpointManager`) and the workdir guard.

Each phase of a method checkpoints under `workdir/checkpoints/<phase>/<step>/` two items:
`state` (the whole train state) and `meta` (JSON: step, data position, ArchSpec, phase). Orbax
writes to a temporary folder and renames it when complete, so a process killed mid-save leaves
the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxprune.errors import UserError

CONFIG_FILE = "config.json"


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
    """Restores onto the shapes, dtypes and shardings of `target` (e.g. a fresh state)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=repr)


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict,
                    overwrite: bool = False) -> None:
  """Creates `workdir` and records the config; refuses a workdir holding another config's run.

  Rerunning the same command in the same workdir resumes. With `overwrite`, an existing run of a
  different config is deleted first.
  """
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  text = config_to_json(config)
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if old != text:
      if not overwrite:
        old_d, new_d = json.loads(old), json.loads(text)
        diff = sorted(_diff_keys(old_d, new_d))
        raise UserError(f"workdir {workdir} holds a run of a different config (differs in: "
                        f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); pass "
                        "--overwrite to replace it, or choose another --workdir")
      if jax.process_index() == 0:
        shutil.rmtree(workdir)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      f.write(text)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    return out
  return [] if a == b else [prefix.rstrip(".")]
