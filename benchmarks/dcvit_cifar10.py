"""CIFAR-10 benchmark: DC-ViT vs PRACTISE at two matched MACs levels, 500-image few-shot set.

Needs the dense CIFAR-10 model of benchmarks/spvit_cifar10.py (DeiT width 96, depth 6, 4 heads,
MLP x4, patch 4, 32x32, pre-trained on a 10,000-image subset) and the unpacked data:
  python benchmarks/spvit_cifar10.py --data /tmp/cifar10          # makes .../dense/model
  python benchmarks/dcvit_cifar10.py --data /tmp/cifar10

Settings: 500 class-balanced training images (unlabeled use only), 100 synthetic images (1000
inversion steps), block trials of --trial-steps feature-mimicking steps (default 100),
--finetune-steps per progressive step (default 200; PRACTISE fine-tunes (n+1) x that);
PRACTISE drops 1 and 2 blocks, DC-ViT is matched to each of those MACs.

Writes --doc (docs/dcvit_cifar10.md): every model's MACs, params, test accuracy and
architecture, with latencies timed again together at the end (batch 64, interleaved). A rerun
reuses the finished run (its workdir resumes) and only retimes.
"""

from __future__ import annotations

import argparse
import os

from spvit_cifar10 import CIFAR_DATA, ROOT, main_job, write_results_doc  # shared with SPViT's

NUM_DROP = (1, 2)  # PRACTISE's dropped units; DC-ViT is matched to each one's MACs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder holding train/ and test/")
  parser.add_argument("--dense", default="/tmp/jaxprune_bench/spvit_cifar10/dense/model")
  parser.add_argument("--out", default="/tmp/jaxprune_bench/dcvit_cifar10")
  parser.add_argument("--trial-steps", type=int, default=100)
  parser.add_argument("--finetune-steps", type=int, default=200)
  parser.add_argument("--adaptor-steps", type=int, default=50)
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "dcvit_cifar10.md"))
  args = parser.parse_args()
  s = main_job("dcvit", args.out, f"--config.model.init_from={args.dense}",
               f"--config.data.source=folder:{args.data}", "--config.data.fewshot=500",
               "--config.synthetic.steps=1000", "--config.synthetic.warmup_steps=100",
               "--config.dcvit.num_targets=0", f"--config.dcvit.trial_steps={args.trial_steps}",
               f"--config.dcvit.finetune_steps={args.finetune_steps}",
               f"--config.practise.num_drop={NUM_DROP}",
               f"--config.practise.adaptor_steps={args.adaptor_steps}", common=CIFAR_DATA)
  rows = [("dense", s["dense"])] + [
      (f"PRACTISE −{len(p['dropped'])} block{'s' * (len(p['dropped']) > 1)} {p['dropped']}", p)
      for p in s["practise"]]
  models = {"dense": args.dense}  # PRACTISE's models by their num_drop (units, not blocks)
  models.update({name: os.path.join(args.out, "practise", f"drop{n}")
                 for n, (name, _) in zip(NUM_DROP, rows[1:])})
  for f in s["family"]:
    rows.append((f"DC-ViT {f['macs'] / s['dense']['macs']:.3f}: blocks {f['blocks']}, "
                 f"MLP {f['mlp_width']}", f))
    models[rows[-1][0]] = f["model_dir"]
  syn = s.get("synthetic", {})
  write_results_doc(
      args.doc, "DC-ViT and PRACTISE on CIFAR-10",
      "The dense DeiT of `benchmarks/spvit_cifar10.py` (width 96, depth 6); 500 class-balanced "
      f"unlabeled training images; 100 synthetic images × 1000 inversion steps; block trials of "
      f"{args.trial_steps} steps, {args.finetune_steps} fine-tune steps per progressive step "
      f"(PRACTISE: (n+1) × that, adaptors {args.adaptor_steps}); full test set; one seed. "
      "Block ranking on the synthetic set (KL after each block's trial, lower recovers "
      "better): " + ", ".join(f"block {b} {kl:.4f}" for b, kl in sorted(
          s["block_ranking"].items(), key=lambda t: t[1])) + "."
      + (f" Synthetic set: loss {syn['first_loss']:.3f} → {syn['best_loss']:.3f}, the dense "
         f"model labels {syn['teacher_agreement']:.0%} of the images as targeted." if syn else ""),
      rows, models)


if __name__ == "__main__":
  main()
