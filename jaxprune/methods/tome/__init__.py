"""ToMe: token merging, training-free, on any ViT/DeiT jaxprune builds.

Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (arXiv:2210.09461); reference
code facebookresearch/ToMe. The merging itself (bipartite soft matching, size-weighted averages,
proportional attention) is `jaxprune.models.tome`; here is the algorithm box of the method:

  1. Start from a trained model: `model.init_from` (dense, SPViT-pruned, DC-ViT-compressed,
     PRACTISE-dropped: any ViT/DeiT jaxprune saved) or the embedded default's dense model.
  2. For each r of `tome.r_values`: the same weights in the architecture with `merge_r` set on
     every block that can merge (`with_merging`: global `msa` blocks after the last block that
     needs the patch grid; r per block constant, or ToMe's schedule with `tome.inflection`).
  3. Measure each: test accuracy, MACs (accounting follows the token count), and latency, timed
     interleaved with the unmerged model (`common.describe`); save each merged model.
  4. Optionally (`tome.finetune_r` > 0) fine-tune the model merged at that r with the
     `finetune` recipe (cross-entropy + distillation from the unmerged model), merging on.

No weights change in steps 2–3: a merged model is its source's weights under an ArchSpec whose
blocks carry `merge_r`, so it saves, loads and exports like any other model.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections
from flax import nnx

from jaxprune import accounting, registry, validate
from jaxprune.arch import ArchSpec
from jaxprune.errors import UserError
from jaxprune.export import save_model
from jaxprune.methods import Method, Outcome, common, pretrain
from jaxprune.methods.cache import cached_json
from jaxprune.models import build_model
from jaxprune.train.logging import MetricWriter


def schedule(r: int, layers: int, inflection: float = 0.0) -> list[int]:
  """Tokens to merge per merging layer: r everywhere (inflection 0), or ToMe's schedule that
  trends down (inflection −1: from 2r to 0) or up (+1: from 0 to 2r), in the reference's
  integer rounding."""
  if layers <= 1:
    return [r] * layers
  lo = int(r * (1.0 - inflection))
  hi = 2 * r - lo
  return [int(lo + (hi - lo) / (layers - 1) * i) for i in range(layers)]


def with_merging(spec: ArchSpec, r: int, inflection: float = 0.0) -> ArchSpec:
  """`spec` with ToMe's `merge_r` on every block that can merge: global `msa` blocks after the
  last block that needs the patch grid (a convolution or windows: merged tokens have no grid).
  r = 0 returns `spec` itself."""
  blocks = list(spec.blocks)
  last_grid = max((i for i, b in enumerate(blocks) if b.needs_grid), default=-1)
  where = [i for i, b in enumerate(blocks)
           if i > last_grid and registry.attention(b.attn).merges]
  if r and not where:
    raise UserError("tome: the model has no block that can merge tokens (global 'msa' after "
                    "the last convolution / windowed block)")
  for i, k in zip(where, schedule(r, len(where), inflection)):
    blocks[i] = dataclasses.replace(blocks[i], merge_r=k)
  return spec.replace(blocks=tuple(blocks)) if r else spec


def merged_model(source, spec: ArchSpec):
  """`source`'s weights in the architecture `spec` (the same parameters: merging adds none)."""
  model = build_model(spec)
  nnx.update(model, nnx.state(source))
  return model


