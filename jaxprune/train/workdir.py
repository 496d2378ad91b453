"""The run directory: created or resumed, locked against a second run, overwritten safely.

A workdir made by jaxprune holds `config.json` (the run's config) and a marker file
`.jaxprune-run`. Rerunning the same config resumes it. `--overwrite` replaces a run of another
config, but only ever deletes what jaxprune writes (`run_entries()`) in a folder carrying the
marker; anything else in the folder is left where it is. A second process on the same workdir
is refused while the first holds its lock (`flock`, released by the kernel when a process dies,
so a killed run never leaves a stale lock behind).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from typing import Any, IO

import jax
import ml_collections

from jaxprune.atomic import write_text
from jaxprune.errors import UserError

CONFIG_FILE = "config.json"
MARKER_FILE = ".jaxprune-run"
LOCK_FILE = ".lock"
# What every run writes at the top of its workdir (config, checkpoints, logs, exports); each
# method adds its own (`methods.Method.outputs`, see `run_entries()`).
CORE_ENTRIES = frozenset({CONFIG_FILE, MARKER_FILE, "metrics.jsonl", "tensorboard", "checkpoints",
                          "summary.json", "export"})


def run_entries() -> frozenset[str]:
  """Everything jaxprune writes at the top of a workdir: the core entries and every method's."""
  from jaxprune import methods
  return CORE_ENTRIES.union(*(m.outputs for m in methods.all_methods().values()))

_held: dict[str, IO] = {}  # workdir → open lock file, held for the life of the process


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=repr)


def _make_dir(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} is a file, not a folder; choose another --workdir")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create --workdir {workdir}: {e.strerror or e} "
                    f"({_blocker(workdir)}); choose another --workdir") from None
  probe = os.path.join(workdir, f".write-test{os.getpid()}")
  try:
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(f"--workdir {workdir} is not writable ({e.strerror or e}); choose another "
                    "--workdir or fix its permissions") from None


def _blocker(path: str) -> str:
  """Why a folder cannot be made: the first existing ancestor that is not a folder, if any."""
  parent = path
  while parent and parent != os.path.dirname(parent):
    parent = os.path.dirname(parent)
    if os.path.exists(parent):
      return f"{parent} is a file" if not os.path.isdir(parent) else f"in {parent}"
  return "no existing parent"


def lock(workdir: str) -> None:
  """Takes the workdir's lock for this process, or refuses naming the run that holds it."""
  workdir = os.path.abspath(workdir)
  if workdir in _held:
    return
  f = open(os.path.join(workdir, LOCK_FILE), "a+")
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise UserError(f"--workdir {workdir} is in use by another jaxprune run ({holder}); wait "
                    "for it to finish, or choose another --workdir") from None
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} on {socket.gethostname()}")
  f.flush()
  _held[workdir] = f


def unlock(workdir: str) -> None:
  f = _held.pop(os.path.abspath(workdir), None)
  if f is not None:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def _delete_run(workdir: str) -> list[str]:
  """Deletes jaxprune's entries of a marked run; returns the names left alone."""
  if not os.path.exists(os.path.join(workdir, MARKER_FILE)):
    raise UserError(f"--overwrite: {workdir} has no {MARKER_FILE} marker, so it was not made by "
                    "this version of jaxprune; refusing to delete anything in it. Choose another "
                    "--workdir, or delete the folder yourself")
  kept = []
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name)
    if name not in run_entries() or name == MARKER_FILE:
      kept.append(name)
    elif os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  return [k for k in kept if k not in (MARKER_FILE, LOCK_FILE)]


