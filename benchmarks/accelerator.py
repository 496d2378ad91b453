"""The figures a GPU (or TPU) user needs, in one run: ≤ 8 minutes on one accelerator.

  python benchmarks/accelerator.py                      # DeiT-S at 224 px (the real shapes)
  python benchmarks/accelerator.py --size tiny          # seconds, on any CPU (the suite runs it)
  python benchmarks/accelerator.py --out docs/accelerator.md   # also writes the table there

Rows, each measured on the default device (the first of `jax.devices()`):
  - train step images/s and MFU, dense and SPViT search, float32 and bfloat16 compute: a jitted
    step timed after warm-up (median of --steps); FLOPs from XLA's cost analysis of the compiled
    step; MFU against the device's peak (`PEAK_TFLOPS`, by device kind; "n/a" when unknown);
  - eval latency, dense vs a representative SPViT-pruned model at batch 64, the papers'
    protocol: warm-up, then the mean of --iters runs;
  - model inversion (DC-ViT's synthetic set): images·steps/s of the jitted loop;
  - logits parity of the same model and images on this device vs the CPU (max |difference|).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Dense peak TFLOP/s by device kind (bfloat16, float32 without TF32), the vendors' figures.
PEAK_TFLOPS = {"NVIDIA H200": (989.0, 67.0), "NVIDIA H100 80GB HBM3": (989.0, 67.0),
               "NVIDIA A100-SXM4-80GB": (312.0, 19.5), "NVIDIA A100-SXM4-40GB": (312.0, 19.5),
               "TPU v4": (275.0, None), "TPU v5 lite": (197.0, None), "TPU v5p": (459.0, None)}
SIZES = {  # variant, image, patch, train batch, inversion images, inversion steps
    "full": ("deit_small", 224, 16, 128, 32, 20),
    "tiny": ("test_micro", 16, 4, 8, 4, 3),
}


def peak(kind: str, dtype: str) -> float | None:
  for name, (bf16, f32) in PEAK_TFLOPS.items():
    if kind.startswith(name):
      return bf16 if dtype == "bfloat16" else f32
  return None


def train_rows(spec, batch_size: int, steps: int) -> list[dict]:
  import jax
  import ml_collections
  import numpy as np

  from configs import common as cfgs
  from configs import spvit as spvit_config
  from jaxprune import build_model
  from jaxprune.accounting import macs
  from jaxprune.data.pipeline import to_global
  from jaxprune.methods.common import supervised_loss
  from jaxprune.methods.spvit import search_loss, search_options
  from jaxprune.models.spvit import build_search_model
  from jaxprune.train.mesh import data_sharding, make_mesh
  from jaxprune.train.optim import make_optimizer
  from jaxprune.train.step import init_state, make_train_step, place

  config = spvit_config.get_config()
  config.data = cfgs.data_config(mean=(0.5,), std=(0.25,))
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.train, cfg.optim = config.search.train, config.search.optim
  mesh = make_mesh()
  sh = data_sharding(mesh)
  rng = np.random.default_rng(0)
  size, classes = spec.image_size, spec.num_classes
  batch = {"image": to_global(rng.integers(0, 255, (batch_size, size, size, 3), np.uint8), sh),
           "label": to_global(rng.integers(0, classes, batch_size).astype(np.int32), sh)}
  dense = build_model(spec)
  kind = jax.devices()[0].device_kind
  rows = []
  for name, model, loss_fn in (
      ("dense", dense, supervised_loss(cfg, classes)),
      ("SPViT search", build_search_model(dense, search_options(config)),
       search_loss(cfg, classes, 0.6 * macs(spec), 1.0))):
    for dtype in ("float32", "bfloat16"):
      graphdef, state, tx = init_state(model, lambda p: make_optimizer(cfg.optim, p, 1000))
      step = make_train_step(graphdef, tx, loss_fn, mesh, seed=0, compute_dtype=dtype)
      state = place(state, mesh)
      analysis = step.jitted.lower(state, batch, None).compile().cost_analysis()
      analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
      flops = float(analysis.get("flops", 0.0))
      times = []
      for i in range(steps + 2):  # two warm-up steps (the first compiles)
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        if i >= 2:
          times.append(time.perf_counter() - t0)
      t = statistics.median(times)
      p = peak(kind, dtype)
      rows.append({"step": name, "dtype": dtype, "images_per_s": batch_size / t,
                   "ms": 1e3 * t, "tflops": flops / t / 1e12,
                   "mfu": (flops / t / 1e12 / p) if p else None})  # per device's program
  return rows


def latency_rows(spec, iters: int) -> dict:
  import jax
  import numpy as np
  from flax import nnx

  from benchmarks.spvit_search_step import representative_pruned
  from jaxprune import build_model
  from jaxprune.accounting import macs

  out = {}
  for name, s in (("dense", spec), ("pruned", representative_pruned(spec))):
    model = build_model(s)
    x = jax.numpy.asarray(np.random.default_rng(0).normal(
        size=(64, spec.image_size, spec.image_size, 3)).astype(np.float32))
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
    for _ in range(3):
      fwd(state, x).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(iters):
      fwd(state, x).block_until_ready()
    out[name] = {"ms": 1e3 * (time.perf_counter() - t0) / iters, "macs": macs(s)}
  return out


def inversion_row(spec, images: int, steps: int) -> dict:
  import numpy as np

  from jaxprune import build_model
  from jaxprune.synth import InversionConfig, invert
  from jaxprune.train.mesh import make_mesh

  labels = np.arange(images) % spec.num_classes
  run = lambda: invert(build_model(spec), labels, InversionConfig(  # noqa: E731
      steps=steps, warmup_steps=1), make_mesh(), seed=0, mean=(0.5,) * 3, std=(0.25,) * 3)
  run()  # compiles (the loop's chunks)
  return run()


def parity(spec) -> float | None:
  """Max |logits difference| of one model on the default device vs on the CPU."""
  import jax
  import numpy as np

  from jaxprune import build_model
  if jax.devices()[0].platform == "cpu":
    return None
  from flax import nnx
  graphdef, state = nnx.split(build_model(spec))
  x = np.random.default_rng(1).normal(size=(4, spec.image_size, spec.image_size, 3))
  x = x.astype(np.float32)
  forward = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x))
  here = np.asarray(forward(state, x))
  cpu = jax.devices("cpu")[0]
  there = np.asarray(forward(jax.device_put(state, cpu), jax.device_put(x, cpu)))
  return float(np.abs(here - there).max())


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", choices=tuple(SIZES), default="full")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--iters", type=int, default=30)
  parser.add_argument("--out", default="", help="also write the report (markdown) here")
  args = parser.parse_args(argv)

  import jax

  from jaxprune import dense_spec

  variant, image, patch, batch, inv_images, inv_steps = SIZES[args.size]
  spec = dense_spec(variant, image_size=image, patch_size=patch, num_classes=1000 if
                    args.size == "full" else 10)
  dev = jax.devices()[0]
  lines = [f"# Accelerator figures: {dev.device_kind} ({dev.platform}, {jax.device_count()} "
           f"device(s)), JAX {jax.__version__}", "",
           f"`python benchmarks/accelerator.py{'' if args.size == 'full' else ' --size tiny'}`: "
           f"{variant} at {image} px, patch {patch}; MFU per device against "
           "`PEAK_TFLOPS`.", "",
           f"| train step (batch {batch}) | compute | images/s | ms | TFLOP/s (XLA) | MFU |",
           "|---|---|---:|---:|---:|---:|"]
  for r in train_rows(spec, batch, args.steps):
    mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
    lines.append(f"| {r['step']} | {r['dtype']} | {r['images_per_s']:.1f} | {r['ms']:.1f} | "
                 f"{r['tflops']:.2f} | {mfu} |")
  lat = latency_rows(spec, args.iters)
  d, p = lat["dense"], lat["pruned"]
  lines += ["", "| eval, batch 64 (mean of %d after warm-up) | ms | MACs ratio | speed-up |"
            % args.iters, "|---|---:|---:|---:|",
            f"| dense | {d['ms']:.2f} | 1.000 | 1.00x |",
            f"| SPViT-pruned (representative) | {p['ms']:.2f} | {p['macs'] / d['macs']:.3f} | "
            f"{d['ms'] / p['ms']:.2f}x |"]
  inv = inversion_row(spec, inv_images, inv_steps)
  lines += ["", f"Model inversion ({inv_images} images, {inv_steps} steps, compiled before "
            f"timing): {inv['images_per_s']:.1f} images·steps/s."]
  gap = parity(spec)
  lines.append("Logits vs the CPU: " + ("n/a (the default device is the CPU)." if gap is None
                                         else f"max |difference| {gap:.2e}."))
  report = "\n".join(lines) + "\n"
  print(report)
  if args.out:
    with open(args.out, "w") as f:
      f.write(report)
  return report


if __name__ == "__main__":
  main()
