"""Where does DC-ViT start to beat PRACTISE? A depth study on CIFAR-10, with the structure search.

Dense DeiT-shaped models (width --width, 4 heads, MLP x4, patch 4, 32 px; 10,000-image balanced
training subset, 30 epochs, as benchmarks/spvit_cifar10.py) at each --depths, trained once and
cached under --out; then per depth one DC-ViT run with `dcvit.structure=both` (DC-ViT's rule
family and the searched family, sharing trials) and PRACTISE, at the MACs of 1 and 2 dropped
blocks, repeated over the few-shot --seeds (500 images each), with the first seed's every trial's
real test accuracy recorded (`dcvit.trial_accuracy`). Reruns reuse every finished run and trial.
With --metric-set fewshot the trials are ranked by KL on the real few-shot images instead of the
synthetic set (`dcvit.metric_set`), in `d<depth>/dcvit_fewshot/`, and with --metric-temperature
T at that softmax temperature (`dcvit.metric_temperature`), in `d<depth>/dcvit[_fewshot]_T<T>/`;
such a run starts from hard links to the synthetic run's trials and PRACTISE models where they
exist (neither depends on the metric; the KL a trial record lacks is measured on its restored
student).

  mkdir -p /tmp/cifar10 && tar xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar10
  python benchmarks/dcvit_depth.py --data /tmp/cifar10 [--depths 12,6,9] [--seeds 0,1,2]
  python benchmarks/dcvit_depth.py --data /tmp/cifar10 --depths 12 --practise-placements

Prints per depth: accuracy mean ± std over seeds of PRACTISE, DC-ViT and the searched
structure at each matched MACs, and the searched one's margin over the better of the two; per
candidate block (first seed) the accuracy and KL after the same short recovery with attention
removed only vs the whole block dropped; and the time the rule and the search spent.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from page import page  # noqa: E402
from spvit_cifar10 import CIFAR_DATA, PRETRAIN, ROOT, SUBSET, main_job  # noqa: E402


def dense_model(args, depth: int) -> dict:
  """The depth's dense model, trained once: a finished one is read back from its summary (a
  rerun of the job would only re-measure it: minutes on the shared CPU)."""
  done = os.path.join(args.out, f"d{depth}", "dense", "summary.json")
  if os.path.exists(done):
    return {**json.load(open(done)), "wall_s": 0.0}
  model = ["--config.model.patch_size=4", f"--config.model.width={args.width}",
           f"--config.model.depth={depth}", "--config.model.num_heads=4",
           "--config.model.mlp_ratio=4.0"]
  return main_job("pretrain", os.path.join(args.out, f"d{depth}", "dense"),
                  f"--config.data.source=folder:{args.data}", *PRETRAIN,
                  common=CIFAR_DATA + model + SUBSET)


def run_dir(args, depth: int) -> str:
  name = "dcvit" if args.metric_set == "synthetic" else f"dcvit_{args.metric_set}"
  if args.metric_temperature != 1:
    name += f"_T{args.metric_temperature:g}"
  return os.path.join(args.out, f"d{depth}", name)


def reuse_trials(src: str, dst: str, metric_set: str, temperature: float) -> None:
  """Starts the run `dst` ranking by `metric_set` at `temperature` from the synthetic run `src`:
  its config (but the metric), its synthetic set (when ranking by it), and per seed where `dst`
  has no trial yet, hard links to `src`'s trials and PRACTISE phases (records and checkpoints)."""
  if not os.path.exists(os.path.join(src, "config.json")):
    return
  synthetic = os.path.join(src, "synthetic")
  if (metric_set == "synthetic" and os.path.exists(os.path.join(synthetic, "synthetic.npz"))
      and not os.path.exists(os.path.join(dst, "synthetic"))):
    shutil.copytree(synthetic, os.path.join(dst, "synthetic"), copy_function=os.link)
  for seed in glob.glob(os.path.join(src, "seeds", "*")):
    started = os.path.join(dst, os.path.relpath(seed, src))
    if glob.glob(os.path.join(started, "trials", "*.json")) or not glob.glob(
        os.path.join(seed, "trials", "*.json")):
      continue  # dst made trials of its own (or src has none yet): nothing to link
    shutil.rmtree(started, ignore_errors=True)  # an empty start, e.g. links of a killed src
    for part in ("trials", "practise", "checkpoints/trial_*", "checkpoints/practise_*"):
      for path in glob.glob(os.path.join(seed, part)):
        to = os.path.join(dst, os.path.relpath(path, src))
        shutil.copytree(path, to, copy_function=os.link)
  if not os.path.exists(os.path.join(dst, "config.json")):
    config = json.load(open(os.path.join(src, "config.json")))
    config["dcvit"].update(metric_set=metric_set, metric_temperature=temperature)
    json.dump(config, open(os.path.join(dst, "config.json"), "w"), indent=2)


