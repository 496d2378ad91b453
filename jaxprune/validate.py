"""Up-front config validation: every field checked before any work and before anything is written.

Rules are matched on each leaf's dotted path (`*` = any section prefix), so one rule covers
`train.batch_size`, `search.train.batch_size` and `pretrain.train.batch_size`, and an error
names the full path, the value and what is allowed. Methods add their structural checks
(`check(config)` in the method module), run here too.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from typing import Any, Callable

import ml_collections

from jaxprune.errors import UserError
from jaxprune.models.precision import COMPUTE_DTYPES

Check = Callable[[Any], str | None]  # value → None when fine, else what is allowed


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
  """An integer in [lo, hi]."""
  def check(v):
    if not _is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
      if hi is None:
        return f"must be an integer >= {lo}"
      return f"must be an integer between {lo} and {hi}"
    return None
  return check


# PRNG seeds: JAX keys take 32 bits (2**32 would silently give seed 0's model), and methods
# derive seeds by adding small offsets: 31 bits leave room for them.
SEED = integer(0, 2**31 - 1)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Check:
  """A finite number in the interval (open ends where asked)."""
  def check(v):
    bad = not _is_num(v) or not math.isfinite(v)
    bad = bad or (lo is not None and (v <= lo if lo_open else v < lo))
    bad = bad or (hi is not None and (v >= hi if hi_open else v > hi))
    if not bad:
      return None
    left = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
    right = "" if hi is None else (f"< {hi}" if hi_open else f"<= {hi}")
    return "must be a finite number " + " and ".join(s for s in (left, right) if s)
  return check


def choice(*allowed: str) -> Check:
  return lambda v: None if v in allowed else f"allowed are {', '.join(allowed)}"


def each(inner: Check, min_len: int = 0) -> Check:
  """A sequence (at least `min_len` long) whose every item passes `inner`."""
  def check(v):
    if not isinstance(v, (tuple, list)) or len(v) < min_len:
      return f"must be a sequence of at least {min_len} values"
    for item in v:
      msg = inner(item)
      if msg:
        return f"every value {msg} (got {item!r})"
    return None
  return check


def or_auto(inner: Check) -> Check:
  """`inner`, or "auto" (read by the flags as the tuple ("auto",)): computed later."""
  def check(v):
    if tuple(v) == ("auto",) if isinstance(v, (tuple, list)) else v == "auto":
      return None
    msg = inner(v)
    return f"{msg}, or be auto" if msg else None
  return check


def regex(v) -> str | None:
  if not isinstance(v, str):
    return "must be a string (a regular expression)"
  try:
    re.compile(v)
  except re.error as e:
    return f"must be a valid regular expression ({e})"
  return None


def lr_rules(v) -> str | None:
  if not isinstance(v, (tuple, list)):
    return "must be a sequence of (regex, multiplier) pairs"
  for rule in v:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
      return f"must be (regex, multiplier) pairs (got {rule!r})"
    msg = regex(rule[0]) or number(0, lo_open=True)(rule[1])
    if msg:
      return f"pair {tuple(rule)!r}: {msg}"
  return None


NONNEG = integer(0)
POSITIVE = integer(1)
FRACTION = number(0, 1, lo_open=True, hi_open=True)


def boolean(v) -> str | None:
  return None if isinstance(v, bool) else "must be True or False"

# (path pattern, check): the rules of the sections every method shares; each method adds those
# of its own sections (`methods.Method.rules`, see `rules()`). The first matching rule applies; a
# numeric leaf with no rule is a bug (tests/test_validate.py checks every shipped config is
# covered).
CORE_RULES: list[tuple[str, Check]] = [
    ("seed", SEED),
    ("latency_batch", POSITIVE),
    ("model.image_size", NONNEG),       # 0 = the data's size
    ("model.patch_size", POSITIVE),
    ("model.depth", NONNEG), ("model.width", NONNEG), ("model.num_heads", NONNEG),
    ("model.window", NONNEG),  # 0 = preset
    ("model.mlp_ratio", number(0)),
    ("data.fewshot", NONNEG), ("data.fewshot_seed", SEED),
    ("data.mean", or_auto(each(number(), 0))),
    ("data.std", or_auto(each(number(0, lo_open=True), 0))),
    ("data.augment.crop_scale_min", number(0, 1, lo_open=True)),
    ("data.augment.shift", NONNEG),
    ("data.threads", integer(-1)), ("data.workers", NONNEG),
    ("data.eval_crop", number(0, 1)),
    ("data.augment.randaugment", number(0, 10)), ("data.augment.randaugment_std", number(0)),
    ("data.augment.repeats", integer(1)),
    ("*train.drop_path", number(0, 1, hi_open=True)),
    ("data.augment.mixup", number(0)), ("data.augment.cutmix", number(0)),
    ("data.augment.erase", number(0, 1)),
    ("*train.batch_size", POSITIVE),
    ("*train.epochs", NONNEG), ("*train.steps", NONNEG),
    ("*train.label_smoothing", number(0, 1, hi_open=True)),
    ("*train.log_every", NONNEG), ("*train.checkpoint_every", NONNEG),
    ("*train.eval_every_epochs", NONNEG),
    ("*optim.lr", number(0, lo_open=True)), ("*optim.gate_lr", number(0)),
    ("*optim.warmup_steps", NONNEG), ("*optim.final_lr_ratio", number(0, 1)),
    ("*optim.weight_decay", number(0)), ("*optim.grad_clip", number(0)),
    ("*optim.b1", number(0, 1, hi_open=True)), ("*optim.b2", number(0, 1, hi_open=True)),
    ("*optim.frozen", regex), ("*optim.lr_rules", lr_rules),
    ("*optim.kind", choice("adamw", "sgd")), ("*optim.momentum", number(0, 1, hi_open=True)),
    ("*optim.schedule", choice("cosine", "step")),
    ("*optim.step_at", each(number(0, 1, lo_open=True, hi_open=True))),
    ("*distill.kind", choice("none", "hard", "soft")),
    ("*train.compute_dtype", choice(*COMPUTE_DTYPES)),
    ("*train.remat", boolean),
    ("*distill.weight", number(0, 1)), ("*distill.temperature", number(0, lo_open=True)),
    ("export.formats", each(choice("stablehlo", "onnx", "hf"))),
]


def rules() -> list[tuple[str, Check]]:
  """The core rules, then every method's (`methods.Method.rules`)."""
  from jaxprune import methods
  return CORE_RULES + [r for m in methods.all_methods().values() for r in m.rules]


