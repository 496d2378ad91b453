"""Optimizers with per-parameter-path rules: freezing, learning-rate multipliers, a gate group.

The trainable tree is `{"weights": ..., "gates": ...}`. Paths are strings like
`weights/blocks/3/mlp/fc1/kernel`; rules are regular expressions searched in them:
  optim.frozen    one regex; matching leaves get no update (gradients still flow through them)
  optim.lr_rules  ((regex, multiplier), ...); the first match scales the learning rate
Gates get their own AdamW (no weight decay, `optim.gate_lr`). Weight decay skips biases, norms,
and the token/position embeddings.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxprune.errors import UserError

NO_DECAY = re.compile(r"(^|/)(pos_embed|cls_token|dist_token)(/|$)")


def path_str(path) -> str:
  """`weights/blocks/3/mlp/fc1/kernel` for a key path (NNX's trailing `.value` left out)."""
  parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
  if parts and parts[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
    parts.pop()
  return "/".join(parts)


def leaf_paths(tree) -> Any:
  """A tree like `tree` whose leaves are their path strings."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def _compile(pattern: str, field: str) -> re.Pattern:
  try:
    return re.compile(pattern)
  except re.error as e:
    raise UserError(f"{field} = {pattern!r} is not a valid regular expression: {e}") from None


def trainable_paths(model, selects, where: str) -> frozenset[str]:
  """The `weights/...` paths of the parameters an NNX filter `selects` in `model` (a method's
  trainable set, e.g. `registry.Family.trainable_upto`); one that selects nothing is an error."""
  from flax import nnx  # noqa: PLC0415
  state = nnx.state(model, nnx.All(nnx.Param, selects))
  paths = frozenset("weights/" + p for p in jax.tree.leaves(leaf_paths(state)))
  if not paths:
    raise UserError(f"{where}: the trainable set selects no weight of the model (it would "
                    "train nothing)")
  return paths


def group_labels(params, cfg: ml_collections.ConfigDict,
                 trainable: frozenset[str] | None = None) -> Any:
  """Per-leaf optimizer group: `gates`, `frozen`, or `lr<i>` (i = first matching lr rule, else
  the default group `lr-1`). With `trainable` (from `trainable_paths`), weights outside it are
  frozen too."""
  frozen = _compile(cfg.frozen, "optim.frozen") if cfg.frozen else None
  rules = [(_compile(r, f"optim.lr_rules[{i}]"), float(m)) for i, (r, m) in
           enumerate(cfg.lr_rules)]

  def label(path: str) -> str:
    if path.startswith("gates/"):
      return "gates"
    if frozen is not None and frozen.search(path):
      return "frozen"
    if trainable is not None and path not in trainable:
      return "frozen"
    for i, (rx, _) in enumerate(rules):
      if rx.search(path):
        return f"lr{i}"
    return "lr-1"

  return jax.tree.map(label, leaf_paths(params))


def schedule(base_lr: float, warmup_steps: int, total_steps: int,
             final_ratio: float = 0.0, kind: str = "cosine",
             step_at: tuple[float, ...] = ()) -> optax.Schedule:
  """Linear warm-up from 0, then cosine decay to `final_ratio`·base_lr at `total_steps`; or
  (`kind = "step"`) the base rate multiplied by 0.1 at each fraction `step_at` of the steps
  (MiR's recipe: ×0.1 at 40 %)."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  if kind == "step":
    drops = {int(f * total_steps): 0.1 for f in step_at}
    constant = optax.piecewise_constant_schedule(base_lr, drops)
    if not warmup_steps:
      return constant
    return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup_steps), constant],
                                [warmup_steps])
  return optax.warmup_cosine_decay_schedule(
      0.0, base_lr, warmup_steps, max(total_steps, warmup_steps + 1), base_lr * final_ratio)


class TrainableState(NamedTuple):
  """`trainable_as_state`'s state: a 0/1 float per leaf (the traced trainable set) and the
  inner optimizer's state."""
  mask: Any
  inner: Any


