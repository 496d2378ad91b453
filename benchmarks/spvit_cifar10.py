"""CIFAR-10 benchmark: dense vs SPViT at two MACs targets vs random search at the same targets.

Unpack the data outside the repository first:
  mkdir -p /tmp/cifar10 && tar xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar10
  python benchmarks/spvit_cifar10.py --data /tmp/cifar10/<folder with train/ and test/>

Scale (chosen to run in well under an hour on the 2-core CPU): a 10,000-image class-balanced
training subset (all 10,000 test images), 32x32, DeiT width 96, depth 6, 4 heads, MLP x4, patch 4
(65 tokens); dense pre-training 30 epochs; SPViT search ≤ 4 epochs, fine-tune 6 epochs with hard
distillation from the dense model; per target also the multi-path ablation
(`spvit.weight_sharing=False`, same recipe) and random search: `--random N` architectures (5 by
default) drawn within ±2 % of the MACs ratio SPViT reached, same fine-tune, every one reported.
Every run goes through `python -m jaxprune.main`; the dense model is trained once and reused,
and a rerun of the script reuses every finished run (each workdir resumes).

`--model swin` runs the same protocol on a small Swin (see MODELS; SPViT from
configs/spvit_swin.py) instead of the DeiT.

Writes --doc (docs/spvit_cifar10.md, or docs/spvit_cifar10_swin.md with --model swin): every
model's MACs, params, test accuracy and selected architecture, with latencies timed again
together at the end (batch 64, interleaved), so speed-ups compare models of one measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from page import page

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CIFAR_DATA = [  # image size, normalisation and augmentation (shared with dcvit_cifar10.py)
    "--config.model.image_size=32", "--config.data.mean=(0.4914, 0.4822, 0.4465)",
    "--config.data.std=(0.247, 0.243, 0.261)", "--config.data.augment.shift=4",
    "--config.data.augment.flip=True",
]
SUBSET = ["--config.data.fewshot=10000", "--config.data.fewshot_balanced=True"]
MODELS = {  # --model: the dense model's overrides, and the SPViT config that searches it
    "deit": (["--config.model.patch_size=4", "--config.model.width=96",
              "--config.model.depth=6", "--config.model.num_heads=4",
              "--config.model.mlp_ratio=4.0"], "spvit"),
    # Swin: patch 4 (an 8x8 grid, as the DeiT's 64 patches), width 64, two stages of two blocks
    # (2 / 4 heads of 32), 4x4 windows (four in stage 1, shifted in its second block; one on the
    # 4x4 grid after patch merging), MLP x4.
    "swin": (["--config.model.variant=swin_test", "--config.model.patch_size=4",
              "--config.model.width=64", "--config.model.window=4", "--config.model.num_heads=0",
              "--config.model.mlp_ratio=4.0"], "spvit_swin"),
}
COMMON = CIFAR_DATA + MODELS["deit"][0] + SUBSET
PRETRAIN = ["--config.train.epochs=30", "--config.train.eval_every_epochs=10",
            "--config.train.log_every=156", "--config.optim.warmup_steps=468"]
SEARCH = ["--config.search.train.epochs=4", "--config.spvit.eval_every=78",
          "--config.search.train.log_every=78", "--config.finetune.train.epochs=6",
          "--config.finetune.train.eval_every_epochs=3", "--config.finetune.train.log_every=156"]


def main_job(config: str, workdir: str, *overrides: str, common=COMMON) -> dict:
  """Runs `python -m jaxprune.main` with `common` + `overrides`; its summary.json + wall_s."""
  cmd = [sys.executable, "-m", "jaxprune.main", f"--config=configs/{config}.py",
         f"--workdir={workdir}", *common, *overrides]
  print("$", " ".join(cmd[1:]), flush=True)
  t0 = time.time()
  subprocess.run(cmd, cwd=ROOT, check=True)
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  summary["wall_s"] = time.time() - t0
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder holding train/ and test/")
  parser.add_argument("--out", default="/tmp/jaxprune_bench/spvit_cifar10")
  parser.add_argument("--targets", default="0.7,0.5")
  parser.add_argument("--random", type=int, default=5,
                      help="random architectures per target (0: no random search)")
  parser.add_argument("--model", choices=sorted(MODELS), default="deit")
  parser.add_argument("--no-multipath", action="store_true", help="skip the multi-path ablation")
  parser.add_argument("--doc", default="", help="default: docs/spvit_cifar10[_swin].md")
  args = parser.parse_args()
  doc = args.doc or os.path.join(
      ROOT, "docs", "spvit_cifar10" + ("_swin" if args.model == "swin" else "") + ".md")
  model, spvit = MODELS[args.model]
  common = CIFAR_DATA + model + SUBSET
  data = [f"--config.data.source=folder:{args.data}"]
  pretrain = "swin_pretrain" if args.model == "swin" else "pretrain"
  dense = main_job(pretrain, os.path.join(args.out, "dense"), *data, *PRETRAIN, common=common)
  init = [f"--config.model.init_from={os.path.join(args.out, 'dense', 'model')}"]
  rows = [("dense", None, dense["dense"], dense["wall_s"])]
  models = {"dense": os.path.join(args.out, "dense", "model")}
  notes = []  # every random architecture, below the table
  for target in (float(t) for t in args.targets.split(",")):
    t = [f"--config.spvit.target_ratio={target}"]
    sp = main_job(spvit, os.path.join(args.out, f"spvit_{target}"), *data, *init, *SEARCH, *t,
                  common=common)
    rows.append((f"SPViT {target}", sp["selected"]["macs_ratio"], sp["pruned"], sp["wall_s"]))
    models[rows[-1][0]] = os.path.join(args.out, f"spvit_{target}", "pruned")
    if not args.no_multipath:
      mp = main_job(spvit, os.path.join(args.out, f"multipath_{target}"), *data, *init, *SEARCH,
                    *t, "--config.spvit.weight_sharing=False", common=common)
      rows.append((f"multi-path {target}", mp["selected"]["macs_ratio"], mp["pruned"],
                   mp["wall_s"]))
      models[rows[-1][0]] = os.path.join(args.out, f"multipath_{target}", "pruned")
    reached = sp["pruned"]["macs"] / dense["dense"]["macs"]
    if args.random:  # --random 0: SPViT (and multi-path) only
      rs = main_job("spvit_random", os.path.join(args.out, f"random_{target}"), *data, *init,
                    *SEARCH, f"--config.spvit.target_ratio={reached:.4f}",
                    "--config.spvit.tolerance=0.02", f"--config.random.num_archs={args.random}",
                    common=common)
      rows.append((f"random best of {args.random} {target}", None, rs["pruned"], rs["wall_s"]))
      models[rows[-1][0]] = rs["arch"]  # not saved: its architecture times the same
      accs = [100 * c["accuracy"] for c in rs["candidates"]]
      notes.append(f"Random search at {target}, every architecture (MACs ratio, test acc.): " +
                   ", ".join(f"{c['macs'] / dense['dense']['macs']:.3f} {a:.2f} %"
                             for c, a in zip(rs["candidates"], accs)) +
                   f"; mean {sum(accs) / len(accs):.2f} %.")
      print(notes[-1], flush=True)
    search_s = [json.loads(l) for l in open(os.path.join(args.out, f"spvit_{target}",
                                                        "metrics.jsonl"))]
    print(f"SPViT {target}: selected {sp['selected']}; search rows {len(search_s)}", flush=True)
  write_doc(args, doc, rows, models, notes)


def write_doc(args, doc: str, rows, models: dict, notes=()) -> None:
  """The SPViT table (`rows`: name, target, summary row, wall) written to `doc`."""
  what = ("A small Swin" if args.model == "swin" else
          "DeiT width 96, depth 6, 4 heads, MLP ×4, patch 4")
  write_results_doc(
      doc, "SPViT on CIFAR-10" + (" (Swin)" if args.model == "swin" else ""),
      f"{what}; 10,000-image class-balanced CIFAR-10 subset, 30 dense epochs; SPViT search ≤ 4 "
      "epochs + 6 fine-tune epochs with distillation from the dense model; full test set; "
      "one seed.", [(name, r) for name, _, r, _ in rows], models, notes)


def write_results_doc(doc: str, title: str, setup: str, rows, models: dict,
                      notes=()) -> None:
  """Every model (a saved folder, or an ArchSpec dict) timed again together (interleaved, batch
  64), then the table of `rows` ((name, summary row with macs, params, accuracy), the dense
  model first) and `notes`, printed and written to `doc` with the command that made it."""
  from jaxprune import ArchSpec, build_model, load
  from jaxprune.accounting import compare_latency
  loaded = {name: load(m) if isinstance(m, str) else build_model(ArchSpec.from_dict(m))
            for name, m in models.items()}
  ms = compare_latency(loaded, batch=64, rounds=16, iters=4, warmup=2)
  (dense, base) = rows[0]
  lines = ["| model | architecture (attn/MLP per block) | MACs | MACs ratio | params | test acc. | "
           "latency ms (b64) | speed-up |", "|---|---|---:|---:|---:|---:|---:|---:|"]
  for name, r in rows:
    arch = ("—" if name == dense else
            "`" + " ".join(f"{b.attn}/{b.mlp}" for b in loaded[name].spec.blocks) + "`")
    lines.append(f"| {name} | {arch} | {r['macs'] / 1e6:.1f}M | {r['macs'] / base['macs']:.3f} | "
                 f"{r['params'] / 1e3:.0f}k | {100 * r['accuracy']:.2f} % | {ms[name]:.2f} | "
                 f"{ms[dense] / ms[name]:.2f}× |")
  with page(doc, title, f"{setup} Latency: median batch-64 eval forward in JAX on this "
            "machine's CPU, every model timed together, interleaved."):
    print("\n".join(lines + [""] + list(notes)), flush=True)


if __name__ == "__main__":
  main()