def length_sections() -> tuple[str, ...]:
  """Train sections whose epochs/steps set a phase's length: `train` and every method's
  `phases` (mimic phases take DC-ViT's step counts)."""
  from jaxprune import methods
  out = ["train"]
  for m in methods.all_methods().values():
    out += [p for p in m.phases if p not in out]
  return tuple(out)


def leaves(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
  """(dotted path, value) of every non-dict leaf."""
  out = []
  for k, v in d.items():
    if isinstance(v, dict):
      out += leaves(v, f"{prefix}{k}.")
    else:
      out.append((prefix + k, v))
  return out


def rule_for(path: str) -> Check | None:
  for pattern, check in rules():
    if fnmatch.fnmatchcase(path, pattern):
      return check
  return None


def _show(v: Any) -> str:
  return repr(tuple(v) if isinstance(v, list) else v)


def check_fields(config: ml_collections.ConfigDict) -> None:
  """Range/choice rules on every leaf, and a positive length for every train section."""
  flat = dict(leaves(config.to_dict()))
  for path, value in flat.items():
    check = rule_for(path)
    msg = check(value) if check else None
    if msg:
      raise UserError(f"{path} = {_show(value)}: {msg}")
  for section in length_sections():
    if f"{section}.epochs" in flat and not (flat[f"{section}.epochs"] or flat[f"{section}.steps"]):
      raise UserError(f"{section}.epochs = 0 and {section}.steps = 0: the phase would train "
                      f"nothing; set {section}.epochs or {section}.steps > 0")


def check_devices(config: ml_collections.ConfigDict, device_count: int) -> None:
  """Every global batch size must split evenly over the devices."""
  from jaxprune.train.mesh import check_batch
  for path, value in leaves(config.to_dict()):
    if path.endswith("train.batch_size"):
      check_batch(value, path, device_count)


def planned_spec(config: ml_collections.ConfigDict):
  """The dense model's ArchSpec as far as it is known before the data is read: the saved spec
  of `model.init_from`, else the preset with the config's overrides (classes and channels are
  placeholders). Invalid model fields (unknown preset, width not divisible by heads...) fail
  here, before any work."""
  from jaxprune.export import read_spec
  from jaxprune.methods.common import spec_from_config
  m = config.model
  if m.init_from:
    return read_spec(os.path.expanduser(m.init_from))
  return spec_from_config(m, m.patch_size, num_classes=2, in_channels=3)


def check_paths(config: ml_collections.ConfigDict) -> None:
  """The data source names a known kind (and existing folders); the model can be built, and is
  of a family the method runs on."""
  from jaxprune import methods, registry
  from jaxprune.data.sources import check_source
  check_source(config.data.source)
  family = planned_spec(config).family
  allowed = methods.get(config.method).families or registry.families()
  if family not in allowed:
    raise UserError(f"method {config.method!r} does not run on {family!r} models yet (the "
                    f"model from model.variant / model.init_from); it runs on: "
                    f"{', '.join(allowed)}")


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
  """Everything that can be checked without data or training; raises `UserError`."""
  from jaxprune import methods
  method = methods.get(config.method)
  check_fields(config)
  if device_count is not None:
    check_devices(config, device_count)
  check_paths(config)
  check_frozen(config)
  if method.check is not None:
    method.check(config)


def check_frozen(config: ml_collections.ConfigDict) -> None:
  """No phase's `optim.frozen` freezes every weight of the dense model (the phase would train
  nothing; checked again, on the phase's own model, when its optimizer is made)."""
  import re

  import jax
  from flax import nnx

  from jaxprune.models import build_model
  from jaxprune.train.optim import leaf_paths
  frozen = [(p, v) for p, v in leaves(config.to_dict()) if p.endswith("optim.frozen") and v]
  if not frozen:
    return
  model = nnx.eval_shape(lambda: build_model(planned_spec(config)))
  paths = jax.tree.leaves(leaf_paths({"weights": nnx.state(model, nnx.Param)}))
  for path, pattern in frozen:
    if all(re.search(pattern, p) for p in paths):
      raise UserError(f"{path} = {pattern!r} freezes every weight of the model: the phase would "
                      "train nothing; freeze fewer (e.g. '^weights/head')")