def _foreign(workdir: str) -> list[str]:
  """The entries of an existing, non-empty folder that holds no jaxprune run (no marker, and no
  `config.json` of a jaxprune config — one with a `method`); [] for a run or an empty folder."""
  if not os.path.isdir(workdir):
    return []
  names = sorted(n for n in os.listdir(workdir) if n not in (LOCK_FILE, MARKER_FILE))
  if not names or os.path.exists(os.path.join(workdir, MARKER_FILE)):
    return []
  try:
    with open(os.path.join(workdir, CONFIG_FILE)) as f:
      if "method" in json.load(f):
        return []
  except (OSError, ValueError, TypeError):
    pass
  return names


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict,
                    overwrite: bool = False, take_lock: bool = True) -> None:
  """Creates, resumes or (with `overwrite`) replaces the run in `workdir`; see the module doc.

  Call it after the config is validated: nothing is deleted or written before this point.
  """
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  text = config_to_json(config)
  main = jax.process_index() == 0
  foreign = _foreign(workdir) if main else []
  if foreign:  # refused before anything (a lock file included) is written into it
    raise UserError(f"--workdir {workdir} is not empty and holds no jaxprune run (found "
                    f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); choose a "
                    "new or empty folder")
  if main:
    _make_dir(workdir)
    if take_lock:
      lock(workdir)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = f.read()
      old_dict = json.loads(old)
    except (OSError, ValueError) as e:
      if not overwrite:
        raise UserError(f"workdir {workdir}: {CONFIG_FILE} cannot be read as JSON "
                        f"({type(e).__name__}: {e}); pass --overwrite to replace the run, or "
                        "choose another --workdir") from None
      old, old_dict = None, None
    diff = sorted(_diff_keys(old_dict, json.loads(text))) if old_dict is not None else ["*"]
    if old != text and diff:
      if not overwrite:
        raise UserError(f"workdir {workdir} holds a run of a different config (differs in: "
                        f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); pass "
                        "--overwrite to replace it, or choose another --workdir")
      if main:
        kept = _delete_run(workdir)
        if kept:
          print(f"--overwrite: replaced the run in {workdir}; left alone (not written by "
                f"jaxprune): {', '.join(kept)}", flush=True)
  elif main:
    others = [n for n in os.listdir(workdir) if n not in (LOCK_FILE, MARKER_FILE)]
    if others:
      raise UserError(f"--workdir {workdir} is not empty and holds no jaxprune run (found "
                      f"{', '.join(sorted(others)[:5])}{' ...' if len(others) > 5 else ''}); "
                      "choose a new or empty folder")
  if main:
    write_text(path, text)
    if not os.path.exists(os.path.join(workdir, MARKER_FILE)):
      write_text(os.path.join(workdir, MARKER_FILE), "made by jaxprune; --overwrite deletes "
                   "only jaxprune's own files in this folder\n")


_MISSING = object()
# Fields a resume may change: how fast a run goes (loader threads and processes), never what it
# computes; and `data.skip_corrupt`, the fix a data error advises (a resume that then finds
# other images says so: train/loop.py). Methods add theirs (`methods.Method.neutral`).
CORE_NEUTRAL = frozenset({"data.threads", "data.workers", "data.skip_corrupt"})
# Every phase's `train.remat` too (per-block rematerialisation: the same computation in less
# memory, so a resume may turn it on when memory runs out): matched by the path's end.
NEUTRAL_LEAVES = ("train.remat",)
# Fields added later whose default is not an "off" value: the default the runs before them
# computed with. Keyed by the end of the dotted path ("train.compute_dtype" is every section's
# `train.compute_dtype`), so a later field that shares only a leaf name is not covered by mistake.
# Methods add theirs (`methods.Method.added_defaults`).
CORE_ADDED_DEFAULTS = {"train.compute_dtype": "float32", "augment.randaugment_std": 0.5,
                       "augment.repeats": 1, "optim.kind": "adamw", "optim.momentum": 0.9,
                       "optim.schedule": "cosine", "optim.step_at": [0.4]}


def neutral() -> frozenset[str]:
  """Config paths a resume may change: the core ones and every method's."""
  from jaxprune import methods
  return CORE_NEUTRAL.union(*(m.neutral for m in methods.all_methods().values()))


def added_defaults() -> dict[str, Any]:
  """Fields added after runs were saved, with the value those runs computed with."""
  from jaxprune import methods
  out = dict(CORE_ADDED_DEFAULTS)
  for m in methods.all_methods().values():
    out.update(m.added_defaults)
  return out


def path_entry(table: dict[str, Any], key: str) -> Any:
  """The value in `table` whose name is the dotted config path `key` or ends it at a dot."""
  for name, value in table.items():
    if key == name or key.endswith("." + name):
      return value
  return _MISSING


def _off(value: Any) -> bool:
  """A config value that switches its feature off (0, 0.0, False, "", empty)."""
  return value in (0, "", None) or (isinstance(value, (list, tuple, dict)) and not value)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ. A key the old config `a` lacks while the new one holds it
  at its off value is not a difference: a field added to jaxprune after that run, inert; nor
  are the `neutral()` settings."""
  if isinstance(a, dict) and isinstance(b, dict):
    out, defaults, free = [], added_defaults(), neutral()
    for k in sorted(set(a) | set(b)):
      added = k not in a and (_off(b[k]) or path_entry(defaults, prefix + k) == b[k])
      if (added or f"{prefix}{k}" in free
          or any(f".{prefix}{k}".endswith(f".{leaf}") for leaf in NEUTRAL_LEAVES)):
        continue
      out += _diff_keys(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}{k}.")
    return out
  return [] if a == b else [prefix.rstrip(".")]