def rescore_practise(run: str, seeds: list[str]) -> None:
  """Deletes PRACTISE's scores, pruned models and their fine-tune checkpoints in `run` for
  `seeds` (the adaptor phases stay): runs made before jaxprune timed each distinct pruned
  architecture once ranked identical blocks by timer noise, and their drop checkpoints carry
  no `dropped` entry for the resume check to catch a changed choice."""
  for seed in seeds:
    sub = os.path.join(run, "seeds", seed)
    for path in (glob.glob(os.path.join(sub, "practise", "*"))
                 + glob.glob(os.path.join(sub, "checkpoints", "practise_drop*"))):
      print(f"[rescore] removing {path}", flush=True)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def compression(args, depth: int) -> dict:
  """The first seed with every trial's test accuracy, then the others without (a resume-neutral
  measurement: one test-set pass per trial, as long as the trial itself on these settings)."""
  d = os.path.join(args.out, f"d{depth}")
  seeds = args.seeds.split(",")
  if run_dir(args, depth) != os.path.join(d, "dcvit"):
    reuse_trials(os.path.join(d, "dcvit"), run_dir(args, depth), args.metric_set,
                 args.metric_temperature)
  if args.rescore_practise:
    rescore_practise(run_dir(args, depth), seeds)
  for sweep, accuracy in ((seeds[:1], True), (seeds, False)):
    s = main_job(
        "dcvit", run_dir(args, depth), f"--config.model.init_from={d}/dense/model",
        f"--config.data.source=folder:{args.data}", "--config.data.fewshot=500",
        "--config.data.fewshot_balanced=True", f"--config.dcvit.seeds=({','.join(sweep)},)",
        "--config.dcvit.structure=both", f"--config.dcvit.trial_accuracy={accuracy}",
        f"--config.dcvit.metric_set={args.metric_set}",
        f"--config.dcvit.metric_temperature={args.metric_temperature}",
        "--config.dcvit.num_targets=0", "--config.practise.num_drop=(1, 2)",
        f"--config.dcvit.trial_steps={args.trial_steps}",
        f"--config.dcvit.finetune_steps={args.finetune_steps}",
        f"--config.practise.adaptor_steps={args.adaptor_steps}",
        f"--config.synthetic.steps={args.synthetic_steps}", "--config.synthetic.warmup_steps=50",
        common=CIFAR_DATA)  # the model's shape comes with init_from
  return s


PLACEMENTS = ("around", "in_place")  # practise.adaptors: the reference's, then ours before


