"""Save a model as `DIR/arch.json` + an orbax checkpoint, and `load(DIR)` it back.

A saved model rebuilds from its ArchSpec alone: no pruning code, no masks.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jaxprune.arch import ArchSpec
from jaxprune.errors import UserError
from jaxprune.models import ViT, build_model

ARCH_FILE = "arch.json"
STATE_DIR = "state"


def save_model(directory: str, model: ViT, extra: dict[str, Any] | None = None) -> str:
  """Writes `directory/arch.json` (plus `extra` metadata) and the model state; returns the path.

  In a multi-process job every process must call it (orbax synchronises them); only process 0
  writes.
  """
  directory = os.path.abspath(directory)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    meta = {"arch": model.spec.to_dict(), **(extra or {})}
    with open(os.path.join(directory, ARCH_FILE), "w") as f:
      json.dump(meta, f, indent=2)
  state = jax.device_get(nnx.state(model).to_pure_dict())
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, STATE_DIR), state, force=True)
  return directory


def read_spec(directory: str) -> ArchSpec:
  """The ArchSpec saved in `directory`."""
  path = os.path.join(directory, ARCH_FILE)
  if not os.path.exists(path):
    raise UserError(f"model directory {directory!r} has no {ARCH_FILE}: not a saved jaxprune "
                    "model (write one with jaxprune.save_model or `python -m jaxprune.convert`)")
  with open(path) as f:
    return ArchSpec.from_dict(json.load(f)["arch"])


def load(directory: str) -> ViT:
  """Rebuilds the model saved in `directory` (by `save_model` or `python -m jaxprune.convert`).

  The returned `ViT`, called on float NHWC images normalised as in training, returns class logits.
  """
  spec = read_spec(directory)
  abstract = nnx.eval_shape(lambda: build_model(spec))
  graphdef, abstract_state = nnx.split(abstract)
  target = abstract_state.to_pure_dict()
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(os.path.abspath(directory), STATE_DIR), target)
  abstract_state.replace_by_pure_dict(restored)
  return nnx.merge(graphdef, abstract_state)
