"""PRACTISE (block dropping), DC-ViT's baseline.

Score every block: replace it by an identity-initialised linear adaptor, train the adaptor alone
by feature mimicking, and divide the recovered feature error by the measured latency saved by
dropping the block; drop the n best-scoring blocks; fine-tune the pruned model end to end with
the same feature-mimicking recipe, for as many steps as DC-ViT spends at the matched MACs
((n + 1) progressive steps).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from jaxprune import accounting
from jaxprune.atomic import write_json
from jaxprune.errors import UserError
from jaxprune.export import load, save_model
from jaxprune.methods import common
from jaxprune.methods.mimicking import mimic
from jaxprune.models import ViT, build_model
from jaxprune.models.blocks import Block, LinearAdaptor
from jaxprune.surgery import block_states, drop_blocks, transplant
from jaxprune.train.logging import MetricWriter
from jaxprune.validate import planned_spec


def with_adaptor(dense, index: int):
  """`dense` with block `index` replaced by an identity linear adaptor."""
  model = build_model(dense.spec, make_block=lambda s, b, i, rngs, shape: (
      LinearAdaptor(shape.width, rngs=rngs) if i == index
      else Block(s, b, rngs=rngs, shape=shape)))
  blocks = block_states(dense)
  blocks[index] = {}
  return transplant(dense, model, blocks)


def latency_saved(dense: ViT, batch: int) -> dict[int, float]:
  """Measured latency saved by dropping each block alone (ms, batch `batch`).

  All models are timed interleaved (`accounting.compare_latency`), so machine drift cancels in
  the differences. A saving that still measures <= 0 (timer noise on a tiny model) is replaced
  by the dense latency scaled by the block's share of the MACs, with a warning: a score divided
  by ~0 would otherwise rank that block as never droppable.
  """
  models = {"dense": dense, **{i: drop_blocks(dense, [i]) for i in range(dense.spec.depth)}}
  ms = accounting.compare_latency(models, batch=batch)
  dense_macs = accounting.macs(dense.spec)
  saved = {}
  for i in range(dense.spec.depth):
    saved[i] = ms["dense"] - ms[i]
    if saved[i] <= 0:
      estimate = ms["dense"] * (1 - accounting.macs(models[i].spec) / dense_macs)
      print(f"[practise] warning: dropping block {i} measured {saved[i]:+.3f} ms of "
            f"{ms['dense']:.3f} ms saved (timer noise); using the MACs estimate "
            f"{estimate:.3f} ms", flush=True)
      saved[i] = estimate
  return saved


def block_scores(config, workdir: str, dense, writer: MetricWriter) -> list[dict[str, Any]]:
  """Per block: recovered feature error, measured latency saved, score (lower = drop first)."""
  path = os.path.join(workdir, "practise", "scores.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  saved = latency_saved(dense, config.latency_batch)
  rows = []
  for i in range(dense.spec.depth):
    _, info = mimic(config, workdir, f"practise_adaptor{i}", with_adaptor(dense, i), dense,
                    rf"^weights/(?!blocks/{i}/)", config.practise.adaptor_steps, writer)
    rows.append({"block": i, "recovered_error": info["feature_mse"],
                 "latency_saved_ms": saved[i], "score": info["feature_mse"] / saved[i]})
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, rows, indent=2)
  return rows


def prune(config, workdir: str, dense, n: int, scores, writer) -> tuple[Any, list[int]]:
  out = os.path.join(workdir, "practise", f"drop{n}")
  if os.path.exists(os.path.join(out, "arch.json")):
    with open(os.path.join(out, "arch.json")) as f:
      return load(out), json.load(f)["dropped"]
  dropped = sorted(r["block"] for r in sorted(scores, key=lambda r: (r["score"], r["block"]))[:n])
  model = drop_blocks(dense, dropped)
  model, _ = mimic(config, workdir, f"practise_drop{n}", model, dense, r"^weights/head",
                   (n + 1) * config.dcvit.finetune_steps, writer)
  save_model(out, model, extra={"dropped": dropped})
  return model, dropped


def run_family(config, workdir, dense, writer) -> list[tuple[Any, list[int]]]:
  """PRACTISE models for each `practise.num_drop`: (model, dropped blocks) pairs."""
  scores = block_scores(config, workdir, dense, writer)
  return [prune(config, workdir, dense, n, scores, writer) for n in config.practise.num_drop]


def check(config: ml_collections.ConfigDict) -> None:
  """Before any work: each `practise.num_drop` leaves at least one block."""
  depth = planned_spec(config).depth
  too_many = [n for n in config.practise.num_drop if n >= depth]
  if too_many:
    raise UserError(f"practise.num_drop = {tuple(config.practise.num_drop)}: {too_many[0]} "
                    f"blocks cannot be dropped from a depth-{depth} model; allowed are 1.."
                    f"{depth - 1}")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """PRACTISE alone (`configs/practise.py`)."""
  writer = MetricWriter(workdir)
  dense = common.dense_model(config, workdir, writer)
  mcfg = common.phase_config(config, "mimic")
  s = common.setup(mcfg)
  evaluate = lambda m: common.evaluate_model(mcfg, m, s)["accuracy"]  # noqa: E731
  pruned = run_family(config, workdir, dense, writer)
  dense_row, *rows = common.describe([(dense, evaluate(dense))] +
                                     [(m, evaluate(m)) for m, _ in pruned], config.latency_batch)
  rows = [{**r, "dropped": dropped} for r, (_, dropped) in zip(rows, pruned)]
  summary = {"dense": dense_row, "practise": rows,
             "scores": block_scores(config, workdir, dense, writer)}
  common.write_summary(workdir, summary)
  common.print_table(f"PRACTISE, {config.data.fewshot} training images",
                     [("dense", dense_row)] + [(f"drop {r['dropped']}", r) for r in rows])
  writer.close()
  return summary
