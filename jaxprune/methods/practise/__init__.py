"""PRACTISE (block dropping), DC-ViT's baseline.

Wang et al., "Practical Network Acceleration with Tiny Sets", CVPR 2023 (arXiv:2202.07861);
reference code DoctorKey/Practise, and its ViT/Swin port in Michelia-zhx/dcvit (`src/practise.py`).

Score every block (on Swin: every pair of consecutive blocks of a stage, as DC-ViT compares):
drop it, insert identity-initialised linear adaptors where the reference puts them — after the
fc2 of every block before the dropped one and before the qkv of every block after it
(`insert_one_block_adaptors_for_vit`; `practise.adaptors = "in_place"`: one linear layer in the
dropped block's place instead) — train only the adaptors by feature mimicking, and divide the
recovered feature error by the measured latency saved by dropping the block; the adaptors are
then discarded. Drop the n best-scoring blocks; fine-tune the pruned model end to end with the
same feature-mimicking recipe, for as many steps as DC-ViT spends at the matched MACs
((n + 1) progressive steps).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from flax import nnx

from jaxprune import accounting, registry, validate
from jaxprune.errors import UserError
from jaxprune.methods import Method, Outcome, common, pretrain
from jaxprune.methods.cache import cached_json, cached_model
from jaxprune.methods.mimicking import mimic, trainable_upto
from jaxprune.models import build_model
from jaxprune.models.blocks import LinearAdaptor, WithAdaptor
from jaxprune.models.masked import build_masked, practise_trainable, switched
from jaxprune.methods.dcvit.structure import candidate_units, group_of, stages, units
from jaxprune.surgery import block_states, drop_blocks, transplant
from jaxprune.train.logging import MetricWriter


def drop_units(config, spec) -> list[tuple[int, ...]]:
  """What PRACTISE scores and drops: single blocks, or on Swin pairs of consecutive blocks of
  a stage (`dcvit.group`, shared with DC-ViT so that the two stay comparable); in a family
  without block compression (a CNN), DC-ViT's candidates (never a stage's first block)."""
  if not registry.family(spec.family).block_compression:
    return candidate_units(spec, group_of(config, spec))
  return units(spec, group_of(config, spec))


ADAPTORS = ("around", "in_place")  # practise.adaptors: the reference's placement, or ours before
# What an adaptor phase trains: the adaptors' weights alone.
ADAPTORS_ONLY = nnx.All(nnx.Param, lambda path, value: "practise_adaptor" in map(str, path))


def with_adaptor(dense, unit, placement: str = "around"):
  """`dense` without the blocks of `unit` (an index or a tuple), with identity-initialised
  linear adaptors: `"around"` (the reference's) after the fc2 of every earlier block and before
  the qkv of every later one; `"in_place"` one adaptor where the unit was. At initialisation
  both compute what dropping the unit computes."""
  unit = (unit,) if isinstance(unit, int) else tuple(unit)
  if placement == "in_place":
    model = build_model(dense.spec, make_block=lambda s, b, i, rngs, shape: (
        LinearAdaptor(shape.width, rngs=rngs) if i in unit else None))  # None: the family's
    blocks = [{} if i in unit else s for i, s in enumerate(block_states(dense))]
    return transplant(dense, model, blocks)
  if placement != "around":
    raise UserError(f"practise.adaptors = {placement!r}: allowed are {', '.join(ADAPTORS)}")
  model = drop_blocks(dense, unit)
  if not registry.family(dense.spec.family).block_compression:
    return _around_cnn(dense.spec, model, unit)
  rngs = nnx.Rngs(0)  # the adaptors' initial values do not depend on it (identity, zero bias)
  for i, block in enumerate(model.blocks):  # indices of the pruned model: unit[0] = next block
    if i < unit[0] and block.mlp is not None:
      block.mlp.fc2 = WithAdaptor(block.mlp.fc2, "post", rngs=rngs)
    elif i >= unit[0] and hasattr(block.attn, "qkv"):  # attention (not a conv, not none)
      block.attn.qkv = WithAdaptor(block.attn.qkv, "pre", rngs=rngs)
  return model


def _around_cnn(spec, model, unit):
  """The reference's ResNet placement (`insert_one_block_adaptors_for_resnet`) for `unit` (one
  block, never a stage's first) dropped from `spec`, on the pruned `model`: a 1×1 conv between
  the conv and the BatchNorm of the stage's first shortcut and of every earlier block's last
  conv; before conv1 of every later block of the stage; before conv1 and the shortcut of the
  next stage's first block."""
  stage = next(s for s in stages(spec) if unit[0] in s)
  later = [s for s in stages(spec) if s[0] > stage[0]]
  now = lambda b: b - len([u for u in unit if u < b])  # noqa: E731  index in the pruned model
  blocks = model.blocks
  if blocks[stage[0]].shortcut is not None:
    blocks[stage[0]].shortcut.add_adaptor("post")
  for b in range(stage[0], unit[0]):
    blocks[b].last_conv.add_adaptor("post")
  for b in range(unit[-1] + 1, stage[-1] + 1):
    blocks[now(b)].conv1.add_adaptor("pre")
  if later:
    first = blocks[now(later[0][0])]
    first.conv1.add_adaptor("pre")
    if first.shortcut is not None:
      first.shortcut.add_adaptor("pre")
  return model


def adaptor_placement(config) -> str:
  """`practise.adaptors` ("in_place" for configs saved before the reference's placement)."""
  return config.practise.get("adaptors", "in_place")


def latency_saved(dense, batch: int, unit_list) -> dict[tuple[int, ...], float]:
  """Measured latency saved by dropping each unit alone (ms, batch `batch`).

  Units whose drop leaves the same architecture (any block of a plain ViT, any pair of a Swin
  stage) save the same time by construction, so each distinct pruned ArchSpec is timed once and
  its saving shared: timed separately, timer noise alone reordered identical blocks and made the
  choice vary between runs (a depth-12 CIFAR model's twelve identical blocks, on a shared 2-core
  CPU: savings of 5.2–23.4 ms in one run, −6.8–15.4 ms in the next, against a 13.7 ms share of
  the MACs). All models are timed interleaved (`accounting.compare_latency`), so machine drift
  cancels in the differences. A saving that still measures <= 0 (timer noise on a tiny model)
  is replaced by the dense latency scaled by the unit's share of the MACs, with a warning: a
  score divided by ~0 would otherwise rank that unit as never droppable.
  """
  pruned = {u: drop_blocks(dense, u) for u in unit_list}
  timed = {}  # pruned ArchSpec -> the unit timed for it
  for u in unit_list:
    timed.setdefault(pruned[u].spec, u)
  ms = accounting.compare_latency({"dense": dense, **{u: pruned[u] for u in timed.values()}},
                                  batch=batch)
  dense_macs = accounting.macs(dense.spec)
  saved = {}
  for u in unit_list:
    saved[u] = ms["dense"] - ms[timed[pruned[u].spec]]
    if saved[u] <= 0:
      estimate = ms["dense"] * (1 - accounting.macs(pruned[u].spec) / dense_macs)
      print(f"[practise] warning: dropping block(s) {list(u)} measured {saved[u]:+.3f} ms of "
            f"{ms['dense']:.3f} ms saved (timer noise); using the MACs estimate "
            f"{estimate:.3f} ms", flush=True)
      saved[u] = estimate
  return saved


def block_scores(config, workdir: str, dense, writer: MetricWriter) -> list[dict[str, Any]]:
  """Per unit: recovered feature error, measured latency saved, score (lower = drop first)."""

  def compute():
    unit_list = drop_units(config, dense.spec)
    saved = latency_saved(dense, config.latency_batch, unit_list)
    family = registry.family(dense.spec.family)
    placement = adaptor_placement(config)
    # dcvit.shared_trials, the reference's placement on a transformer: every phase on one
    # dense-shaped model with adaptors everywhere (`models.masked`): one compiled step for all.
    masked = (build_masked(dense, adaptors=True) if placement == "around" and
              family.block_compression and config.dcvit.get("shared_trials", False) else None)
    rows = []
    for u in unit_list:
      name = "-".join(str(b) for b in u)
      phase = f"practise_adaptor{name}" + ("" if placement == "in_place" else f"_{placement}")
      if masked is not None:
        student, trainable = switched(masked, dropped=u), practise_trainable(dense.spec, u)
        phase += "_masked"
      else:  # in_place: the adaptor sits in the unit's slots
        student = with_adaptor(dense, u, placement)
        trainable = (family.trainable_blocks(dense.spec, u) if placement == "in_place"
                     else ADAPTORS_ONLY)
      # BatchNorm frozen (eval mode) while only the adaptors train, as the reference does
      _, info = mimic(config, workdir, phase, student, dense, trainable,
                      config.practise.adaptor_steps, writer, train_mode=False,
                      shared="practise_adaptors" if masked is not None else None)
      rows.append({"block": u[0], "unit": list(u), "recovered_error": info["feature_mse"],
                   "latency_saved_ms": saved[u], "score": info["feature_mse"] / saved[u]})
    return rows

  return cached_json(os.path.join(workdir, "practise", "scores.json"), compute)


def prune(config, workdir: str, dense, n: int, scores, writer) -> tuple[Any, list[int]]:
  """Drops the `n` best-scoring units and fine-tunes; (model, dropped blocks)."""

  def compute():
    best = sorted(scores, key=lambda r: (r["score"], r["block"]))[:n]
    dropped = sorted(b for r in best for b in r.get("unit", [r["block"]]))
    student = drop_blocks(dense, dropped)
    model, _ = mimic(config, workdir, f"practise_drop{n}", student, dense,
                     trainable_upto(student.spec, student.spec.depth - 1),  # all but the head
                     (n + 1) * config.dcvit.finetune_steps, writer,
                     meta={"dropped": dropped})
    return model, {"dropped": dropped}

  model, extra = cached_model(os.path.join(workdir, "practise", f"drop{n}"), compute,
                              common.preprocessing(config))
  return model, extra["dropped"]


def practise_dirs(config, workdir: str) -> dict[str, str]:
  """{name: saved model folder} of the PRACTISE models of `practise.num_drop`."""
  return {f"practise_drop{n}": os.path.join(workdir, "practise", f"drop{n}")
          for n in config.practise.num_drop}


def run_family(config, workdir, dense, writer) -> list[tuple[Any, list[int]]]:
  """PRACTISE models for each `practise.num_drop` (units): (model, dropped blocks) pairs."""
  scores = block_scores(config, workdir, dense, writer)
  return [prune(config, workdir, dense, n, scores, writer) for n in config.practise.num_drop]


def check(config: ml_collections.ConfigDict) -> None:
  """Before any work: each `practise.num_drop` leaves at least one unit (on a CNN, whose
  candidates never include a stage's first block, every candidate may go)."""
  spec = validate.planned_spec(config)
  count = len(drop_units(config, spec))
  if not registry.family(spec.family).block_compression:
    what, most = "candidate blocks (never a stage's first)", count
  else:
    what, most = ("blocks" if count == spec.depth else "units (block pairs)"), count - 1
  too_many = [n for n in config.practise.num_drop if n > most]
  if too_many:
    raise UserError(f"practise.num_drop = {tuple(config.practise.num_drop)}: {too_many[0]} "
                    f"{what} cannot be dropped from a model of {count} {what}; allowed are "
                    f"1..{most}")


def compress(config: ml_collections.ConfigDict, workdir: str, writer: MetricWriter) -> Outcome:
  """PRACTISE alone (`configs/practise.py`): scores, the dropped models, the table."""
  dense = pretrain.dense_model(config, workdir, writer)
  mcfg = common.phase_config(config, "mimic")
  s = common.setup(mcfg)
  evaluate = lambda m: common.evaluate_model(mcfg, m, s)["accuracy"]  # noqa: E731
  pruned = run_family(config, workdir, dense, writer)
  dense_row, *rows = common.describe([(dense, evaluate(dense))] +
                                     [(m, evaluate(m)) for m, _ in pruned], config.latency_batch)
  rows = [{**r, "dropped": dropped} for r, (_, dropped) in zip(rows, pruned)]
  summary = {"dense": dense_row, "practise": rows,
             "scores": block_scores(config, workdir, dense, writer)}
  return Outcome(summary, models=practise_dirs(config, workdir),
                 table=(f"PRACTISE, {config.data.fewshot} training images",
                        [("dense", dense_row)] + [(f"drop {r['dropped']}", r) for r in rows]))


METHOD = Method(
    "practise", compress, check=check,
    summary="PRACTISE: drop the blocks whose adaptors recover best per latency saved",
    paper="Practical Network Acceleration with Tiny Sets (CVPR 2023, arXiv:2202.07861); "
          "github.com/DoctorKey/Practise",
    rules=(("practise.num_drop", validate.each(validate.POSITIVE, 1)),
           ("practise.adaptor_steps", validate.POSITIVE),
           ("practise.adaptors", validate.choice(*ADAPTORS))),
    outputs=frozenset({"practise"}), added_defaults={"practise.adaptors": "in_place",
                                                     "dcvit.shared_trials": False})
