"""ToMe on CIFAR-10: accuracy vs measured throughput over r, on the dense DeiT of the SPViT
table and on its SPViT-pruned model (token merging stacked on operator pruning).

The dense model and the SPViT run are the ones `benchmarks/spvit_cifar10.py` makes (same
commands, same folders under --spvit-out: either benchmark reuses the other's); then one
training-free `configs/tome.py` sweep per source model, latency timed interleaved over the r
values of that source (batch 64, `common.describe`).

  mkdir -p /tmp/cifar10 && tar xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar10
  python benchmarks/tome_cifar10.py --data /tmp/cifar10 [--r-values 0,1,2,3,4,6,8]

Writes docs/tome_results.md: per source and r, tokens after the last block, MACs, accuracy,
latency (every model of both sweeps timed again together, interleaved), throughput, speed-up ÷
MACs gain; and where SPViT + ToMe stands against dense + ToMe at no more latency.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spvit_cifar10 import CIFAR_DATA, MODELS, PRETRAIN, ROOT, SEARCH, SUBSET, main_job  # noqa: E402


def sources(args) -> dict[str, str]:
  """{name: model folder}: the dense DeiT and, with --spvit-target, its SPViT-pruned model."""
  common = CIFAR_DATA + MODELS["deit"][0] + SUBSET
  data = [f"--config.data.source=folder:{args.data}"]
  dense_dir = os.path.join(args.spvit_out, "dense")
  if not os.path.exists(os.path.join(dense_dir, "summary.json")):
    main_job("pretrain", dense_dir, *data, *PRETRAIN, common=common)
  out = {"dense": os.path.join(dense_dir, "model")}
  if args.spvit_target:
    run = os.path.join(args.spvit_out, f"spvit_{args.spvit_target:g}")
    if not os.path.exists(os.path.join(run, "summary.json")):
      main_job("spvit", run, *data, f"--config.model.init_from={out['dense']}", *SEARCH,
               f"--config.spvit.target_ratio={args.spvit_target:g}", common=common)
    out[f"SPViT {args.spvit_target:g}"] = os.path.join(run, "pruned")
  return out


def sweep(args, name: str, model_dir: str) -> list[dict]:
  """The training-free ToMe sweep of one source model: its rows (r = 0 first)."""
  work = os.path.join(args.out, name.replace(" ", "_"))
  s = main_job("tome", work, f"--config.model.init_from={model_dir}",
               f"--config.data.source=folder:{args.data}",
               f"--config.tome.r_values=({args.r_values},)", "--config.latency_batch=64",
               common=CIFAR_DATA)
  return s["sweep"]


def retime(args, rows: dict[str, list[dict]], sources: dict[str, str]) -> None:
  """Every model of every sweep timed again in one interleaved measurement (batch 64), so the
  rows of different sources compare; each row's latency, speed-up in its sweep and ratio to its
  MACs gain are replaced by these."""
  from jaxprune import load
  from jaxprune.accounting import compare_latency
  models = {}
  for name, sweep_rows in rows.items():
    work = os.path.join(args.out, name.replace(" ", "_"))
    for r in sweep_rows:
      path = sources[name] if r["r"] == 0 else os.path.join(work, "tome", f"r{r['r']}", "model")
      models[name, r["r"]] = load(path)
  ms = compare_latency(models, batch=64, rounds=6, iters=4, warmup=2)
  for name, sweep_rows in rows.items():
    base = ms[name, 0]
    for r in sweep_rows:
      r["latency_ms"] = ms[name, r["r"]]
      r["speedup"] = base / r["latency_ms"]
      r["speedup_per_macs_gain"] = r["speedup"] / (sweep_rows[0]["macs"] / r["macs"])


def report(args, rows: dict[str, list[dict]]) -> list[str]:
  dense0 = rows["dense"][0]
  lines = ["| source | r | tokens out | MACs | MACs ratio | test acc. | latency ms (b64) | "
           "images/s | speed-up | speed-up ÷ MACs gain |", "|---|---:|" + "---:|" * 8]
  for name, sweep_rows in rows.items():
    for r in sweep_rows:
      speed = dense0["latency_ms"] / r["latency_ms"]
      lines.append(
          f"| {name} | {r['r']} | {r['tokens_out']} | {r['macs'] / 1e6:.2f}M | "
          f"{r['macs'] / dense0['macs']:.3f} | {100 * r['accuracy']:.2f} % | "
          f"{r['latency_ms']:.2f} | {64e3 / r['latency_ms']:.0f} | {speed:.2f}× "
          f"(in its sweep {r['speedup']:.2f}×) | {r['speedup_per_macs_gain']:.2f} |")
  notes = []
  stacked = [n for n in rows if n != "dense"]
  for name in stacked:
    for r in rows[name]:
      # dense + ToMe at no more latency than this row (all rows timed together: `retime`)
      rivals = [d for d in rows["dense"] if d["latency_ms"] <= r["latency_ms"]]
      if not rivals:
        continue
      best = max(rivals, key=lambda d: d["accuracy"])
      notes.append(f"- {name} + ToMe r = {r['r']} ({r['latency_ms']:.2f} ms, "
                   f"{100 * r['accuracy']:.2f} %) vs the best dense + ToMe at no more latency "
                   f"(r = {best['r']}, {best['latency_ms']:.2f} ms): "
                   f"{100 * (r['accuracy'] - best['accuracy']):+.2f} pt")
  return lines + [""] + notes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder holding train/ and test/")
  parser.add_argument("--out", default="/tmp/jaxprune_bench/tome_cifar10")
  parser.add_argument("--spvit-out", default="/tmp/jaxprune_bench/spvit_cifar10",
                      help="where benchmarks/spvit_cifar10.py keeps (or finds) its runs")
  parser.add_argument("--spvit-target", type=float, default=0.7, help="0: the dense model only")
  parser.add_argument("--r-values", default="0,1,2,3,4,6,8")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "tome_results.md"))
  args = parser.parse_args()
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "xla_cache"))
  found = sources(args)
  rows = {name: sweep(args, name, path) for name, path in found.items()}
  retime(args, rows, found)
  lines = report(args, rows)
  print("\n".join(lines), flush=True)
  doc = ["# ToMe results (CIFAR-10)", "",
         f"Written by `python benchmarks/tome_cifar10.py --data /tmp/cifar10 --r-values "
         f"{args.r_values} --spvit-target {args.spvit_target:g}` on {time.strftime('%Y-%m-%d')}. "
         "The dense DeiT of [the SPViT table](spvit_results.md) (width 96, depth 6, 4 heads, "
         "patch 4: 64 patches + the class token; 10,000-image subset, 30 epochs) and its SPViT "
         "model; training-free token merging with proportional attention, r tokens merged in "
         "every block that can merge (global attention after the last conv block), full test "
         "set. Latency: median of batch-64 eval forwards in JAX on this machine's CPU, every "
         "model of both sweeps timed interleaved in one measurement; 'speed-up' is against the "
         "dense r = 0 row, 'in its sweep' against its source.",
         ""] + lines
  with open(args.doc, "w") as f:
    f.write("\n".join(doc) + "\n")
  print(f"wrote {args.doc}")


if __name__ == "__main__":
  main()
