"""Dense vs pruned latency where the model is deployed: onnxruntime beside JAX.

  python benchmarks/deploy_latency.py --pair NAME DENSE_DIR PRUNED_DIR [--pair ...] \
      [--threads 2] [--batches 1,64] [--rounds 5] [--doc docs/deploy_latency.md]

Each pair is exported to ONNX (`jaxprune.deploy`, uint8 pixels in) and timed in onnxruntime
(intra-op threads fixed by --threads, sequential execution, all graph optimisations) and in
JAX (jitted eval forward). Per runtime and batch: warm-up, then the models of a pair timed
interleaved in rounds (so drift on a shared machine hits both alike), median ms per call. The
table gives the pruned speed-up and the speed-up ÷ MACs ratio (1.0 = as fast as its MACs
promise); with --doc it is also written there, with the command and the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxprune import accounting, deploy, load  # noqa: E402
from benchmarks.machine import cpu_class  # noqa: E402
from jaxprune.export import read_preprocessing  # noqa: E402




def ort_runner(model, pre, batch: int, threads: int, folder: str):
  import onnxruntime as ort
  path = os.path.join(folder, f"{id(model)}_{batch}.onnx")
  with open(path, "wb") as f:
    f.write(deploy.onnx_model(model, pre, batch))
  opts = ort.SessionOptions()
  opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
  opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
  session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
  spec = model.spec
  pixels = np.random.default_rng(0).integers(
      0, 256, (batch, spec.image_size, spec.image_size, spec.in_channels)).astype(np.uint8)
  return lambda: session.run(None, {"pixels": pixels})


def jax_runner(model, pre, batch: int):
  fn = jax.jit(deploy.pixels_to_logits(model, pre))
  spec = model.spec
  pixels = np.random.default_rng(0).integers(
      0, 256, (batch, spec.image_size, spec.image_size, spec.in_channels)).astype(np.uint8)
  return lambda: fn(pixels).block_until_ready()


def interleaved(runs: dict[str, callable], rounds: int, iters: int, warmup: int = 3):
  for run in runs.values():
    for _ in range(warmup):
      run()
  times = {k: [] for k in runs}
  for _ in range(rounds):
    for k, run in runs.items():
      for _ in range(iters):
        t0 = time.perf_counter()
        run()
        times[k].append((time.perf_counter() - t0) * 1e3)
  return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--pair", nargs=3, action="append", required=True,
                      metavar=("NAME", "DENSE", "PRUNED"))
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--batches", default="1,64")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--iters", type=int, default=4)
  parser.add_argument("--doc", default="")
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for name, dense_dir, pruned_dir in args.pair:
      dense, pruned = load(dense_dir), load(pruned_dir)
      pre = read_preprocessing(pruned_dir) or read_preprocessing(dense_dir)
      ratio = accounting.macs(pruned.spec) / accounting.macs(dense.spec)
      for batch in (int(b) for b in args.batches.split(",")):
        for runtime in ("onnxruntime", "jax"):
          make = ((lambda m, b=batch: ort_runner(m, pre, b, args.threads, folder))
                  if runtime == "onnxruntime" else (lambda m, b=batch: jax_runner(m, pre, b)))
          ms = interleaved({"dense": make(dense), "pruned": make(pruned)}, args.rounds,
                           args.iters)
          speedup = ms["dense"] / ms["pruned"]
          rows.append((name, runtime, batch, ms["dense"], ms["pruned"], ratio, speedup,
                       speedup * ratio))
          print(f"{name} {runtime} b{batch}: dense {ms['dense']:.2f} ms, pruned "
                f"{ms['pruned']:.2f} ms, speed-up {speedup:.2f}x at MACs ratio {ratio:.3f} "
                f"({speedup * ratio:.2f} of the MACs promise)", flush=True)
  table = ["| model | runtime | batch | dense ms | pruned ms | MACs ratio | speed-up | "
           "speed-up ÷ (1/MACs ratio) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
  table += [f"| {n} | {r} | {b} | {d:.2f} | {p:.2f} | {m:.3f} | {s:.2f}× | {q:.2f} |"
            for n, r, b, d, p, m, s, q in rows]
  print("\n".join(table))
  if args.doc:
    command = "python benchmarks/deploy_latency.py " + " ".join(
        f"--pair {' '.join(p)}" for p in args.pair) + f" --threads {args.threads}"
    with open(args.doc, "w") as f:
      f.write("# Deployed speed: onnxruntime beside JAX\n\n"
              f"`{command}`, on {cpu_class()}, onnxruntime intra-op "
              f"threads {args.threads}, median of {args.rounds}×{args.iters} calls per model "
              "after warm-up, dense and pruned timed interleaved. Written by the benchmark.\n\n"
              + "\n".join(table) + "\n")


if __name__ == "__main__":
  main()
