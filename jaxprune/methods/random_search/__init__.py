"""Random-search baseline for SPViT: architectures sampled from the same space within the same
MACs tolerance, each fine-tuned with SPViT's fine-tune recipe and budget; the best is reported.

Each sampled architecture is written into a search model's gates (built from the dense weights,
mixing matrix at its initial value) and materialised by the same surgery as SPViT's choice, so
the only difference from SPViT is how the architecture was chosen. The best candidate is picked
on the test split, which flatters the baseline (there is no separate validation split here).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from jaxprune import accounting, validate
from jaxprune.arch import ArchSpec
from jaxprune.errors import UserError
from jaxprune.methods import Method, Outcome, common, pretrain, spvit
from jaxprune.models.spvit import build_search_model
from jaxprune.methods.spvit.surgery import OPS_BY_DEPTH, encode_arch, materialise, searched_block
from jaxprune.train.logging import MetricWriter

MAX_DRAWS = 200_000


def sample_arch(dense: ArchSpec, rng: np.random.Generator, target_ratio: float, tolerance: float,
                ffn_group: int) -> ArchSpec:
  """A uniformly drawn op per layer and FFN width (in groups), rejected unless its MACs are
  within ±tolerance of target_ratio × dense MACs."""
  dense_macs = accounting.macs(dense)
  for _ in range(MAX_DRAWS):
    blocks = []
    for b in dense.blocks:
      op = OPS_BY_DEPTH[rng.integers(4)]
      width = int(rng.integers(b.mlp // ffn_group + 1)) * ffn_group
      blocks.append(searched_block(b, op, width, dense.head_dim_of(b)))
    arch = dense.replace(blocks=tuple(blocks))
    if abs(accounting.macs(arch) / dense_macs - target_ratio) <= tolerance * target_ratio:
      return arch
  raise UserError(f"random search drew no architecture within ±{tolerance:.0%} of "
                  f"{target_ratio} x dense MACs in {MAX_DRAWS} draws; widen spvit.tolerance")


def compress(config: ml_collections.ConfigDict, workdir: str, writer: MetricWriter) -> Outcome:
  """Samples `random.num_archs` architectures, fine-tunes each, reports the best."""
  dense = pretrain.dense_model(config, workdir, writer)
  eval_setup = common.setup(common.phase_config(config, "finetune"))
  dense_acc = common.evaluate_model(common.phase_config(config, "finetune"), dense,
                                    eval_setup)["accuracy"]
  rng = np.random.default_rng(config.random.seed)
  candidates = []
  for i in range(config.random.num_archs):
    arch = sample_arch(dense.spec, rng, config.spvit.target_ratio, config.spvit.tolerance,
                       config.spvit.ffn_group)
    search_model = build_search_model(dense, spvit.search_options(config))
    encode_arch(search_model, arch, rng=rng)
    compact = materialise(search_model, arch)
    sub = os.path.join(workdir, "candidates", str(i))
    print(f"[random] candidate {i}: {spvit.arch_summary(arch)} | MACs ratio "
          f"{accounting.macs(arch) / accounting.macs(dense.spec):.3f}", flush=True)
    model, metrics = spvit.run_finetune(config, sub, compact, dense, MetricWriter(sub))
    candidates.append((metrics["accuracy"], i, model))
  best_acc, best_i, best = max(candidates, key=lambda c: (c[0], -c[1]))
  batch = config.latency_batch
  rows = list(zip(("dense", "random search (best)"),
                  common.describe([(dense, dense_acc), (best, best_acc)], batch)))
  summary = {"dense": rows[0][1], "pruned": rows[1][1], "arch": best.spec.to_dict(),
             "target_ratio": config.spvit.target_ratio, "best_candidate": best_i,
             "candidates": [{"accuracy": a, "arch": m.spec.to_dict(),
                             "macs": accounting.macs(m.spec)} for a, _, m in candidates]}
  return Outcome(summary, table=(f"Random search, {len(candidates)} architectures within "
                                 f"±{config.spvit.tolerance:.0%} of "
                                 f"{config.spvit.target_ratio:.0%} MACs", rows))


METHOD = Method(
    "spvit_random", compress,
    summary="random search in SPViT's space at its MACs target (the search's baseline)",
    paper="the random-search baseline of SPViT (TPAMI 2024, arXiv:2111.11802)",
    rules=(("random.num_archs", validate.POSITIVE), ("random.seed", validate.SEED)),
    phases=("finetune.train",), outputs=frozenset({"candidates"}))