def practise_placements(args, depth: int) -> list[str]:
  """PRACTISE alone (`configs/practise.py`) at 1 and 2 dropped blocks with each adaptor
  placement over the few-shot seeds, on the settings of the DC-ViT runs above; the table's
  markdown lines (mean ± std of test accuracy, and the blocks each seed dropped)."""
  d = os.path.join(args.out, f"d{depth}")
  runs = {}
  placements = [p for p in PLACEMENTS if p in args.placements.split(",")]
  for placement in placements:
    for seed in args.seeds.split(","):
      runs[placement, seed] = main_job(
          "practise", os.path.join(d, f"practise_{placement}", f"seed{seed}"),
          f"--config.model.init_from={d}/dense/model", f"--config.data.source=folder:{args.data}",
          "--config.data.fewshot=500", "--config.data.fewshot_balanced=True",
          f"--config.data.fewshot_seed={seed}", "--config.practise.num_drop=(1, 2)",
          f"--config.practise.adaptors={placement}",
          f"--config.dcvit.finetune_steps={args.finetune_steps}",
          f"--config.practise.adaptor_steps={args.adaptor_steps}", common=CIFAR_DATA)
  dense = next(iter(runs.values()))["dense"]
  lines = [f"PRACTISE at depth {depth} (dense {100 * dense['accuracy']:.2f} %), few-shot seeds "
           f"{args.seeds}, {args.adaptor_steps} adaptor steps, fine-tune "
           f"{args.finetune_steps} × (n + 1) steps; mean ± std over the seeds (blocks dropped per "
           "seed); wall: this call's, summed over the seeds' runs (a finished run only reloads "
           "and re-measures)\n",
           "| `practise.adaptors` | 1 block | 2 blocks | wall (this call) |", "|---|---:|---:|---:|"]
  for placement in placements:
    mine = [s for (p, _), s in runs.items() if p == placement]
    cells = []
    for n in range(2):
      acc = [100 * s["practise"][n]["accuracy"] for s in mine]
      mean = sum(acc) / len(acc)
      std = (sum((a - mean) ** 2 for a in acc) / len(acc)) ** 0.5
      blocks = " / ".join(str(s["practise"][n]["dropped"]) for s in mine)
      cells.append(f"{mean:.2f} ± {std:.2f} ({blocks})")
    wall = sum(s["wall_s"] for s in mine) / 60
    lines.append(f"| {placement} | {cells[0]} | {cells[1]} | {wall:.1f} min |")
  return lines


def mean_std(row) -> str:
  return f"{100 * row['accuracy']:.2f} ± {100 * row.get('accuracy_std', 0.0):.2f}"


def margin(practise, family, searched) -> str:
  """Searched minus the better of PRACTISE and DC-ViT, in points: on the means (issue 13's
  acceptance is ≥ −0.3) and per seed."""
  def gap(p, f, q):
    return 100 * (q["accuracy"] - max(p["accuracy"], f["accuracy"]))
  per_seed = [gap(practise["per_seed"][k], family["per_seed"][k], v)
              for k, v in searched["per_seed"].items()]
  return (f"{gap(practise, family, searched):+.2f} ("
          + " / ".join(f"{g:+.2f}" for g in per_seed) + ")")


def kls(trial) -> str:
  """A trial's KLs: on the synthetic set / on the real few-shot images (— where not measured)."""
  return " / ".join(f"{trial[k]:.3f}" if k in trial else "—" for k in ("kl", "kl_fewshot"))


