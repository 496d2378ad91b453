"""Every method on one dense model at matched MACs (CIFAR-10): SPViT, ViT-Slim and random search
over seeds, DC-ViT, PRACTISE and ToMe alone, and ToMe stacked on a lighter SPViT / ViT-Slim /
DC-ViT / PRACTISE model to reach the same MACs.

The dense DeiT and the SPViT runs are those of `benchmarks/spvit_cifar10.py` (same commands and
folders under --spvit-out: either benchmark reuses the other's; the SPViT seed-0 run is its
`spvit_<target>`); every job goes through `python -m jaxprune.main` and resumes, so a rerun
reuses what finished. Stages, in order (the doc is rewritten after each, so a cut-short run
still leaves its table):

  1. alone, seed 0: SPViT, ViT-Slim (search 4 epochs + fine-tune 6, SPViT's recipe), random
     search (--random draws at SPViT's reached MACs ±2 %, each fine-tuned like SPViT's), ToMe
     (training-free, the r nearest the target), DC-ViT and PRACTISE (few-shot: 500 unlabeled
     images, the settings of benchmarks/dcvit_cifar10.py, DC-ViT targeted at --target);
  2. stacked: each --stack source at --stack-from, then ToMe with the r that brings it nearest
     --target;
  3. the other --seeds of SPViT and ViT-Slim.

ViT-Slim runs twice per seed: over heads and MLP units only, and with token masks too
(`vitslim.token_budget` = --token-budget, the reference's --budget_patch; 1 leaves that row out),
both sliced to the same --target MACs. --methods runs a subset (with its own --doc, so the full
table is not overwritten by a partial one).

Latency: every model of the table timed again together at the end of each stage (batch 64,
interleaved, `accounting.compare_latency`); speed-ups are against the dense model in that
measurement.

  mkdir -p /tmp/cifar10 && tar xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar10
  python benchmarks/methods_cifar10.py --data /tmp/cifar10 [--seeds 0,1,2] [--target 0.7]
  python benchmarks/methods_cifar10.py --data /tmp/cifar10 --methods vitslim,vitslim_tokens \
      --stack '' --doc docs/vitslim_results.md        # the two ViT-Slim variants only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spvit_cifar10 import CIFAR_DATA, MODELS, PRETRAIN, ROOT, SEARCH, SUBSET, main_job  # noqa: E402
sys.path.insert(0, ROOT)
from benchmarks.machine import cpu_class  # noqa: E402

COMMON = CIFAR_DATA + MODELS["deit"][0] + SUBSET
SLIM_SEARCH = [o for o in SEARCH if not o.startswith("--config.spvit.")]
METHODS = ("spvit", "vitslim", "vitslim_tokens", "random", "tome", "fewshot")
FEWSHOT = ["--config.data.fewshot=500", "--config.synthetic.steps=1000",
           "--config.synthetic.warmup_steps=100", "--config.dcvit.trial_steps=100",
           "--config.dcvit.finetune_steps=200", "--config.practise.adaptor_steps=50"]


RAN = []  # the jobs this invocation ran (not read back from a finished summary.json)


def job(config: str, workdir: str, *overrides: str, common=COMMON) -> dict:
  """A finished run's summary.json, else the run (`main_job` resumes a cut-short one)."""
  path = os.path.join(workdir, "summary.json")
  if os.path.exists(path):
    return json.load(open(path))
  RAN.append(workdir)
  return main_job(config, workdir, *overrides, common=common)


