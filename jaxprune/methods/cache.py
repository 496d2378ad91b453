"""Stage caches: finished work on disk is found and reused, so a rerun resumes where it stopped.

A stage's result is written atomically and last (a JSON file through `atomic.write_json`; a
model through `export.save_model`, whose `arch.json` is written after the weights), so its
presence means the stage finished.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax

from jaxprune.atomic import write_json
from jaxprune.export import ARCH_FILE, load, save_model


def cached_json(path: str, compute: Callable[[], Any]) -> Any:
  """The JSON at `path` if a previous run wrote it, else `compute()`, written (by process 0)."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  value = compute()
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json(path, value, indent=2)
  return value


def cached_model(directory: str, compute: Callable[[], tuple[Any, dict[str, Any]]],
                 preprocessing: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
  """(model, extra) saved in `directory` if a previous run finished it, else `compute()`'s,
  saved there with `extra` (and the input `preprocessing`) beside its arch."""
  path = os.path.join(directory, ARCH_FILE)
  if os.path.exists(path):
    with open(path) as f:
      meta = json.load(f)
    return load(directory), {k: v for k, v in meta.items()
                             if k not in ("arch", "preprocessing")}
  model, extra = compute()
  save_model(directory, model, extra=extra, preprocessing=preprocessing)
  return model, extra
