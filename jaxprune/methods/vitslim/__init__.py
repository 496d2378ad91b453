"""ViT-Slim: one search of soft masks over head dimensions, MLP units and token positions, a
global threshold that meets a MACs target, slicing, fine-tuning with distillation.

Chavan et al., "Vision Transformer Slimming: Multi-Dimension Searching in Continuous
Optimization Space", CVPR 2022 (arXiv:2201.00814); reference code Arnav0400/ViT-Slim
(`search.py`, `retrain.py`, `models/layers.py`). The search space and the slicing are
`jaxprune.models.slim`; the algorithm box:

  1. Start from a trained ViT/DeiT (`model.init_from`, or the embedded default's dense model).
  2. Search: every block's ζ_attn [heads, head_dim] (scaling q, k, v) and ζ_mlp [hidden]
     (scaling the activations), initialised to 1, train with the weights on
     cross-entropy + `vitslim.attn_weight`·Σ|ζ_attn| + `vitslim.mlp_weight`·Σ|ζ_mlp|
     (`search` section; the masks are `Gate`s: their own AdamW group, `search.optim.gate_lr`).
     With `vitslim.token_budget` < 1, every block also has ζ_tok [patches] (initialised to 3,
     applied as tanh(ζ_tok) to each patch token's normalised inputs) and the loss adds
     `vitslim.token_weight`·Σ|tanh ζ_tok|.
  3. Threshold: tokens first, as the reference: the value that keeps `token_budget` of all
     tanh(ζ_tok) entries, a block keeping what it or any later block keeps. Then the smallest
     t on |ζ| (one threshold over heads and units) whose sliced model is at most
     `vitslim.target_ratio` × the dense MACs (binary search over the masks' values).
  4. Slice (kept masks become 1, as the reference's `compress`; dropped tokens removed), then
     fine-tune with the `finetune` recipe (cross-entropy + distillation from the dense model).

Differences from the reference: it takes separate kept fractions per kind (`--budget_attn`,
`--budget_mlp`, `--budget_patch`), jaxprune the token fraction and one threshold for a MACs
target; one head width per block (the kept dimensions averaged over the surviving heads,
`models/slim.py`); class and distillation tokens are never masked; dropped tokens are removed
from the sliced model (the reference zeroes their inputs and keeps computing them).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxprune import accounting, validate
from jaxprune.atomic import write_json
from jaxprune.errors import UserError
from jaxprune.export import load, save_model
from jaxprune.methods import Method, Outcome, common, pretrain
from jaxprune.methods.phase import train_phase
from jaxprune.models.slim import (build_slim_model, kept_at, l1, slice_model, sliced_spec,
                                  token_threshold, zetas)
from jaxprune.train.logging import MetricWriter


def search_loss(config, num_classes: int):
  """Step 2's loss: label-smoothed cross-entropy + the weighted L1 of the masks."""
  v, train = config.vitslim, config.search.train

  def loss_fn(model, batch, key):
    x, targets = common.preprocess(config, num_classes, batch, key, train=True)
    logits = model(x, train=True, **common.stochastic_depth(train, key), **common.remat(train))
    task = common.soft_cross_entropy(logits, targets, train.label_smoothing)
    la, lm, lt = l1(model)
    loss = task + v.attn_weight * la + v.mlp_weight * lm + v.token_weight * lt
    return loss, {"task_loss": task, "l1_attn": la, "l1_mlp": lm, "l1_tokens": lt}

  return loss_fn


def threshold_for(model, target_macs: float,
                  token_threshold: float | None = None) -> tuple[float, Any]:
  """Step 3: the smallest threshold whose sliced spec (tokens kept at `token_threshold`) has
  at most `target_macs` MACs, and that spec (the MACs fall as the threshold rises, up to the
  rounding of head widths)."""
  values = np.unique(np.abs(np.concatenate([z.ravel() for pair in zetas(model) for z in pair
                                            if z is not None])))
  spec_at = lambda t: sliced_spec(model.spec, kept_at(model, t, token_threshold))  # noqa: E731
  if accounting.macs(spec_at(np.nextafter(values[-1], np.inf))) > target_macs:
    raise UserError(f"vitslim.target_ratio: {target_macs / accounting.macs(model.spec):.3f} x "
                    "dense MACs is below what slicing can reach (one dimension of one head "
                    "per block); raise the target")
  lo, hi = 0, len(values)  # values[hi] (or past the last) meets the target
  while lo < hi:
    mid = (lo + hi) // 2
    if accounting.macs(spec_at(values[mid])) <= target_macs:
      hi = mid
    else:
      lo = mid + 1
  t = float(values[lo]) if lo < len(values) else float(np.nextafter(values[-1], np.inf))
  return t, spec_at(t)