def candidate_table(run: str, seed: str) -> list[str]:
  """Per candidate block: attention removed only (the H-width compress trial) vs dropped."""
  trials = {os.path.basename(p)[:-5]: json.load(open(p))
            for p in glob.glob(os.path.join(run, "seeds", seed, "trials", "*.json"))}
  drops = sorted((t["block"], t) for n, t in trials.items() if n.startswith("drop"))
  full = max((t.get("hidden", 0) for t in trials.values()), default=0)
  lines = []
  for block, drop in drops:
    attn = trials.get(f"b{block}_h{full}")
    a = f"{100 * attn['test_accuracy']:.2f} % ({kls(attn)})" if attn else "—"
    lines.append(f"| {block} | {a} | {100 * drop['test_accuracy']:.2f} % ({kls(drop)}) |")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder holding train/ and test/")
  parser.add_argument("--out", default="/tmp/jaxprune_bench/dcvit_depth")
  parser.add_argument("--depths", default="12,6,9")
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--trial-steps", type=int, default=40)
  parser.add_argument("--finetune-steps", type=int, default=80)
  parser.add_argument("--adaptor-steps", type=int, default=20)
  parser.add_argument("--synthetic-steps", type=int, default=500)
  parser.add_argument("--metric-set", default="synthetic", choices=("synthetic", "fewshot"),
                      help="dcvit.metric_set: what the trials are ranked by")
  parser.add_argument("--metric-temperature", type=float, default=1.0,
                      help="dcvit.metric_temperature; other than 1 runs in d<depth>/dcvit[_fewshot]"
                           "_T<t>/, starting from the synthetic run's trials")
  parser.add_argument("--dense-only", action="store_true", help="train the dense models only")
  parser.add_argument("--practise-placements", action="store_true",
                      help="instead of DC-ViT: PRACTISE alone with each practise.adaptors "
                           "placement (the reference's 'around', our earlier 'in_place')")
  parser.add_argument("--placements", default=",".join(PLACEMENTS),
                      help="with --practise-placements: which (comma-separated)")
  parser.add_argument("--rescore-practise", action="store_true",
                      help="redo PRACTISE's scoring, pruning and fine-tunes of these seeds, once "
                           "(runs made before its one-timing-per-architecture latency)")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "dcvit_depth.md"),
                      help="the page the study's tables are written to ('' : print only)")
  args = parser.parse_args()
  # Identical programs recur across seeds and trials: keep their compilations.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "xla_cache"))
  depths = [int(d) for d in args.depths.split(",")]
  dense = {d: dense_model(args, d) for d in depths}
  if args.dense_only:
    dense_table(dense)
    return
  if args.practise_placements:
    tables = [practise_placements(args, d) for d in depths]  # (runs print as they go)
    with page(os.path.join(ROOT, "docs", "dcvit_practise_placement.md"),
              "PRACTISE: where the adaptors go (depth study, CIFAR-10)",
              "The dense models by the depth study's recipe (`d<depth>/dense` under --out: one "
              "trained afresh need not match the accuracy in [dcvit_results.md](dcvit_results.md))."):
      for lines in tables:
        print("\n".join(lines) + "\n", flush=True)
    return
  runs = {d: compression(args, d) for d in depths}  # (runs print as they go, outside the page)
  with page(args.doc, "Where DC-ViT starts to beat PRACTISE: depth study on CIFAR-10",
            f"Dense DeiT-shaped models of width {args.width} at depths {args.depths}; per depth "
            "DC-ViT's rule family, the structure search and PRACTISE at the MACs of 1 and 2 "
            f"dropped blocks, mean ± std over the few-shot seeds {args.seeds}."):
    dense_table(dense)
    for d, s in runs.items():
      base = s["dense"]["macs"]
      print(f"\n### depth {d} (dense {100 * s['dense']['accuracy']:.2f} %), few-shot seeds "
            f"{s['seeds']}, wall {s['wall_s'] / 60:.1f} min")
      print("| MACs of | PRACTISE | DC-ViT | searched (structure per seed) | searched − best (per "
            "seed) |\n|---|---:|---:|---|---:|")
      for p, f, q in zip(s["practise"], sorted(s["family"], key=lambda r: -r["macs"])[-2:],
                         sorted(s["searched"], key=lambda r: -r["macs"])[-2:]):
        shapes = "; ".join(f"drop {r.get('dropped')} compress {r.get('blocks')}"
                           for r in q["per_seed"].values())
        print(f"| {p['macs'] / base:.3f} / {f['macs'] / base:.3f} / {q['macs'] / base:.3f} | "
              f"{mean_std(p)} | {mean_std(f)} | {mean_std(q)} ({shapes}) | {margin(p, f, q)} |")
      run = run_dir(args, d)
      seed = str(s["seeds"][0])
      print(f"\nper candidate block (seed {seed}, {args.trial_steps} recovery steps): test accuracy "
            "(KL on the synthetic set / on the real few-shot images)\n"
            "| block | attention removed | block dropped |\n|---:|---:|---:|")
      print("\n".join(candidate_table(run, seed)))
      for sd in s["seeds"]:
        sub = json.load(open(os.path.join(run, "seeds", str(sd), "summary.json")))
        rule_s = sum(f.get("seconds", 0.0) for f in sub["family"])
        search_s = sum(f.get("seconds", 0.0) for f in sub["searched"])
        print(f"seed {sd}: rule family {rule_s / 60:.1f} min, search on top of it "
              f"{search_s / 60:.1f} min ({sub['trials']['count']} trials)")


def dense_table(dense: dict) -> None:
  print("\n| depth | params | MACs | test acc. | wall (this call; cached runs only reload) |\n"
        "|---:|---:|---:|---:|---:|")
  for d, s in dense.items():
    r = s["dense"]
    print(f"| {d} | {r['params'] / 1e3:.0f}k | {r['macs'] / 1e6:.1f}M | "
          f"{100 * r['accuracy']:.2f} % | {s['wall_s'] / 60:.1f} min |")


if __name__ == "__main__":
  main()
