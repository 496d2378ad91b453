"""CIFAR-10 ResNet study: DC-ViT (whole blocks ranked on the synthetic set) vs PRACTISE at one
and two dropped blocks, over three few-shot sets, and how well the synthetic-set ranking
predicts each block's recovered accuracy (Kendall τ).

Dense model: `resnet_small` (the CIFAR stem, three stages of three basic blocks at 16 / 32 / 64,
ResNet-20's layout with 1x1 conv shortcuts; candidates: the six blocks that do not start a
stage), trained once on a 10,000-image balanced subset for 30 epochs (as benchmarks/
spvit_cifar10.py) and cached under --out. Then one DC-ViT run with `dcvit.structure=drop`,
`dcvit.seeds` = --seeds (500 few-shot images each), PRACTISE (reference adaptors) at 1 and 2
dropped blocks, every drop trial's real test accuracy recorded (`dcvit.trial_accuracy`). Then,
unless --no-narrow, the same run with `dcvit.structure=narrow` (ours: the blocks' inner widths
halved instead of the blocks dropped) at the same matched MACs, starting from hard links to the
drop run's synthetic set and PRACTISE phases (neither depends on the structure).

  mkdir -p /tmp/cifar10 && tar xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar10
  python benchmarks/dcvit_resnet_cifar10.py --data /tmp/cifar10 [--seeds 0,1,2]

Prints: dense; per matched MACs PRACTISE and DC-ViT accuracy mean ± std over the seeds; per seed
Kendall τ between the trials' synthetic-set KL and their recovered test accuracy (τ = −1: the
lowest KL is the most accurate). Reruns reuse every finished phase. The report is also written
to --doc (default docs/dcvit_resnet_cifar10.md), with this command.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys

import numpy as np
from scipy.stats import kendalltau

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spvit_cifar10 import CIFAR_DATA, PRETRAIN, SUBSET, main_job  # noqa: E402

MODEL = ["--config.model.variant=resnet_small", "--config.model.patch_size=1"]


def start_from(src: str, dst: str, **dcvit) -> None:
  """Starts the run `dst` (its config: `src`'s with `dcvit` changed) from hard links to `src`'s
  synthetic set and, per seed, its PRACTISE records and checkpoints."""
  if os.path.exists(os.path.join(dst, "config.json")):
    return
  os.makedirs(dst, exist_ok=True)
  for part in ["synthetic"] + [os.path.relpath(p, src) for p in glob.glob(os.path.join(
      src, "seeds", "*", "practise")) + glob.glob(os.path.join(
          src, "seeds", "*", "checkpoints", "practise_*"))]:
    if os.path.exists(os.path.join(src, part)):
      shutil.copytree(os.path.join(src, part), os.path.join(dst, part), copy_function=os.link)
  config = json.load(open(os.path.join(src, "config.json")))
  config["dcvit"].update(dcvit)
  json.dump(config, open(os.path.join(dst, "config.json"), "w"), indent=2)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder holding train/ and test/")
  parser.add_argument("--out", default="/tmp/jaxprune_bench/dcvit_resnet_cifar10")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--trial-steps", type=int, default=100)
  parser.add_argument("--finetune-steps", type=int, default=200)
  parser.add_argument("--adaptor-steps", type=int, default=50)
  parser.add_argument("--no-narrow", action="store_true",
                      help="skip the dcvit.structure=narrow run")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "dcvit_resnet_cifar10.md"),
                      help="write the report here too ('' = print only)")
  args = parser.parse_args()
  data = [f"--config.data.source=folder:{args.data}"]
  done = os.path.join(args.out, "dense", "summary.json")
  dense = (json.load(open(done)) if os.path.exists(done) else
           main_job("resnet_pretrain", os.path.join(args.out, "dense"), *data, *PRETRAIN,
                    common=CIFAR_DATA + MODEL + SUBSET))
  init = f"--config.model.init_from={os.path.join(args.out, 'dense', 'model')}"
  run = [*data, init, "--config.data.fewshot=500", "--config.synthetic.steps=1000",
         "--config.synthetic.warmup_steps=100", "--config.dcvit.num_targets=0",
         f"--config.dcvit.trial_steps={args.trial_steps}",
         f"--config.dcvit.finetune_steps={args.finetune_steps}",
         f"--config.dcvit.seeds=({args.seeds},)", "--config.dcvit.trial_accuracy=True",
         "--config.practise.num_drop=(1, 2)",
         f"--config.practise.adaptor_steps={args.adaptor_steps}"]
  s = main_job("dcvit_resnet", os.path.join(args.out, "dcvit"), *run, common=CIFAR_DATA + MODEL)
  narrow = None
  if not args.no_narrow:
    dst = os.path.join(args.out, "dcvit_narrow")
    start_from(os.path.join(args.out, "dcvit"), dst, structure="narrow")
    narrow = main_job("dcvit_resnet", dst, *run, "--config.dcvit.structure=narrow",
                      common=CIFAR_DATA + MODEL)
  base = s["dense"]
  out = ["# DC-ViT vs PRACTISE on a CIFAR-10 ResNet (written by the benchmark)", "",
         f"`python benchmarks/dcvit_resnet_cifar10.py --data /tmp/cifar10 --seeds {args.seeds} "
         f"--trial-steps {args.trial_steps} --finetune-steps {args.finetune_steps} "
         f"--adaptor-steps {args.adaptor_steps}` (see its docstring for the setting; latencies "
         "timed interleaved on the shared 2-core CPU, ratios only).", "",
         f"Dense `resnet_small`: {100 * dense['dense']['accuracy']:.2f} % "
         f"({base['params'] / 1e3:.0f}k params, {base['macs'] / 1e6:.1f}M MACs); DC-ViT + "
         f"PRACTISE over the seeds: {s['wall_s'] / 60:.1f} min wall"
         + (f"; the narrow run {narrow['wall_s'] / 60:.1f} min" if narrow else "") + ".", "",
         "| model | MACs ratio | accuracy (mean ± std over seeds) | speed-up |",
         "|---|---:|---:|---:|"]
  rows = [(f"PRACTISE −{i + 1}", p) for i, p in enumerate(s["practise"])]
  rows += [(f"DC-ViT {f['macs'] / base['macs']:.3f}", f) for f in s["family"]]
  if narrow:
    rows += [(f"DC-ViT narrow (ours) {f['macs'] / base['macs']:.3f}", f)
             for f in narrow["family"]]
  for name, r in rows:
    out.append(f"| {name} | {r['macs'] / base['macs']:.3f} | {100 * r['accuracy']:.2f} ± "
               f"{100 * r['accuracy_std']:.2f} % | {base['latency_ms'] / r['latency_ms']:.2f}x |")
  out.append("")
  for seed in args.seeds.split(","):
    trials = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(
        args.out, "dcvit", "seeds", seed, "trials", "drop*.json")))]
    kl = [t["kl"] for t in trials if "test_accuracy" in t]
    acc = [t["test_accuracy"] for t in trials if "test_accuracy" in t]
    tau = kendalltau(kl, acc).statistic if len(kl) > 1 else float("nan")
    best = trials[int(np.argmin([t["kl"] for t in trials]))] if trials else {}
    out.append(f"- seed {seed}: {len(kl)} drop trials, Kendall τ(KL, recovered accuracy) = "
               f"{tau:+.2f}; lowest KL: block {best.get('block')} "
               f"({100 * best.get('test_accuracy', 0):.2f} %)")
  report = "\n".join(out) + "\n"
  print("\n" + report)
  if args.doc:
    with open(args.doc, "w") as f:
      f.write(report)


if __name__ == "__main__":
  main()
