"""Rank quality of DC-ViT's block metric: Kendall τ between the metric and real test accuracy.

For every candidate block (and each MLP width given), the block trial of a finished DC-ViT run is
repeated: compress the block alone, recover it by feature mimicking, then measure
  - KL(original ‖ candidate) on the synthetic metric set (what DC-ViT ranks by),
  - the same KL on the real few-shot training images (the comparison metric set),
  - real test accuracy.
τ is computed between each metric and −accuracy (a good metric: lower KL ↔ higher accuracy).

  python -m jaxprune.main --config=configs/dcvit.py --workdir=runs/dcvit    # first
  python benchmarks/dcvit_rank.py --run runs/dcvit [--widths 96,72]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kendall_tau(a, b) -> float:
  """Kendall's τ-a between two sequences (pairs tied in either count as 0)."""
  n, s = len(a), 0
  for i in range(n):
    for j in range(i + 1, n):
      s += ((a[i] > a[j]) - (a[i] < a[j])) * ((b[i] > b[j]) - (b[i] < b[j]))
  return 2 * s / (n * (n - 1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", required=True, help="workdir of a finished DC-ViT run")
  parser.add_argument("--widths", default="", help="MLP widths (default: the family's widths)")
  args = parser.parse_args()

  import ml_collections
  import numpy as np

  from jaxprune import load
  from jaxprune.methods import common
  from jaxprune.methods.dcvit import kl_metric
  from jaxprune.methods.mimicking import freeze_after, mimic
  from jaxprune.surgery import compress_block
  from jaxprune.train.logging import MetricWriter

  config = ml_collections.ConfigDict(json.load(open(os.path.join(args.run, "config.json"))))
  summary = json.load(open(os.path.join(args.run, "summary.json")))
  widths = ([int(w) for w in args.widths.split(",")] if args.widths
            else sorted({f["mlp_width"] for f in summary["family"]}, reverse=True)[:2])
  dense = load(os.path.join(args.run, "dense"))
  synthetic = np.load(os.path.join(args.run, "synthetic", "synthetic.npz"))["images"]
  mcfg = common.phase_config(config, "mimic")
  s = common.setup(mcfg)
  real, _ = s.train.get(np.arange(len(s.train)))
  real = np.asarray(common.normalise(real.astype(np.float32) / 255.0, config.data.mean,
                                     config.data.std))
  out = os.path.join(args.run, "rank_benchmark")
  writer = MetricWriter(out)
  rows = []
  for hidden in widths:
    for block in range(1, dense.spec.depth - 1):
      student = compress_block(dense, block, hidden, config.seed)
      student, _ = mimic(config, out, f"trial_b{block}_h{hidden}", student, dense,
                         freeze_after(block, dense.spec), config.dcvit.trial_steps, writer)
      rows.append({"block": block, "hidden": hidden,
                   "kl_synthetic": kl_metric(dense, student, synthetic),
                   "kl_real": kl_metric(dense, student, real),
                   "test_accuracy": common.evaluate_model(mcfg, student, s)["accuracy"]})
      print(rows[-1], flush=True)
  print("\n| width | blocks | τ(synthetic KL, −acc) | τ(real few-shot KL, −acc) |")
  print("|---:|---:|---:|---:|")
  for hidden in widths + ["all"]:
    sel = [r for r in rows if hidden == "all" or r["hidden"] == hidden]
    neg_acc = [-r["test_accuracy"] for r in sel]
    print(f"| {hidden} | {len(sel)} | {kendall_tau([r['kl_synthetic'] for r in sel], neg_acc):+.2f}"
          f" | {kendall_tau([r['kl_real'] for r in sel], neg_acc):+.2f} |")
  json.dump(rows, open(os.path.join(out, "rows.json"), "w"), indent=2)


if __name__ == "__main__":
  main()