def compress(config: ml_collections.ConfigDict, workdir: str, writer: MetricWriter) -> Outcome:
  """Steps 1-4 of the module docstring."""
  from jaxprune.methods.spvit import run_finetune  # noqa: PLC0415  the shared distillation recipe
  dense = pretrain.dense_model(config, workdir, writer)
  fcfg = common.phase_config(config, "finetune")
  eval_setup = common.setup(fcfg)
  dense_acc = common.evaluate_model(fcfg, dense, eval_setup)["accuracy"]
  compact_dir = os.path.join(workdir, "slim", "compact")
  record_path = os.path.join(workdir, "slim", "selected.json")
  if os.path.exists(record_path):
    compact, record = load(compact_dir), json.load(open(record_path))
  else:
    scfg = common.phase_config(config, "search")
    s = common.setup(scfg)
    tokens = config.vitslim.token_budget < 1
    t = train_phase(scfg, workdir, "slim_search", build_slim_model(dense, tokens=tokens),
                    search_loss(scfg, s.data.num_classes), s, writer,
                    show=("loss", "task_loss", "l1_attn", "l1_mlp")
                    + (("l1_tokens",) if tokens else ()))
    target = config.vitslim.target_ratio * accounting.macs(dense.spec)
    token_t = token_threshold(t.model, config.vitslim.token_budget)
    threshold, spec = threshold_for(t.model, target, token_t)
    compact = slice_model(t.model, threshold, token_t)
    record = {"threshold": threshold, "token_threshold": token_t,
              "tokens": [b.pruned(s).tokens for b, s in zip(spec.blocks, spec.block_shapes())],
              "macs_ratio": accounting.macs(spec)
              / accounting.macs(dense.spec), "search_accuracy": t.metrics.get("accuracy"),
              "zeta_quantiles": {k: [float(q) for q in np.quantile(np.abs(np.concatenate(
                  [p[i].ravel() for p in zetas(t.model) if p[i] is not None])), (0.1, 0.5, 0.9))]
                  for i, k in ((0, "attn"), (1, "mlp"))}}
    save_model(compact_dir, compact, extra={"selected": record},
               preprocessing=common.preprocessing(config))
    if jax.process_index() == 0:
      write_json(record_path, record, indent=2)
  pruned, metrics = run_finetune(config, workdir, compact, dense, writer)
  save_model(os.path.join(workdir, "pruned"), pruned, extra={"test_accuracy": metrics["accuracy"]},
             preprocessing=common.preprocessing(config))
  rows = list(zip(("dense", "pruned (ViT-Slim)"),
                  common.describe([(dense, dense_acc), (pruned, metrics["accuracy"])],
                                  config.latency_batch)))
  summary = {"dense": rows[0][1], "pruned": rows[1][1], "arch": pruned.spec.to_dict(),
             "target_ratio": config.vitslim.target_ratio, "selected": record,
             "macs_ratio": rows[1][1]["macs"] / rows[0][1]["macs"],
             "speedup": rows[0][1]["latency_ms"] / rows[1][1]["latency_ms"]}
  spec = pruned.spec
  shape = ", ".join(f"{b.heads}x{b.head_dim or spec.head_dim}/{b.mlp}/{b.pruned(s).tokens}"
                    for b, s in zip(spec.blocks, spec.block_shapes()))
  return Outcome(summary, models={"pruned": os.path.join(workdir, "pruned")},
                 table=(f"ViT-Slim, target {config.vitslim.target_ratio:.0%} of dense MACs; "
                        f"latency: median eval forward, batch {config.latency_batch}", rows),
                 notes=(f"sliced (heads x head_dim / MLP / tokens per block): {shape}",
                        f"threshold {record['threshold']:.4g}, MACs ratio "
                        f"{summary['macs_ratio']:.3f}, measured speed-up "
                        f"{summary['speedup']:.2f}x"))


def check(config: ml_collections.ConfigDict) -> None:
  """Before any work: every block of the dense model is global `msa`."""
  spec = validate.planned_spec(config)
  bad = [i for i, b in enumerate(spec.blocks)
         if b.attn != "msa" or b.window or b.merge_r or b.keep_tokens]
  if bad:
    raise UserError(f"ViT-Slim searches a dense ViT/DeiT: blocks {bad} of the model are not "
                    "global 'msa' (start from the unpruned model; ToMe stacks on the result)")


FRACTION = validate.FRACTION
METHOD = Method(
    "vitslim", compress, check=check,
    summary="ViT-Slim: soft masks over head dimensions and MLP units, thresholded to a MACs "
            "target",
    paper="Vision Transformer Slimming: Multi-Dimension Searching in Continuous Optimization "
          "Space (CVPR 2022, arXiv:2201.00814); github.com/Arnav0400/ViT-Slim",
    rules=(("vitslim.target_ratio", FRACTION), ("vitslim.attn_weight", validate.number(0)),
           ("vitslim.mlp_weight", validate.number(0)),
           ("vitslim.token_budget", validate.number(0, 1, lo_open=True)),
           ("vitslim.token_weight", validate.number(0))),
    added_defaults={"vitslim.token_budget": 1.0, "vitslim.token_weight": 1e-4},
    phases=("search.train", "finetune.train"),
    outputs=frozenset({"slim", "pruned"}), families=("vit",))