class Bench:
  def __init__(self, args):
    self.args = args
    self.methods = args.methods.split(",")
    self.data = [f"--config.data.source=folder:{args.data}"]
    self.rows: list[dict] = []  # {method, seed, macs, accuracy, model | arch, ...}
    dense_dir = os.path.join(args.spvit_out, "dense")
    s = job("pretrain", dense_dir, *self.data, *PRETRAIN)
    self.dense = os.path.join(dense_dir, "model")
    self.dense_macs = s["dense"]["macs"]
    self.add("dense", None, s["dense"], model=self.dense)
    self.init = [f"--config.model.init_from={self.dense}"]

  def add(self, method: str, seed, row: dict, **where) -> None:
    self.rows.append({"method": method, "seed": seed, "macs": row["macs"],
                      "accuracy": row["accuracy"], **where})

  # -- the methods -------------------------------------------------------------------------
  def spvit(self, target: float, seed: int, record: bool = True) -> str:
    name = f"spvit_{target:g}"
    work = (os.path.join(self.args.spvit_out, name) if seed == 0 else
            os.path.join(self.args.out, f"{name}_seed{seed}"))
    s = job("spvit", work, *self.data, *self.init, *SEARCH, f"--config.seed={seed}",
            f"--config.spvit.target_ratio={target:g}")
    return self._pruned("SPViT", seed, work, s, record)

  def vitslim(self, target: float, seed: int, record: bool = True, tokens: float = 1.0) -> str:
    """ViT-Slim over heads and MLP units, or (tokens < 1) with token masks keeping that
    fraction of the patch tokens (--budget_patch) too; either sliced to `target` MACs."""
    tag, method = ("", "ViT-Slim") if tokens >= 1 else (
        f"_tokens{tokens:g}", f"ViT-Slim + token masks (keep {tokens:.0%})")
    work = os.path.join(self.args.out, f"vitslim_{target:g}{tag}_seed{seed}")
    s = job("vitslim", work, *self.data, *self.init, *SLIM_SEARCH, f"--config.seed={seed}",
            f"--config.vitslim.target_ratio={target:g}",
            *([f"--config.vitslim.token_budget={tokens:g}"] if tokens < 1 else []))
    if record:
      self.add(method, seed, s["pruned"], model=os.path.join(work, "pruned"),
               tokens=s["selected"].get("tokens"))
    return os.path.join(work, "pruned")

  def slims(self, seed: int) -> None:
    """The ViT-Slim rows --methods asks for, at --target."""
    if "vitslim" in self.methods:
      self.vitslim(self.args.target, seed)
    if "vitslim_tokens" in self.methods and self.args.token_budget < 1:
      self.vitslim(self.args.target, seed, tokens=self.args.token_budget)

  def _pruned(self, method, seed, work, s, record) -> str:
    if record:
      self.add(method, seed, s["pruned"], model=os.path.join(work, "pruned"))
    return os.path.join(work, "pruned")

  def random(self) -> None:
    reached = [r["macs"] for r in self.rows if r["method"] == "SPViT" and r["seed"] == 0]
    work = os.path.join(self.args.out, f"random_{self.args.target:g}")
    s = job("spvit_random", work, *self.data, *self.init, *SEARCH,
            f"--config.spvit.target_ratio={reached[0] / self.dense_macs:.4f}",
            "--config.spvit.tolerance=0.02", f"--config.random.num_archs={self.args.random}")
    for i, c in enumerate(s["candidates"]):
      self.add("random search", i, c, arch=c["arch"], best=i == s["best_candidate"])

  def fewshot(self) -> dict:
    work = os.path.join(self.args.out, "dcvit")
    s = job("dcvit", work, *self.data, *self.init, *FEWSHOT, "--config.dcvit.num_targets=0",
            f"--config.dcvit.targets=({self.args.target:g}, {self.args.stack_from:g})",
            "--config.practise.num_drop=(1, 2)", common=CIFAR_DATA)
    return {"family": [(f["macs"], f, f["model_dir"]) for f in s["family"]],
            "practise": [(p["macs"], p, os.path.join(work, "practise", f"drop{len(p['dropped'])}"))
                         for p in s["practise"]]}

  def tome(self, name: str, source: str, target: float) -> dict:
    """ToMe on `source` with the r whose MACs are nearest `target` × dense."""
    from jaxprune import accounting, load
    from jaxprune.methods.tome import with_merging
    spec = load(source).spec
    r = min(range(0, 17), key=lambda r: abs(
        accounting.macs(with_merging(spec, r)) / self.dense_macs - target))
    work = os.path.join(self.args.out, f"tome_{name}")
    s = job("tome", work, f"--config.model.init_from={source}", *self.data,
            f"--config.tome.r_values=({r},)", common=CIFAR_DATA)
    row = next(x for x in s["sweep"] if x["r"] == r)
    return {**row, "model": source if r == 0 else os.path.join(work, "tome", f"r{r}", "model")}

  # -- stages ------------------------------------------------------------------------------
  def alone(self) -> None:
    a, m = self.args, self.methods
    if "spvit" in m:
      self.spvit(a.target, 0)
    self.slims(0)
    if a.random and "random" in m:
      self.random()
    if "tome" in m:
      t = self.tome("dense", self.dense, a.target)
      self.add("ToMe", None, t, model=t["model"], r=t["r"])
    if "fewshot" not in m:
      return
    few = self.fewshot()
    self.few = few
    member = min(few["family"], key=lambda f: abs(f[0] / self.dense_macs - a.target))
    self.add("DC-ViT (500 images)", None, member[1], model=member[2])
    for macs, p, path in few["practise"]:
      self.add(f"PRACTISE, {len(p['dropped'])} blocks (500 images)", None, p, model=path)

  def stacked(self) -> None:
    a = self.args
    sources = {}
    for name in a.stack.split(","):
      if name == "spvit":
        sources["SPViT"] = self.spvit(a.stack_from, 0, record=False)
      elif name == "vitslim":
        sources["ViT-Slim"] = self.vitslim(a.stack_from, 0, record=False)
      elif name == "dcvit":
        f = min(self.few["family"], key=lambda f: abs(f[0] / self.dense_macs - a.stack_from))
        sources["DC-ViT"] = f[2]
      elif name == "practise":
        sources["PRACTISE 1 block"] = self.few["practise"][0][2]
    for name, path in sources.items():
      from jaxprune import accounting, load
      ratio = accounting.macs(load(path).spec) / self.dense_macs
      t = self.tome(name.replace(" ", "_").replace("-", ""), path, a.target)
      self.add(f"{name} ({ratio:.3f}) + ToMe", None, t, model=t["model"], r=t["r"])

  def seeds(self) -> None:
    for seed in [int(s) for s in self.args.seeds.split(",") if int(s) != 0]:
      if "spvit" in self.methods:
        self.spvit(self.args.target, seed)
      self.slims(seed)
      self.write()

  # -- latency and the doc -----------------------------------------------------------------
  def retime(self) -> None:
    from jaxprune import load
    from jaxprune.accounting import compare_latency
    from jaxprune.models import build_model
    from jaxprune.arch import ArchSpec
    models = {}
    for i, r in enumerate(self.rows):
      models[i] = load(r["model"]) if "model" in r else build_model(ArchSpec.from_dict(r["arch"]))
    ms = compare_latency(models, batch=64, rounds=16, iters=4, warmup=2)
    for i, r in enumerate(self.rows):
      r["latency_ms"] = ms[i]

  def write(self, final: bool = False) -> None:
    """Times every model and rewrites the doc: after a stage that ran a job, and at the end."""
    if not (final or RAN):
      return
    RAN.clear()
    self.retime()
    base = self.rows[0]
    groups: dict[str, list[dict]] = {}
    for r in self.rows:
      groups.setdefault(r["method"], []).append(r)
    lines = ["| method | runs | MACs ratio | test acc. | per run | speed-up (b64) | "
             "speed-up ÷ MACs gain |", "|---|---:|---:|---:|---|---:|---:|"]
    for method, rs in groups.items():
      acc = [100 * r["accuracy"] for r in rs]
      ratio = [r["macs"] / base["macs"] for r in rs]
      speed = [base["latency_ms"] / r["latency_ms"] for r in rs]
      pm = lambda v, f: (f"{statistics.mean(v):{f}} ± {statistics.stdev(v):{f}}"  # noqa: E731
                         if len(v) > 1 else f"{v[0]:{f}}")
      extra = ""
      if method == "random search":
        best = next(r for r in rs if r.get("best"))
        extra = f" (best of {len(rs)}: {100 * best['accuracy']:.2f} %)"
      if "r" in rs[0]:
        extra = f" (r = {rs[0]['r']})"
      if rs[0].get("tokens"):
        extra = f" (tokens per block, seed {rs[0]['seed']}: {'/'.join(map(str, rs[0]['tokens']))})"
      each = " / ".join(f"{a:.2f}" for a in acc) if len(acc) > 1 else ""
      lines.append(f"| {method}{extra} | {len(rs)} | {pm(ratio, '.3f')} | {pm(acc, '.2f')} % | "
                   f"{each} | {pm(speed, '.2f')}× | {statistics.mean(s * q for s, q in zip(speed, ratio)):.2f} |")
    a = self.args
    subset = set(self.methods) != set(METHODS)
    extra = (f" --methods {a.methods}" if subset else "") + (
        f" --doc {os.path.relpath(a.doc, ROOT)}" if subset else "")
    title = ("ViT-Slim with and without token masks" if set(self.methods) <= {
        "vitslim", "vitslim_tokens"} else "Every method") + " at matched MACs (CIFAR-10)"
    doc = [f"# {title}", "",
           f"Written by `python benchmarks/methods_cifar10.py --data /tmp/cifar10 --target "
           f"{a.target:g} --seeds {a.seeds} --random {a.random} --stack '{a.stack}' --stack-from "
           f"{a.stack_from:g} --token-budget {a.token_budget:g}{extra}` on "
           f"{time.strftime('%Y-%m-%d')}. One dense DeiT (width 96, "
           "depth 6, 4 heads, patch 4; 10,000-image CIFAR-10 subset, 30 epochs: the model of "
           "[the SPViT table](spvit_results.md)); full test set. SPViT, ViT-Slim and random "
           "search fine-tune 6 epochs on the same 10,000 images with distillation from the "
           "dense model (SPViT and ViT-Slim search 4 epochs first); DC-ViT and PRACTISE are "
           "few-shot (500 unlabeled images, the settings of "
           "[the DC-ViT table](dcvit_results.md)); ToMe is training-free. 'runs': seeds (SPViT, "
           "ViT-Slim) or random architectures, mean ± std; 'per run': each seed's (or draw's) "
           "accuracy in order. ViT-Slim + token masks: the same search with token masks too "
           "(`vitslim.token_budget`: that fraction of the masks kept, a block keeping what any "
           "later block keeps), dropped tokens removed, the heads and units then thresholded to "
           "the same MACs; 'tokens per block' counts the class token. Latency: batch-64 eval "
           f"forwards in JAX on this machine's CPU ({cpu_class()}), every model timed together, "
           "interleaved; 'speed-up ÷ MACs gain' is 1 when a model is exactly as much faster as "
           "its MACs say.", ""] + lines
    with open(a.doc, "w") as f:
      f.write("\n".join(doc) + "\n")
    print("\n".join(lines), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", required=True, help="folder holding train/ and test/")
  parser.add_argument("--out", default="/tmp/jaxprune_bench/methods_cifar10")
  parser.add_argument("--spvit-out", default="/tmp/jaxprune_bench/spvit_cifar10",
                      help="where benchmarks/spvit_cifar10.py keeps (or finds) its runs")
  parser.add_argument("--target", type=float, default=0.7, help="MACs ratio every row matches")
  parser.add_argument("--seeds", default="0,1,2", help="SPViT and ViT-Slim seeds")
  parser.add_argument("--random", type=int, default=3, help="random-search draws (0: none)")
  parser.add_argument("--stack", default="spvit,practise,dcvit",
                      help="sources ToMe stacks on: spvit, vitslim, dcvit, practise")
  parser.add_argument("--stack-from", type=float, default=0.85,
                      help="the MACs ratio of the SPViT / ViT-Slim / DC-ViT source of a stack")
  parser.add_argument("--token-budget", type=float, default=0.7,
                      help="ViT-Slim + token masks: fraction of patch tokens kept (1: no row)")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"the rows to run (the dense model always): {', '.join(METHODS)}")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "methods_results.md"))
  args = parser.parse_args()
  methods, stack = args.methods.split(","), [s for s in args.stack.split(",") if s]
  needs = {"spvit": "spvit", "vitslim": "vitslim", "dcvit": "fewshot", "practise": "fewshot"}
  if bad := sorted(set(methods) - set(METHODS)):
    parser.error(f"--methods: {', '.join(bad)} unknown; choose from {', '.join(METHODS)}")
  if bad := sorted(set(stack) - set(needs)):
    parser.error(f"--stack: {', '.join(bad)} unknown; choose from {', '.join(needs)}")
  if missing := sorted({needs[s] for s in stack} - set(methods)):
    parser.error(f"--stack {args.stack}: needs --methods to include {', '.join(missing)}")
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(args.out, "xla_cache"))
  bench = Bench(args)
  bench.alone()
  bench.write()
  if args.stack:
    bench.stacked()
    bench.write()
  bench.seeds()
  bench.write(final=True)


if __name__ == "__main__":
  main()