def compress(config: ml_collections.ConfigDict, workdir: str, writer: MetricWriter) -> Outcome:
  """Steps 1–4 of the module docstring."""
  source = pretrain.dense_model(config, workdir, writer)
  if source.spec.blocks and any(b.merge_r for b in source.spec.blocks):
    raise UserError("model.init_from: the model already merges tokens; start from an unmerged "
                    "one (tome.r_values sets merging)")
  fcfg = common.phase_config(config, "finetune")
  s = common.setup(fcfg)
  t = config.tome
  models = {}
  for r in sorted(set(t.r_values) | {0}):
    spec = with_merging(source.spec, r, t.inflection)
    model = source if r == 0 else merged_model(source, spec)
    accuracy = cached_json(os.path.join(workdir, "tome", f"r{r}", "accuracy.json"),
                           lambda: common.evaluate_model(fcfg, model, s))["accuracy"]
    models[r] = (model, accuracy)
  rows = common.describe(list(models.values()), config.latency_batch)
  base = rows[0]
  table, out = [], {}
  for (r, (model, _)), row in zip(models.items(), rows):
    row = {**row, "r": r, "tokens_out": model.spec.out_shape.tokens,
           "speedup": base["latency_ms"] / row["latency_ms"],
           "macs_gain": base["macs"] / row["macs"]}
    row["speedup_per_macs_gain"] = row["speedup"] / row["macs_gain"]
    table.append((f"r = {r}" + (" (source)" if r == 0 else ""), row))
    if r:
      path = os.path.join(workdir, "tome", f"r{r}", "model")
      if not os.path.exists(os.path.join(path, "arch.json")):
        save_model(path, model, extra={"test_accuracy": row["accuracy"]},
                   preprocessing=common.preprocessing(config))
      out[f"tome_r{r}"] = path
  # "dense": the unmerged source (as every method's summary names its starting model)
  summary: dict[str, Any] = {"dense": table[0][1], "sweep": [row for _, row in table],
                             "inflection": t.inflection}
  if t.finetune_r:
    summary["finetuned"] = finetune(config, workdir, source, t.finetune_r, base, table)
    out[f"tome_r{t.finetune_r}_finetuned"] = os.path.join(workdir, "tome", "finetuned", "model")
  notes = [f"r = {r['r']}: {r['tokens_out']} tokens out, speed-up ÷ MACs gain "
           f"{r['speedup_per_macs_gain']:.2f}" for name, r in table
           if r["r"] and "fine-tuned" not in name]
  return Outcome(summary, models=out, notes=tuple(notes),
                 table=(f"ToMe: training-free token merging (r per block, inflection "
                        f"{t.inflection:g}); latency at batch {config.latency_batch}", table))


def finetune(config, workdir: str, source, r: int, base: dict, table: list) -> dict[str, Any]:
  """Step 4: the model merged at r, fine-tuned with merging on (SPViT's fine-tune recipe:
  cross-entropy + distillation from the unmerged model); its row joins the table."""
  from jaxprune.methods.spvit import run_finetune  # noqa: PLC0415  the shared distillation recipe
  sub = os.path.join(workdir, "tome", "finetuned")
  student = merged_model(source, with_merging(source.spec, r, config.tome.inflection))
  model, metrics = run_finetune(config, sub, student, source, MetricWriter(sub))
  path = os.path.join(sub, "model")
  if not os.path.exists(os.path.join(path, "arch.json")):
    save_model(path, model, extra={"test_accuracy": metrics["accuracy"]},
               preprocessing=common.preprocessing(config))
  c = accounting.count(model.spec)
  same = next(row for _, row in table if row["r"] == r)
  row = {**same, "accuracy": metrics["accuracy"], "params": c.params, "macs": c.macs}
  table.append((f"r = {r}, fine-tuned", row))
  return row


def check(config: ml_collections.ConfigDict) -> None:
  """Before any work: the model family merges tokens, and `tome.finetune_r` is swept."""
  spec = validate.planned_spec(config)
  with_merging(spec, max(config.tome.r_values, default=0), config.tome.inflection)
  if config.tome.finetune_r and config.tome.finetune_r not in config.tome.r_values:
    raise UserError(f"tome.finetune_r = {config.tome.finetune_r}: must be one of tome.r_values "
                    f"{tuple(config.tome.r_values)} (its training-free row is the baseline)")


METHOD = Method(
    "tome", compress, check=check,
    summary="ToMe: training-free token merging swept over r (accuracy, MACs, latency)",
    paper="Token Merging: Your ViT But Faster (ICLR 2023, arXiv:2210.09461); "
          "github.com/facebookresearch/ToMe",
    rules=(("tome.r_values", validate.each(validate.NONNEG, 1)),
           ("tome.inflection", validate.number(-1.0, 1.0)),
           ("tome.finetune_r", validate.NONNEG)),
    phases=("finetune.train",), outputs=frozenset({"tome"}), families=("vit",))
