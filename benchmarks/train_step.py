"""Train-step time: jaxprune vs the same ViT in PyTorch eager, on this machine's CPU.

DeiT-Tiny shape (width 192, depth 12, 3 heads, MLP 768), 32x32x3 input, patch 4 (65 tokens),
10 classes, batch 64, AdamW, float32. Each framework: warm-up steps, then the median of timed
steps; the frameworks run one after the other, never at once.

  python benchmarks/train_step.py [--steps 10] [--threads 2] [--skip-torch] [--onednn] [--profile]
                                 [--compute-dtype bfloat16_matmul]

--onednn sets XLA_FLAGS="--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot"
for the JAX side (oneDNN matmul kernels; opt-in, as it changes which kernels run).
--compute-dtype bfloat16_matmul runs jaxprune's `train.compute_dtype = "bfloat16_matmul"` (dense
layers on bfloat16 operands, float32 accumulation) and adds a torch row under CPU autocast to
bfloat16 (its Linear layers in bfloat16) beside the float32 one.

Prints a table: median / min step time and the ratio jaxprune ÷ torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

WIDTH, DEPTH, HEADS, MLP, IMG, PATCH, CLASSES, BATCH = 192, 12, 3, 768, 32, 4, 10, 64


def time_steps(step, n_warmup: int, n_steps: int) -> list[float]:
  for _ in range(n_warmup):
    step()
  times = []
  for _ in range(n_steps):
    t0 = time.perf_counter()
    step()
    times.append((time.perf_counter() - t0) * 1e3)
  return times


def profile_table(jitted, args, run, runs: int = 3) -> str:
  """Where a jitted step's time goes (`jitted` lowered at `args`; `run()` runs one step): each XLA thunk's time from a `jax.profiler` trace, summed
  by pass (forward, or backward: HLO metadata `transpose(jvp(...))`) and JAX primitive (the
  op the fusion came from), per step. Thunks of both XLA threads are summed."""
  import collections
  import glob
  import re
  import tempfile
  import jax
  from jax._src.profiler import ProfileData
  hlo = jitted.lower(*args).compile().as_text()
  origin = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", hlo, re.M):
    name, op_name = m.groups()
    origin[name] = ("backward" if "transpose(" in op_name else "forward",
                    op_name.rsplit("/", 1)[-1])
  with tempfile.TemporaryDirectory() as folder:
    jax.profiler.start_trace(folder)
    for _ in range(runs):
      run()
    jax.profiler.stop_trace()
    data = ProfileData.from_file(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[-1])
  ms, calls = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLAEigen"):  # the threads that run XLA's thunks
        continue
      for ev in line.events:
        if ev.name in origin:
          ms[origin[ev.name]] += ev.duration_ns / 1e6 / runs
          calls[origin[ev.name]] += 1 / runs
  rows = [f"| {p} | {op} | {calls[(p, op)]:.0f} | {t:.1f} |" for (p, op), t in ms.most_common(14)]
  return ("| pass | primitive | thunks | ms per step |\n|---|---|---:|---:|\n" + "\n".join(rows)
          + f"\n\nall thunks: {sum(ms.values()):.0f} ms per step (both threads)")


def bench_jax(n_steps: int, profile: bool = False, dtype: str = "float32") -> list[float]:
  import jax
  import ml_collections
  import numpy as np

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import common as cfgs
  from jaxprune import build_model, dense_spec
  from jaxprune.data.pipeline import to_global
  from jaxprune.methods.common import supervised_loss
  from jaxprune.models.precision import compute_dtype
  from jaxprune.train.mesh import data_sharding, make_mesh
  from jaxprune.train.optim import make_optimizer
  from jaxprune.train.step import init_state, make_train_step, place

  spec = dense_spec("deit_tiny", image_size=IMG, patch_size=PATCH, num_classes=CLASSES)
  config = ml_collections.ConfigDict(dict(
      data=cfgs.data_config(mean=(0.5,), std=(0.25,)),
      train=cfgs.train_config(batch_size=BATCH, label_smoothing=0.0)))
  mesh = make_mesh()
  graphdef, state, tx = init_state(build_model(spec), lambda p: make_optimizer(
      cfgs.optim_config(lr=1e-3), p, total_steps=1000))
  state = place(state, mesh)
  step_fn = make_train_step(graphdef, tx, supervised_loss(config, CLASSES), mesh, seed=0,
                            compute_dtype=compute_dtype(dtype))
  rng = np.random.default_rng(0)
  sh = data_sharding(mesh)
  batch = {"image": to_global(rng.integers(0, 255, (BATCH, IMG, IMG, 3), dtype=np.uint8), sh),
           "label": to_global(rng.integers(0, CLASSES, BATCH).astype(np.int32), sh)}
  holder = {"state": state}

  def step():
    holder["state"], metrics = step_fn(holder["state"], batch)
    jax.block_until_ready(metrics["loss"])

  times = time_steps(step, 3, n_steps)
  if profile:
    print(profile_table(step_fn.jitted, (holder["state"], batch, None), step), flush=True)
  return times


def bench_torch(n_steps: int, threads: int, autocast: bool = False) -> list[float]:
  import torch
  from torch import nn

  torch.set_num_threads(threads)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm1, self.norm2 = nn.LayerNorm(WIDTH, eps=1e-6), nn.LayerNorm(WIDTH, eps=1e-6)
      self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
      self.fc1, self.fc2 = nn.Linear(WIDTH, MLP), nn.Linear(MLP, WIDTH)

    def forward(self, x):
      b, n, c = x.shape
      q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, HEADS, c // HEADS).permute(
          2, 0, 3, 1, 4)
      a = ((q * (c // HEADS)**-0.5) @ k.transpose(-2, -1)).softmax(-1)
      x = x + self.proj((a @ v).transpose(1, 2).reshape(b, n, c))
      return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))

  class ViT(nn.Module):
    def __init__(self):
      super().__init__()
      self.patch = nn.Conv2d(3, WIDTH, PATCH, PATCH)
      self.cls = nn.Parameter(torch.zeros(1, 1, WIDTH))
      self.pos = nn.Parameter(torch.zeros(1, (IMG // PATCH)**2 + 1, WIDTH))
      self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
      self.norm, self.head = nn.LayerNorm(WIDTH, eps=1e-6), nn.Linear(WIDTH, CLASSES)

    def forward(self, x):
      x = self.patch(x).flatten(2).transpose(1, 2)
      x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
      return self.head(self.norm(self.blocks(x))[:, 0])

  model = ViT()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
  images = torch.randn(BATCH, 3, IMG, IMG)
  labels = torch.randint(0, CLASSES, (BATCH,))

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      loss = nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    opt.step()

  return time_steps(step, 3, n_steps)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--skip-torch", action="store_true")
  parser.add_argument("--onednn", action="store_true", help="XLA oneDNN matmuls for JAX")
  parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16_matmul"),
                      help="jaxprune's train.compute_dtype (and a torch autocast row)")
  parser.add_argument("--profile", action="store_true",
                      help="also print where the JAX step's time goes (pass x primitive)")
  args = parser.parse_args()
  if args.onednn:  # before jax is imported
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_use_onednn=true"
                               " --xla_cpu_experimental_onednn_fusion_type=dot")
  bf16 = args.compute_dtype != "float32"
  name = "jaxprune (JAX" + (", oneDNN" if args.onednn else "") + (", bf16 matmuls" if bf16 else "")
  rows = [(name + ")", bench_jax(args.steps, args.profile, args.compute_dtype))]
  if not args.skip_torch:
    rows.append((f"PyTorch eager ({args.threads} threads)", bench_torch(args.steps, args.threads)))
    if bf16:
      rows.append(("PyTorch eager, autocast bf16", bench_torch(args.steps, args.threads, True)))
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from benchmarks.machine import cpu_class
  print(f"\n{cpu_class()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"DeiT-Tiny shape, {IMG}x{IMG}, patch {PATCH}, batch {BATCH}, AdamW, "
        f"{'float32 parameters, bfloat16 matmuls' if bf16 else 'float32'}; "
        f"{args.steps} timed steps after 3 warm-up")
  print(f"| {'framework':<28} | {'median ms':>9} | {'min ms':>7} |")
  print(f"|{'-' * 30}|{'-' * 10}:|{'-' * 8}:|")
  for name, t in rows:
    print(f"| {name:<28} | {statistics.median(t):9.1f} | {min(t):7.1f} |")
  for name, t in rows[1:]:
    ratio = statistics.median(rows[0][1]) / statistics.median(t)
    print(f"\nratio jaxprune / {name} (median): {ratio:.2f}x")


if __name__ == "__main__":
  main()
