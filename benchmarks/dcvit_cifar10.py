"""CIFAR-10 benchmark: DC-ViT vs PRACTISE at two matched MACs levels, 500-image few-shot set.

Needs the dense CIFAR-10 model of benchmarks/spvit_cifar10.py (DeiT width 96, depth 6, 4 heads,
MLP x4, patch 4, 32x32, pre-trained on a 10,000-image subset) and the unpacked data:
  python benchmarks/spvit_cifar10.py --data /tmp/cifar10          # makes .../dense/model
  python benchmarks/dcvit_cifar10.py --data /tmp/cifar10

Settings: 500 class-balanced training images (unlabeled use only), 100 synthetic images (1000
inversion steps), block trials of --trial-steps feature-mimicking steps (default 100),
--finetune-steps per progressive step (default 200; PRACTISE fine-tunes (n+1) x that);
PRACTISE drops 1 and 2 blocks, DC-ViT is matched to each of those MACs.
"""

from __future__ import annotations

import argparse

from spvit_cifar10 import CIFAR_DATA, main_job  # the same data flags and runner


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder holding train/ and test/")
  parser.add_argument("--dense", default="/tmp/jaxprune_bench/spvit_cifar10/dense/model")
  parser.add_argument("--out", default="/tmp/jaxprune_bench/dcvit_cifar10")
  parser.add_argument("--trial-steps", type=int, default=100)
  parser.add_argument("--finetune-steps", type=int, default=200)
  parser.add_argument("--adaptor-steps", type=int, default=50)
  args = parser.parse_args()
  s = main_job("dcvit", args.out, f"--config.model.init_from={args.dense}",
               f"--config.data.source=folder:{args.data}", "--config.data.fewshot=500",
               "--config.synthetic.steps=1000", "--config.synthetic.warmup_steps=100",
               "--config.dcvit.num_targets=0", f"--config.dcvit.trial_steps={args.trial_steps}",
               f"--config.dcvit.finetune_steps={args.finetune_steps}",
               "--config.practise.num_drop=(1, 2)",
               f"--config.practise.adaptor_steps={args.adaptor_steps}", common=CIFAR_DATA)
  base = s["dense"]
  print(f"\nwall {s['wall_s'] / 60:.1f} min")
  print("| model | MACs ratio | params | test acc. | latency ms (b64) | speed-up |")
  print("|---|---:|---:|---:|---:|---:|")
  rows = [("dense", base)] + [(f"PRACTISE −{len(p['dropped'])} blocks {p['dropped']}", p)
                              for p in s["practise"]]
  rows += [(f"DC-ViT blocks {f['blocks']}, MLP {f['mlp_width']}", f) for f in s["family"]]
  for name, r in rows:
    print(f"| {name} | {r['macs'] / base['macs']:.3f} | {r['params'] / 1e3:.0f}k | "
          f"{100 * r['accuracy']:.2f}% | {r['latency_ms']:.2f} | "
          f"{base['latency_ms'] / r['latency_ms']:.2f}x |")


if __name__ == "__main__":
  main()
