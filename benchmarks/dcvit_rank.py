"""Rank quality of DC-ViT's block metric: Kendall τ between the metric and real test accuracy.

For every candidate block (and each MLP width given), the block trial of a finished DC-ViT run is
repeated: compress the block alone, recover it by feature mimicking, then measure
  - KL(original ‖ candidate) on the run's synthetic metric set (what DC-ViT ranks by),
  - the same KL on variants of that set: inverted with the TV norm per image instead of over
    groups of 50 (`synthetic.tv_group` 1 vs the reference's 50, whichever the run did not use),
    and each set saved as JPEG and read back as the reference does (`synth.jpeg_roundtrip`),
  - the same KL on the real few-shot training images (the comparison metric set),
  - real test accuracy.
τ is computed between each metric and −accuracy (a good metric: lower KL ↔ higher accuracy);
a random ranking's τ is shown as the mean ± std over 2000 random permutations.
A trial the run already made (its checkpoint under the run's workdir, or its first seed's) is
restored, not retrained — the same student, checked by its KL on the run's set matching the
trial's record — and its recorded test accuracy (`dcvit.trial_accuracy`) is reused; only the
missing (block, width) trials train, under `rank_benchmark/`.

  python -m jaxprune.main --config=configs/dcvit.py --workdir=runs/dcvit    # first
  python benchmarks/dcvit_rank.py --run runs/dcvit [--widths 96,72] [--drops] [--temperatures 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.page import ROOT, page  # noqa: E402


def kendall_tau(a, b, groups=None) -> float:
  """Kendall's τ-a between two sequences (pairs tied in either count as 0); with `groups`,
  over the pairs within a group only (pooled)."""
  n, s, pairs = len(a), 0, 0
  for i in range(n):
    for j in range(i + 1, n):
      if groups is not None and groups[i] != groups[j]:
        continue
      s += (int(a[i] > a[j]) - int(a[i] < a[j])) * (int(b[i] > b[j]) - int(b[i] < b[j]))
      pairs += 1
  return s / pairs


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", required=True, help="workdir of a finished DC-ViT run")
  parser.add_argument("--widths", default="", help="MLP widths (default: the family's widths)")
  parser.add_argument("--no-other-tv", action="store_true",
                      help="skip the set inverted with the other TV grouping (an inversion as "
                           "long as the run's: half an hour on the depth-12 CIFAR model)")
  parser.add_argument("--temperatures", default="1",
                      help="KL softmax temperatures (dcvit.metric_temperature), e.g. 1,2,4: each "
                           "T other than 1 adds columns for the run's synthetic set and the real "
                           "few-shot images")
  parser.add_argument("--drops", action="store_true",
                      help="also the drop trials of a structure-search run (every block)")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "dcvit_rank.md"),
                      help="the page the τ table is written to ('' : print only)")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np

  import dataclasses

  from jaxprune import load, synth
  from jaxprune.methods import common
  from jaxprune.methods.dcvit import kl_metric
  from jaxprune.methods.mimicking import mimic, trainable_upto
  from jaxprune.methods.dcvit.structure import compress_block
  from jaxprune.surgery import drop_blocks
  from jaxprune.train.logging import MetricWriter

  config = ml_collections.ConfigDict(json.load(open(os.path.join(args.run, "config.json"))))
  if config.dcvit.get("seeds"):  # a seed sweep: its first few-shot set
    config.data.fewshot_seed = int(config.dcvit.seeds[0])
  if args.widths:  # (a run still making its trials has no summary yet)
    widths = [int(w) for w in args.widths.split(",")]
  else:
    summary = json.load(open(os.path.join(args.run, "summary.json")))
    widths = sorted({f["mlp_width"] for f in summary["family"]}, reverse=True)[:2]
  dense = load(os.path.join(args.run, "dense") if os.path.isdir(os.path.join(args.run, "dense"))
               else config.model.init_from)
  out = os.path.join(args.run, "rank_benchmark")
  os.makedirs(out, exist_ok=True)
  made_tv = config.synthetic.get("tv_group", 1)
  other = 1 if made_tv != 1 else 50
  c = config.synthetic
  sets = {f"synthetic, TV over {made_tv}": np.load(os.path.join(args.run, "synthetic",
                                                             "synthetic.npz"))["images"]}
  other_path = os.path.join(out, f"synthetic_tv{other}.npz")
  if not args.no_other_tv and not os.path.exists(other_path):
    from jaxprune.train.mesh import make_mesh
    inv = synth.InversionConfig(steps=c.steps, lr=c.lr, warmup_steps=c.warmup_steps,
                                tv_weight=c.tv_weight, tv_exponent=c.tv_exponent,
                                l2_weight=c.l2_weight, jitter=c.jitter)
    res = synth.invert(dense, synth.labels_for(c.num_images, dense.spec.num_classes,
                                                 seed=config.seed),
                       dataclasses.replace(inv, tv_group=other), make_mesh(), seed=config.seed,
                       mean=config.data.mean, std=config.data.std)
    np.savez(other_path, images=res["images"])
  if not args.no_other_tv:
    sets[f"synthetic, TV over {other}"] = np.load(other_path)["images"]
  for name in list(sets):
    sets[name + ", JPEG q75"] = synth.jpeg_roundtrip(sets[name], config.data.mean,
                                                     config.data.std, 75,
                                                     config.data.get("eval_crop", 0.0))[0]
  mcfg = common.phase_config(config, "mimic")
  s = common.setup(mcfg)
  sets["real few-shot images"] = common.split_images(mcfg, s.train)
  for name, x in sets.items():  # how sure the dense model is: near 0, the KL separates little
    p = np.asarray(jax.nn.softmax(dense(jnp.asarray(x))))
    print(f"dense model's mean prediction entropy on {name}: "
          f"{float(np.mean(-np.sum(p * np.log(np.maximum(p, 1e-30)), -1))):.3f} nats")
  temperatures = [float(t) for t in args.temperatures.split(",") if float(t) != 1]
  writer = MetricWriter(out)
  run_dir = (os.path.join(args.run, "seeds", str(config.data.fewshot_seed))
             if config.dcvit.get("seeds") else args.run)  # where the run's trials are
  # (phase, student, its trainable set, row fields): compress trials per width, then the
  # structure search's drop trials where the run made them (every block, the last included).
  cases = [(f"trial_b{b}_h{h}", lambda b=b, h=h: compress_block(dense, b, h, config.seed),
            lambda b=b: trainable_upto(dense.spec, b + 1), {"block": b, "hidden": h})
           for h in widths for b in range(1, dense.spec.depth - 1)]
  if args.drops:
    cases += [(f"trial_drop{b}", lambda b=b: drop_blocks(dense, (b,)),
               lambda b=b: trainable_upto(dense.spec.drop_blocks({b}), b),
               {"block": b, "hidden": "drop"}) for b in range(dense.spec.depth)]
  rows = []
  for phase, make, frozen, fields in cases:
    made = os.path.isdir(os.path.join(run_dir, "checkpoints", phase))
    student, _ = mimic(config, run_dir if made else out, phase, make(), dense, frozen(),
                       config.dcvit.trial_steps, writer)
    record_path = os.path.join(run_dir, "trials", phase[len("trial_"):] + ".json")
    record = json.load(open(record_path)) if made and os.path.exists(record_path) else {}
    kl = {name: kl_metric(dense, student, x) for name, x in sets.items()}
    kl.update({f"{name}, T={t:g}": kl_metric(dense, student, sets[name], temperature=t)
               for t in temperatures
               for name in (f"synthetic, TV over {made_tv}", "real few-shot images")})
    if "kl" in record and not np.isclose(record["kl"], kl[f"synthetic, TV over {made_tv}"],
                                         rtol=1e-3, atol=1e-6):
      raise SystemExit(f"{phase}: restored student's KL {kl} differs from the run's record "
                       f"{record['kl']}: not the trial's model")
    acc = record.get("test_accuracy")
    rows.append({**fields, "kl": kl, "reused": made,
                 "test_accuracy": acc if acc is not None else
                 common.evaluate_model(mcfg, student, s)["accuracy"]})
    print(rows[-1], flush=True)
  json.dump(rows, open(os.path.join(out, "rows.json"), "w"), indent=2)
  with page(args.doc, "DC-ViT: how well the block metric ranks the blocks",
            "Kendall τ between each metric set's KL and −(test accuracy) over the block "
            "trials of the run (each block compressed alone and recovered by feature "
            "mimicking): higher is a better ranking; a random ranking's τ as mean ± std over "
            "2000 permutations."):
    tau_table(rows, widths, args.drops)


def tau_table(rows, widths, drops: bool) -> None:
  import numpy as np
  rng = np.random.default_rng(0)
  names = list(rows[0]["kl"])
  print("| width | blocks | " + " | ".join(f"τ({n} KL, −acc)" for n in names) +
        " | τ(random ranking) |")
  print("|---:|---:|" + "---:|" * (len(names) + 1))
  # "all" pools every pair (the width separates most of them); "within widths" pools only the
  # pairs of one width: how well a metric orders blocks, which is DC-ViT's use of it.
  kinds = widths + (["drop"] if drops else []) + ["all", "within widths"]
  for hidden in kinds:  # "all" and "within widths" pool compress and drop trials alike
    sel = [r for r in rows if hidden in ("all", "within widths") or r["hidden"] == hidden]
    groups = [r["hidden"] for r in sel] if hidden == "within widths" else None
    neg_acc = [-r["test_accuracy"] for r in sel]
    rand = [kendall_tau(list(rng.permutation(len(sel))), neg_acc, groups) for _ in range(2000)]
    print(f"| {hidden} | {len(sel)} | " +
          " | ".join(f"{kendall_tau([r['kl'][n] for r in sel], neg_acc, groups):+.2f}"
                     for n in names) + f" | {np.mean(rand):+.2f} ± {np.std(rand):.2f} |")


if __name__ == "__main__":
  main()
