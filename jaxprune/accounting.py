"""Analytic MACs and parameter counts from an ArchSpec, and measured latency.

MACs count one multiply-add as 1, per image (DESIGN §6). With N tokens (prefix included), width
C, MLP hidden H, attention inner width D = heads·head_dim and HW patch tokens:

  msa       qkv 3·N·C·D + attention matmuls 2·N²·D + projection N·D·C
  conv1     (C·d + d·C)·HW            conv3  (9·C·d + d·C)·HW         (d = conv_dim)
  mlp       2·N·C·H
  norms     N·C per LayerNorm (the "small linear term"), BatchNorm none (folds into the conv)
  embedding HW·C·in_channels·p²       head   C·classes (per head)

`attention_matmuls=False` leaves out the 2·N²·D term, as counters that only see parametrised
layers do (e.g. thop-style counters); the default (and what jaxprune prints) includes it, as
fvcore does. Latency is measured, never inferred: see `measure_latency`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxprune.arch import ArchSpec, BlockSpec


@dataclasses.dataclass(frozen=True)
class Counts:
  """MACs and parameters of a model, per block and in total."""

  macs: int
  params: int
  block_macs: tuple[int, ...]
  block_params: tuple[int, ...]


def _block_macs(spec: ArchSpec, b: BlockSpec, attention_matmuls: bool) -> int:
  n, c, hw = spec.num_tokens, spec.width, spec.num_patches
  total = 0
  if b.attn == "msa":
    d = b.heads * spec.head_dim
    total += 3 * n * c * d + n * d * c + n * c
    if attention_matmuls:
      total += 2 * n * n * d
  elif b.attn in ("conv1", "conv3"):
    total += (b.kernel_size**2 * c * b.conv_dim + b.conv_dim * c) * hw + n * c
  if b.mlp:
    total += 2 * n * c * b.mlp + n * c
  return total


def _block_params(spec: ArchSpec, b: BlockSpec) -> int:
  c = spec.width
  total = 0
  if b.attn == "msa":
    d = b.heads * spec.head_dim
    total += 2 * c + (c * 3 * d + 3 * d) + (d * c + c)
  elif b.attn in ("conv1", "conv3"):
    k2, d = b.kernel_size**2, b.conv_dim
    total += 2 * c + (k2 * c * d + d) + 2 * d + (d * c + c)
  if b.mlp:
    total += 2 * c + (c * b.mlp + b.mlp) + (b.mlp * c + c)
  elif b.mlp_bias:
    total += c
  return total


def count(spec: ArchSpec, attention_matmuls: bool = True) -> Counts:
  """MACs per image and parameters, per block and in total, for `spec`."""
  c, p = spec.width, spec.patch_size
  heads = 1 + int(spec.dist_head)
  embed_macs = spec.num_patches * c * spec.in_channels * p * p
  embed_params = (p * p * spec.in_channels * c + c) + spec.num_prefix * c + spec.num_tokens * c
  tail_macs = spec.num_tokens * c + heads * c * spec.num_classes
  tail_params = 2 * c + heads * (c * spec.num_classes + spec.num_classes)
  bm = tuple(_block_macs(spec, b, attention_matmuls) for b in spec.blocks)
  bp = tuple(_block_params(spec, b) for b in spec.blocks)
  return Counts(macs=embed_macs + sum(bm) + tail_macs, params=embed_params + sum(bp) + tail_params,
                block_macs=bm, block_params=bp)


def macs(spec: ArchSpec, attention_matmuls: bool = True) -> int:
  """Multiply-adds per image (see the module docstring for what is counted)."""
  return count(spec, attention_matmuls).macs


def params(spec: ArchSpec) -> int:
  """Trainable parameters (BatchNorm running statistics excluded)."""
  return count(spec).params


def block_mlp_macs(spec: ArchSpec, hidden: int) -> int:
  """MACs of one MLP sub-layer of `hidden` units (with its LayerNorm)."""
  return 2 * spec.num_tokens * spec.width * hidden + spec.num_tokens * spec.width


def _jitted_forward(model: nnx.Module, batch: int, seed: int):
  """A zero-argument callable running `model`'s jitted eval forward on fixed random images."""
  spec = model.spec
  graphdef, state = nnx.split(model)
  images = jax.random.normal(jax.random.key(seed),
                             (batch, spec.image_size, spec.image_size, spec.in_channels))
  forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images, train=False))
  return lambda: forward(state, images).block_until_ready()


def _time_ms(run, iters: int) -> list[float]:
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    run()
    times.append((time.perf_counter() - t0) * 1e3)
  return times


def measure_latency(model: nnx.Module, batch: int = 64, *, warmup: int = 3, iters: int = 10,
                    seed: int = 0) -> dict[str, Any]:
  """Measured forward latency of `model` in eval mode on random images.

  One jitted forward is compiled, run `warmup` times, then timed `iters` times with
  `block_until_ready`. Returns milliseconds per batch: median, mean, std, min, max, plus
  images/s at the median and the settings used.
  """
  run = _jitted_forward(model, batch, seed)
  for _ in range(max(warmup, 1)):
    run()
  t = np.asarray(_time_ms(run, iters))
  median = float(np.median(t))
  return {"median_ms": median, "mean_ms": float(t.mean()), "std_ms": float(t.std()),
          "min_ms": float(t.min()), "max_ms": float(t.max()),
          "images_per_s": batch / median * 1e3, "batch": batch, "iters": iters,
          "device": str(jax.devices()[0].platform)}


def compare_latency(models: dict[Any, nnx.Module], batch: int = 64, *, rounds: int = 5,
                    iters: int = 4, warmup: int = 2, seed: int = 0) -> dict[Any, float]:
  """Median forward latency (ms) of several models, measured interleaved.

  Each round times every model `iters` times in turn, so slow drifts of a shared machine (other
  processes, clock changes) hit all models alike; differences between the results are far less
  noisy than between separate `measure_latency` calls.
  """
  runs = {k: _jitted_forward(m, batch, seed) for k, m in models.items()}
  for run in runs.values():
    for _ in range(max(warmup, 1)):
      run()
  times: dict[Any, list[float]] = {k: [] for k in runs}
  for _ in range(rounds):
    for k, run in runs.items():
      times[k] += _time_ms(run, iters)
  return {k: float(np.median(t)) for k, t in times.items()}


def xla_flops(fn, *args) -> float:
  """FLOPs that XLA's compiled cost analysis reports for `fn(*args)` (2 per multiply-add)."""
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])



def search_macs(spec: ArchSpec, coefs, masks, conv_dims) -> jax.Array:
  """Differentiable MACs of an SPViT search model (for the budget loss).

  Args:
    spec: the dense spec searched over.
    coefs: per block, the op coefficients {"msa", "conv3", "conv1"} (0/1 forward).
    masks: per block, the FFN hidden-unit mask.
    conv_dims: per block, the bottleneck width of its conv candidates.
  With hard gates this equals `macs(derive_arch(...))` exactly.
  """
  import jax.numpy as jnp
  total = jnp.asarray(float(macs(spec.replace(blocks=()))))
  n, c = spec.num_tokens, spec.width
  for b, coef, mask, d in zip(spec.blocks, coefs, masks, conv_dims):
    for op in ("msa", "conv3", "conv1"):
      kind = BlockSpec(op, heads=b.heads if op == "msa" else 0, conv_dim=0 if op == "msa" else d)
      total = total + coef[op] * _block_macs(spec, kind, True)
    total = total + 2 * n * c * jnp.sum(mask) + n * c * jnp.max(mask)
  return total