def trainable_as_state(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` on a trainable set held in the optimizer state (`set_trainable`) instead of baked
  into the program: gradients and updates of a leaf with mask 0 are zeroed, so `inner`'s
  moments stay at zero and its weight decay does not touch it — the same updates as the static
  `frozen` group, with one compiled step for every trainable set of a model."""

  def init(params):
    return TrainableState(jax.tree.map(lambda _: jnp.ones((), jnp.float32), params),
                          inner.init(params))

  def update(updates, state, params=None):
    def scale(u, m):
      return u * m.astype(u.dtype)

    updates = jax.tree.map(scale, updates, state.mask)
    updates, inner_state = inner.update(updates, state.inner, params)
    return jax.tree.map(scale, updates, state.mask), TrainableState(state.mask, inner_state)

  return optax.GradientTransformation(init, update)


def set_trainable(opt_state, params, trainable: frozenset[str]) -> Any:
  """`opt_state` (of a `make_optimizer(..., traced_trainable=True)`) training the weights in
  `trainable` (paths, `trainable_paths`) and the gates, and no other weight."""
  mask = jax.tree.map(lambda p: jnp.asarray(float(p.startswith("gates/") or p in trainable),
                                            jnp.float32), leaf_paths(params))
  return jax.tree.map(lambda s: s._replace(mask=mask) if isinstance(s, TrainableState) else s,
                      opt_state, is_leaf=lambda s: isinstance(s, TrainableState))


def make_optimizer(cfg: ml_collections.ConfigDict, params, total_steps: int,
                   trainable: frozenset[str] | None = None,
                   traced_trainable: bool = False) -> optax.GradientTransformation:
  """AdamW groups by path rules over `{"weights", "gates"}`, with warm-up + cosine schedules;
  `trainable` (weight paths) freezes every other weight; `traced_trainable`: the trainable set
  is state (`set_trainable`; every weight until set) instead of part of the program.
  `optim.kind = "sgd"`: the weights'
  groups are SGD with `optim.momentum` and weight decay added to the gradient (PyTorch's
  `SGD(weight_decay=...)`; biases and norms excluded as for AdamW); `optim.schedule = "step"`:
  ×0.1 at each `optim.step_at` fraction instead of the cosine (gates always AdamW)."""
  if cfg.lr <= 0:
    raise UserError(f"optim.lr = {cfg.lr}: must be > 0")
  warmup = int(cfg.warmup_steps)
  paths = leaf_paths(params)
  decay_mask = jax.tree.map(lambda p, x: x.ndim >= 2 and not NO_DECAY.search(p), paths, params)

  kind, shape = cfg.get("kind", "adamw"), cfg.get("schedule", "cosine")
  if kind not in ("adamw", "sgd") or shape not in ("cosine", "step"):
    raise UserError(f"optim.kind = {kind!r}, optim.schedule = {shape!r}: allowed are adamw, sgd "
                    "and cosine, step")

  def adamw(lr, wd):
    lr = schedule(lr, warmup, total_steps, cfg.final_lr_ratio, shape,
                  tuple(cfg.get("step_at", ())))
    if kind == "sgd":
      return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask),
                         optax.sgd(lr, momentum=cfg.get("momentum", 0.9) or None))
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=wd, mask=decay_mask)

  transforms = {"frozen": optax.set_to_zero(), "lr-1": adamw(cfg.lr, cfg.weight_decay),
                "gates": optax.adamw(schedule(cfg.gate_lr or 10 * cfg.lr, warmup, total_steps,
                                              cfg.final_lr_ratio), b1=cfg.b1, b2=cfg.b2,
                                     weight_decay=0.0)}
  for i, (_, mult) in enumerate(cfg.lr_rules):
    transforms[f"lr{i}"] = adamw(cfg.lr * float(mult), cfg.weight_decay)
  labels = group_labels(params, cfg, trainable)
  if jax.tree.leaves(labels) and all(v == "frozen" for v in jax.tree.leaves(labels)):
    raise UserError(f"optim.frozen = {cfg.frozen!r} freezes every parameter of the phase: it "
                    "would train nothing; freeze fewer (e.g. '^weights/head')")
  tx = optax.multi_transform(transforms, labels)
  if traced_trainable:
    tx = trainable_as_state(tx)
  if cfg.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx
