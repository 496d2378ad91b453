"""The speed targets of one machine in one table: runs the timing benchmarks one after the other
(never two at once) and writes docs/speed_targets.md with each figure, its anchor, the ratio, the
CPU class and the command, followed by each benchmark's own printed table.

  python benchmarks/speed_targets.py [--quick] [--doc docs/speed_targets.md]

Rows measured here: the DeiT-Ti train step against PyTorch eager (plain, with the oneDNN XLA
flags, and with bfloat16 matmuls against torch's float32 and CPU-autocast steps; `train_step.py`, with `--profile`'s table of where JAX's step time goes), the SPViT search
step against the dense step (`spvit_search_step.py`), the piece-by-piece comparison
(`step_parts.py`), and the synthetic-set inversion against a torch eager loop at the DC-ViT
default shape and at DeiT-B 224 px (`inversion.py`). Targets measured by other benchmarks link
to the pages those write. `--quick`: fewer steps and rounds (a check that the script runs, not
figures to quote). Run it on an otherwise idle machine: XLA's two-thread loops slow far more
than torch's beside another job.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.machine import cpu_class  # noqa: E402


def run(args: list[str]) -> str:
  command = "python benchmarks/" + " ".join(args)
  print(f"$ {command}", flush=True)
  out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", args[0]), *args[1:]],
                       capture_output=True, text=True, cwd=ROOT)
  if out.returncode:
    raise SystemExit(f"{command} failed:\n{out.stderr[-3000:]}")
  return out.stdout


def number(pattern: str, text: str) -> float:
  m = re.search(pattern, text)
  if not m:
    raise SystemExit(f"no match for {pattern!r} in:\n{text[-2000:]}")
  return float(m.group(1))


def tables(text: str) -> str:
  """The markdown table lines (and the line before each table) of a benchmark's output."""
  lines = text.splitlines()
  keep = [i for i, line in enumerate(lines) if line.startswith("|")]
  out, last = [], -2
  for i in keep:
    if i != last + 1:
      out += ["", lines[i - 1]] if i > 0 and lines[i - 1].strip() else [""]
    out.append(lines[i])
    last = i
  return "\n".join(out).strip()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "speed_targets.md"))
  a = parser.parse_args()
  steps, rounds = ("5", "1") if a.quick else ("20", "3")
  cmds = {
      "step": ["train_step.py", "--steps", steps, "--profile"],
      "onednn": ["train_step.py", "--steps", steps, "--onednn"],
      "bf16": ["train_step.py", "--steps", steps, "--compute-dtype", "bfloat16_matmul"],
      "search": ["spvit_search_step.py", "--steps", "3" if a.quick else "10"],
      "parts": ["step_parts.py", "--iters", "5" if a.quick else "30"],
      "inv": ["inversion.py", "--shape", "default", "--rounds", rounds, "--bf16", "--split"]
      + (["--steps", "10"] if a.quick else []),
      "inv224": ["inversion.py", "--shape", "deit_base", "--rounds", "1" if a.quick else "2",
                 "--bf16", "--split"]
      + (["--steps", "2"] if a.quick else []),
  }
  out = {k: run(v) for k, v in cmds.items()}

  def shown(k):
    return "`python benchmarks/" + " ".join(cmds[k]) + "`"

  jax_ms = number(r"\| jaxprune \(JAX\)\s*\|\s*([\d.]+)", out["step"])
  torch_ms = number(r"\| PyTorch eager[^|]*\|\s*([\d.]+)", out["step"])
  one_ms = number(r"\| jaxprune \(JAX, oneDNN\)\s*\|\s*([\d.]+)", out["onednn"])
  torch2_ms = number(r"\| PyTorch eager[^|]*\|\s*([\d.]+)", out["onednn"])
  bf_ms = number(r"\| jaxprune \(JAX, bf16 matmuls\)\s*\|\s*([\d.]+)", out["bf16"])
  torch3_ms = number(r"\| PyTorch eager \(\d+ threads\)\s*\|\s*([\d.]+)", out["bf16"])
  auto_ms = number(r"\| PyTorch eager, autocast bf16\s*\|\s*([\d.]+)", out["bf16"])
  search = number(r"\| SPViT search\s*\|\s*[\d.]+ ms \|\s*([\d.]+)x", out["search"])
  def inversion(text):  # jaxprune, torch eager, jaxprune bf16 matmuls, torch autocast bf16
    return [number(rf"\| {row} \| ([\d.]+) \|", text) for row in (
        "jaxprune", "torch eager", "jaxprune, bf16 matmuls", "torch eager, autocast bf16")]
  inv, inv224 = inversion(out["inv"]), inversion(out["inv224"])
  tf = number(r"tokens first \(bqhd\) \| \d+× \| ([\d.]+)", out["parts"])
  hf = number(r"heads first \(bhqd\) \| \d+× \| ([\d.]+)", out["parts"])

  def met(ok: bool) -> str:
    return "met" if ok else "**missed**"

  rows = [
      ("1. train step, DeiT-Ti shape, 32 px, batch 64, f32", f"{jax_ms:.0f} ms",
       f"torch eager {torch_ms:.0f} ms", f"{jax_ms / torch_ms:.2f}× (≤ 1.0: "
       f"{met(jax_ms <= torch_ms)})", shown("step")),
      ("1. same, oneDNN XLA flags", f"{one_ms:.0f} ms", f"torch eager {torch2_ms:.0f} ms",
       f"{one_ms / torch2_ms:.2f}× ({met(one_ms <= torch2_ms)})", shown("onednn")),
      ("1. same, `train.compute_dtype = bfloat16_matmul`", f"{bf_ms:.0f} ms",
       f"torch eager {torch3_ms:.0f} ms; autocast bf16 {auto_ms:.0f} ms",
       f"{bf_ms / torch3_ms:.2f}× ({met(bf_ms <= torch3_ms)}); {bf_ms / auto_ms:.2f}× autocast",
       shown("bf16")),
      ("1. SPViT search step", "", "dense step, same run", f"{search:.2f}× (≤ 1.2: "
       f"{met(search <= 1.2)})", shown("search")),
      ("2. attention core fwd+bwd, heads first (the layout models use)", f"{hf:.2f} ms",
       f"tokens first {tf:.2f} ms", f"{tf / hf:.2f}× faster", shown("parts")),
      ("2. pruned speed-up ÷ MACs gain, batch 64, JAX", "see deploy_latency.md", "", "≥ 0.95",
       "[deploy_latency.md](deploy_latency.md)"),
      ("3. one compiled program for every DC-ViT trial / PRACTISE adaptor", "counted in "
       "tests/test_masked.py", "", "", "[dcvit.md](dcvit.md)"),
      ("4. inversion, DC-ViT default shape, 100 images", f"{inv[0]:.0f} img·steps/s",
       f"torch eager {inv[1]:.0f}", f"{inv[0] / inv[1]:.2f}× (≥ 1.5: "
       f"{met(inv[0] >= 1.5 * inv[1])})", shown("inv")),
      ("4. inversion, DeiT-B 224 px, 8 images", f"{inv224[0]:.3g} img·steps/s",
       f"torch eager {inv224[1]:.3g}", f"{inv224[0] / inv224[1]:.2f}× (≥ 1.5: "
       f"{met(inv224[0] >= 1.5 * inv224[1])})", shown("inv224")),
      ("4. same, `synthetic.compute_dtype = bfloat16_matmul`", f"{inv[2]:.0f} img·steps/s",
       f"torch eager {inv[1]:.0f}; autocast bf16 {inv[3]:.0f}",
       f"{inv[2] / inv[1]:.2f}× ({met(inv[2] >= 1.5 * inv[1])}); {inv[2] / inv[3]:.2f}× "
       "autocast", shown("inv")),
      ("4. same at DeiT-B 224 px", f"{inv224[2]:.3g} img·steps/s",
       f"torch eager {inv224[1]:.3g}; autocast bf16 {inv224[3]:.3g}",
       f"{inv224[2] / inv224[1]:.2f}× ({met(inv224[2] >= 1.5 * inv224[1])}); "
       f"{inv224[2] / inv224[3]:.2f}× autocast", shown("inv224")),
      ("5. compilation cache on by default", "", "", "", "[training.md](training.md)"),
      ("6. memory of the 224 px steps, `train.remat`", "", "", "", "[memory.md](memory.md)"),
      ("7. `benchmarks/accelerator.py`", "not run on a GPU yet", "", "",
       "[speed.md](speed.md)"),
  ]
  step_why = ("the products run at torch's rate (the step piece by piece, below); XLA's "
              "other ops cost about twice torch's: reductions, transposes, LayerNorm's "
              "backward, exact GELU (the profile below)")
  def inv_why(text):  # from inversion.py --split: the model part of each float32 step
    j_model, t_model = (number(rf"\| {k} \| [\d.]+ \| ([\d.]+) \|", text)
                        for k in ("jaxprune", "torch eager"))
    j_rest = number(r"\| jaxprune \| [\d.]+ \| [\d.]+ \| (-?[\d.]+) \|", text)
    return (f"float32 split below: the model's forward + backward to the images {j_model:.0f} ms "
            f"in JAX vs {t_model:.0f} ms in torch ({j_model / t_model:.2f}×), the rest of "
            f"JAX's step {max(j_rest, 0):.0f} ms")
  why = {  # the reason a row misses, by its first words (shown only where it misses)
      "1. train step": step_why, "1. same, oneDNN": step_why,
      "1. same, `train.compute_dtype": "the products are fast now; the float32 non-product "
      "ops remain (profile above), and torch's autocast also keeps bfloat16 activations",
      "1. SPViT search": "every candidate op runs every step, as the straight-through gate "
      "gradients need ([spvit_results.md](spvit_results.md)); both convs already come from the "
      "attention's values with one output product; their two BatchNorms and the gate paths "
      "remain",
      "4. inversion, DC-ViT": inv_why(out["inv"]), "4. same, `synthetic": inv_why(out["inv"]),
      "4. inversion, DeiT-B": inv_why(out["inv224"]), "4. same at DeiT-B": inv_why(out["inv224"]),
  }

  def reason(row):
    if "missed" not in row[3]:
      return ""
    return next((w for k, w in why.items() if row[0].startswith(k)), "")

  rows = [(*r[:4], reason(r), r[4]) for r in rows]
  rows[-1] = (*rows[-1][:4], "needs a GPU: run it there (docs/accelerator.md)", rows[-1][5])
  doc = ["# Speed targets on one machine", "",
         f"Written by `python benchmarks/speed_targets.py{' --quick' if a.quick else ''}` on "
         f"{time.strftime('%Y-%m-%d')}, on {cpu_class()}, each benchmark alone. A ratio holds "
         "for its machine class: the same benchmarks gave other ratios on other CPUs "
         "([speed.md](speed.md) lists them by class).", "",
         "| target | figure | anchor | ratio | why, where missed | command / page |",
         "|---|---|---|---|---|---|"]
  doc += [f"| {' | '.join(r)} |" for r in rows]
  for k, title in (("step", "Train step, and where JAX's step time goes (`--profile`)"),
                   ("onednn", "Train step with the oneDNN XLA flags"),
                   ("bf16", "Train step with bfloat16 matmuls (float32 parameters and the rest)"),
                   ("search", "SPViT search step vs dense step"),
                   ("parts", "The step piece by piece, JAX vs torch"),
                   ("inv", "Inversion, DC-ViT default shape"),
                   ("inv224", "Inversion, DeiT-B at 224 px")):
    doc += ["", f"## {title}", "", shown(k), "", tables(out[k])]
  with open(a.doc, "w") as f:
    f.write("\n".join(doc) + "\n")
  print("\n".join(doc))


if __name__ == "__main__":
  main()
