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
from jaxprune.atomic import write_json
from jaxprune.errors import UserError
from jaxprune.models import build_model

ARCH_FILE = "arch.json"
STATE_DIR = "state"


def save_model(directory: str, model: nnx.Module, extra: dict[str, Any] | None = None,
               preprocessing: dict[str, Any] | None = None) -> str:
  """Writes the model state and `directory/arch.json` (plus `extra` metadata); returns the path.

  `preprocessing` ({"mean": [...], "std": [...]} per channel, after scaling pixels to [0, 1]):
  the input normalisation the model expects, stored with it so that methods use it by default
  (`read_preprocessing`).

  `arch.json` is written last and atomically, so a folder that has one holds a whole model
  (stages that reuse exports on a rerun test for it).

  In a multi-process job every process must call it (orbax synchronises them); only process 0
  writes.
  """
  directory = os.path.abspath(directory)
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
  state = jax.device_get(nnx.to_pure_dict(nnx.state(model)))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, STATE_DIR), state, force=True)
  if jax.process_index() == 0:  # last, atomically: an arch.json means the model is complete
    meta = {"arch": model.spec.to_dict(), **(extra or {})}
    if preprocessing:
      meta["preprocessing"] = check_preprocessing(preprocessing, model.spec.in_channels,
                                                  "preprocessing")
    write_json(os.path.join(directory, ARCH_FILE), meta, indent=2)
  return directory


def check_preprocessing(p: dict[str, Any], channels: int, where: str) -> dict[str, list[float]]:
  """`{"mean": [...], "std": [...]}` with one value per channel (std > 0), as plain floats."""
  out = {}
  for key in ("mean", "std"):
    values = p.get(key) if isinstance(p, dict) else None
    try:
      values = [float(v) for v in values]
    except (TypeError, ValueError):
      values = None
    if values is None or len(values) != channels or (key == "std" and min(values) <= 0):
      positive = ", all > 0" if key == "std" else ""
      raise UserError(f"{where}.{key} = {p.get(key) if isinstance(p, dict) else p!r}: needs "
                      f"{channels} numbers (one per input channel){positive}")
    out[key] = values
  return out


def read_preprocessing(directory: str) -> dict[str, list[float]] | None:
  """The input normalisation stored with a saved model (`save_model(preprocessing=...)`), or
  None when the model carries none (e.g. exported before jaxprune stored it)."""
  path = os.path.join(directory, ARCH_FILE)
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  p = meta.get("preprocessing")
  if p is None:
    return None
  spec = ArchSpec.from_dict(meta["arch"])
  return check_preprocessing(p, spec.in_channels, f"{path}: preprocessing")


def read_spec(directory: str) -> ArchSpec:
  """The ArchSpec saved in `directory`."""
  path = os.path.join(directory, ARCH_FILE)
  if not os.path.exists(path):
    raise UserError(f"model directory {directory!r} has no {ARCH_FILE}: not a saved jaxprune "
                    "model (write one with jaxprune.save_model or `python -m jaxprune.convert`)")
  try:
    with open(path) as f:
      meta = json.load(f)
    arch = meta["arch"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path} is not a jaxprune arch file ({type(e).__name__}: {e}); the model "
                    "folder is damaged: export or convert the model again") from None
  return ArchSpec.from_dict(arch)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """`{"blocks/0/attn/qkv/kernel": shape}` for the leaves of a nested dict."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in flat}


def check_weights(directory: str, spec: ArchSpec, saved: dict[str, tuple[int, ...]],
                  expected: dict[str, tuple[int, ...]]) -> None:
  """Every saved array must exist in the spec's model with the same shape, and vice versa."""
  where = f"model {directory!r}: the weights do not match its {ARCH_FILE}"
  for name, shape in expected.items():
    if name not in saved:
      raise UserError(f"{where}: {name} is missing from the saved weights")
    if saved[name] != shape:
      raise UserError(f"{where}: {name} has shape {saved[name]} but the spec (width "
                      f"{spec.width}, {spec.depth} blocks, {spec.num_classes} classes) needs "
                      f"{shape}")
  extra = sorted(set(saved) - set(expected))
  if extra:
    raise UserError(f"{where}: unexpected saved arrays {extra[:5]}")


def load(directory: str) -> nnx.Module:
  """Rebuilds the model saved in `directory` (by `save_model` or `python -m jaxprune.convert`).

  Every saved array is checked against the shapes `arch.json` implies before it is read, so a
  spec and weights that disagree fail here, naming the first mismatch. The returned model
  (`ViT` or `Swin`, by the spec's family), called on float NHWC images normalised as in
  training, returns class logits.
  """
  spec = read_spec(directory)
  abstract = nnx.eval_shape(lambda: build_model(spec))
  graphdef, abstract_state = nnx.split(abstract)
  target = nnx.to_pure_dict(abstract_state)
  state_dir = os.path.join(os.path.abspath(directory), STATE_DIR)
  if not os.path.isdir(state_dir):
    raise UserError(f"model {directory!r} has no {STATE_DIR}/ folder of weights; export or "
                    "convert the model again")
  with ocp.StandardCheckpointer() as ckptr:
    try:
      saved = _shapes(ckptr.metadata(state_dir).item_metadata.tree)
    except Exception as e:  # orbax raises many types for a damaged checkpoint
      raise UserError(f"model {directory!r}: cannot read the weights' metadata "
                      f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    check_weights(directory, spec, saved, _shapes(target))
    try:
      restored = ckptr.restore(state_dir, target)
    except Exception as e:
      raise UserError(f"model {directory!r}: cannot read the weights ({type(e).__name__}: "
                      f"{' '.join(str(e).split())[:200]})") from None
  nnx.replace_by_pure_dict(abstract_state, restored)
  return nnx.merge(graphdef, abstract_state)
