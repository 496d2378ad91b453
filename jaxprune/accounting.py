"""Analytic MACs and parameter counts from an ArchSpec, and measured latency.

MACs count one multiply-add as 1, per image (DESIGN §6). With N tokens (prefix included), width
C, MLP hidden H, attention inner width D = heads·head_dim and HW patch tokens:

  msa       qkv 3·N·C·D + attention matmuls 2·N²·D + projection N·D·C
  conv1     (C·d + d·C)·HW            conv3  (9·C·d + d·C)·HW         (d = conv_dim)
  mlp       2·N·C·H
  tome      a block merging r tokens (N → N' = N − r): attention at N, MLP and its norm at N',
            the matching ⌈N/2⌉·⌊N/2⌋·head_dim and the merge r·⌊N/2⌋·(C + 1)
  norms     N·C per LayerNorm (the "small linear term"), BatchNorm none (folds into the conv)
  embedding HW·C·in_channels·p²       head   C·classes (per head)

Swin: windowed msa runs its projections on the grid zero-padded to a multiple of the window w
(N_p tokens) and its attention matmuls are 2·N_p·w²·D; patch merging to grid HW/4 and width C'
is HW/4·4C (LayerNorm) + HW/4·4C·C'. A conv inside windows (SPViT on Swin) runs on the padded
grid too: HW becomes N_p. Each layer is counted at the shape flowing into it
(`ArchSpec.walk`); the per-layer formulas live with the layer specs in `jaxprune.arch`.

`attention_matmuls=False` leaves out the 2·N²·D term, as counters that only see parametrised
layers do (e.g. thop-style counters); the default (and what jaxprune prints) includes it, as
fvcore does. `norm` is the MACs per LayerNorm element (1; thop counts 2 per element, doubled for
an affine norm: 4). `CONVENTIONS` names the two: "full" (jaxprune's, printed everywhere) and
"reference" (the thop counter behind DC-ViT's reference structure rule). Latency is measured,
never inferred: see `measure_latency`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec, BlockSpec, Shape, mlp_macs, normalised


CONVENTIONS = {"full": {"attention_matmuls": True, "norm": 1},
               "reference": {"attention_matmuls": False, "norm": 4}}


@dataclasses.dataclass(frozen=True)
class Counts:
  """MACs and parameters of a model, per block, per layer and in total."""

  macs: int
  params: int
  block_macs: tuple[int, ...]
  block_params: tuple[int, ...]
  layer_macs: tuple[int, ...] = ()
  layer_params: tuple[int, ...] = ()


def _block_macs(spec: ArchSpec, b: BlockSpec, attention_matmuls: bool,
                shape: Shape | None = None) -> int:
  """MACs of block `b` at `shape` (default: the stem's shape, where every ViT block sits)."""
  return b.macs(shape or spec.stem_shape, spec.head_dim_of(b), attention_matmuls)


def _tail(spec: ArchSpec, norm: int = 1) -> tuple[int, int]:
  """(MACs, params) of the final LayerNorm and the head(s) (pooling is not a multiply-add)."""
  out = spec.out_shape
  c, heads = out.width, 1 + int(spec.dist_head)
  final = registry.family(spec.family).final_norm
  return (final * norm * out.tokens * c + heads * c * spec.num_classes,
          final * 2 * c + heads * (c * spec.num_classes + spec.num_classes))


def count(spec: ArchSpec, attention_matmuls: bool = True, norm: int = 1) -> Counts:
  """MACs per image and parameters, per block, per layer and in total, for `spec`: a walk over
  its layers, each counted at the shape flowing into it."""
  lm, lp, bm, bp = [], [], [], []
  for layer, shape in spec.walk():
    hd = spec.head_dim_of(layer) if isinstance(layer, BlockSpec) else 0
    lm.append(layer.macs(shape, hd, attention_matmuls, norm))
    lp.append(layer.params(shape, hd))
    if layer.is_block:
      bm.append(lm[-1])
      bp.append(lp[-1])
  (sm, sp), (tm, tp) = registry.family(spec.family).stem(spec, norm), _tail(spec, norm)
  return Counts(macs=sm + sum(lm) + tm, params=sp + sum(lp) + tp, block_macs=tuple(bm),
                block_params=tuple(bp), layer_macs=tuple(lm), layer_params=tuple(lp))


def macs(spec: ArchSpec, attention_matmuls: bool = True, norm: int = 1) -> int:
  """Multiply-adds per image (see the module docstring for what is counted)."""
  return count(spec, attention_matmuls, norm).macs


def params(spec: ArchSpec) -> int:
  """Trainable parameters (BatchNorm running statistics excluded)."""
  return count(spec).params


def block_mlp_macs(spec: ArchSpec, hidden: int, shape: Shape | None = None) -> int:
  """MACs of one MLP sub-layer of `hidden` units (with its LayerNorm) at `shape` (default: the
  stem's)."""
  shape = shape or spec.stem_shape
  return mlp_macs(shape.tokens, shape.width, hidden)


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


def backward_residual_bytes(fn, *args) -> int:
  """Bytes that reverse-mode differentiation of `fn(*args)` keeps from the forward pass for the
  backward one (the residuals of `jax.vjp`: activations, weights cast to the compute dtype,
  inputs), from shapes alone (`jax.eval_shape`: nothing is computed). What `train.remat` cuts;
  device-independent, unlike a compiler's buffer plan."""
  residuals = jax.eval_shape(lambda *a: jax.tree.leaves(jax.vjp(fn, *a)[1]), *args)
  return sum(int(np.prod(r.shape)) * r.dtype.itemsize for r in residuals)


def xla_flops(fn, *args) -> float:
  """FLOPs that XLA's compiled cost analysis reports for `fn(*args)` (2 per multiply-add)."""
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis["flops"])
