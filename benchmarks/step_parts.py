"""Where the DeiT-Ti train step's time goes, JAX against PyTorch eager, piece by piece.

Each piece of one transformer block is timed alone, forward + backward (the vector-Jacobian
product with a fixed cotangent), at the shapes of `benchmarks/train_step.py` (65 tokens × batch
64 = 4160 rows, width 192, MLP 768, 3 heads of 64): the four dense layers, exact GELU, LayerNorm
and the attention core (softmax(qkᵀ)·v) in two layouts (tokens-first `bqhd` einsums, and heads
first `bhqd` after one transpose: what `models.blocks.MSA` uses). Medians of --iters calls after
warm-up; JAX and torch (--threads) alternate piece by piece. The last column multiplies the gap
by how often the piece runs in a 12-block step, so the rows say which pieces the step's gap to
torch is made of (the rest — residual adds, the loss, AdamW, fusion across pieces — is what the
whole step shows beyond their sum).

  python benchmarks/step_parts.py [--iters 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.machine import cpu_class  # noqa: E402

ROWS, WIDTH, MLP, HEADS, BATCH, DEPTH = 64 * 65, 192, 768, 3, 64, 12


def median_ms(fn, iters: int) -> float:
  for _ in range(3):
    fn()
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e3


def pieces(rng):
  """(name, times per step, jax fn of its arrays, torch fn of its tensors, arrays)."""
  import jax
  import jax.numpy as jnp
  import torch
  from jaxprune.models.blocks import gelu

  def normal(*shape):
    return rng.normal(size=shape).astype(np.float32)

  def jax_vjp(f):
    def fb(*args):
      y, vjp = jax.vjp(f, *args[:-1])
      return y, vjp(args[-1])
    return fb

  def torch_vjp(f):
    def fb(*ts):
      leaves = [t.detach().requires_grad_(True) for t in ts[:-1]]
      f(*leaves).backward(ts[-1])
      return [t.grad for t in leaves]
    return fb

  out = []
  for din, dout, name in ((WIDTH, 3 * WIDTH, "qkv"), (WIDTH, WIDTH, "proj"), (WIDTH, MLP, "fc1"),
                          (MLP, WIDTH, "fc2")):
    out.append((f"dense {name} {din}→{dout}", DEPTH, jax_vjp(lambda x, w, b: x @ w + b),
                torch_vjp(lambda x, w, b: x @ w + b),
                (normal(ROWS, din), 0.05 * normal(din, dout), normal(dout), normal(ROWS, dout))))
  out.append(("exact GELU", DEPTH, jax_vjp(gelu), torch_vjp(torch.nn.functional.gelu),
              (normal(ROWS, MLP), normal(ROWS, MLP))))

  def ln_jax(x, s, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m)**2).mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(v + 1e-6) * s + b
  out.append(("LayerNorm", 2 * DEPTH + 1, jax_vjp(ln_jax),
              torch_vjp(lambda x, s, b: torch.nn.functional.layer_norm(x, (WIDTH,), s, b, 1e-6)),
              (normal(ROWS, WIDTH), np.ones(WIDTH, np.float32), np.zeros(WIDTH, np.float32),
               normal(ROWS, WIDTH))))
  n, d = ROWS // BATCH, WIDTH // HEADS

  def att_tokens_first(qkv):
    q, k, v = (t[:, :, 0] for t in jnp.split(qkv.reshape(BATCH, n, 3, HEADS, d), 3, axis=2))
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q * d**-0.5, k), -1)
    return jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(BATCH, n, WIDTH)

  def att_heads_first(qkv):
    q, k, v = qkv.reshape(BATCH, n, 3, HEADS, d).transpose(2, 0, 3, 1, 4)
    w = jax.nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q * d**-0.5, k), -1)
    return jnp.einsum("bhqk,bhkd->bhqd", w, v).transpose(0, 2, 1, 3).reshape(BATCH, n, WIDTH)

  def att_torch(qkv):
    q, k, v = qkv.reshape(BATCH, n, 3, HEADS, d).permute(2, 0, 3, 1, 4)
    a = ((q * d**-0.5) @ k.transpose(-2, -1)).softmax(-1)
    return (a @ v).transpose(1, 2).reshape(BATCH, n, WIDTH)
  arrays = (normal(BATCH, n, 3 * WIDTH), normal(BATCH, n, WIDTH))
  out.append(("attention core, tokens first (bqhd)", DEPTH, jax_vjp(att_tokens_first),
              torch_vjp(att_torch), arrays))
  out.append(("attention core, heads first (bhqd)", DEPTH, jax_vjp(att_heads_first),
              torch_vjp(att_torch), arrays))
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--iters", type=int, default=30)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  import jax
  import torch
  torch.set_num_threads(args.threads)
  print(f"{cpu_class()}; torch {args.threads} threads; medians of {args.iters} calls; "
        f"fwd + bwd, {ROWS} rows", flush=True)
  print("| piece | per step | JAX ms | torch ms | JAX ÷ torch | gap per step ms |\n"
        "|---|---:|---:|---:|---:|---:|")
  rng = np.random.default_rng(0)
  total = 0.0
  for name, count, fj, ft, arrays in pieces(rng):
    jitted = jax.jit(fj)
    dev = [jax.device_put(a) for a in arrays]
    tensors = [torch.from_numpy(a) for a in arrays]
    tj = median_ms(lambda: jax.block_until_ready(jitted(*dev)), args.iters)
    tt = median_ms(lambda: ft(*tensors), args.iters)
    gap = (tj - tt) * count
    if "tokens first" not in name:  # the model uses heads first: count that layout once
      total += gap
    print(f"| {name} | {count}× | {tj:.2f} | {tt:.2f} | {tj / tt:.2f} | {gap:+.0f} |", flush=True)
  print(f"\nsum of the gaps (heads-first attention): {total:+.0f} ms per step")


if __name__ == "__main__":
  main()
