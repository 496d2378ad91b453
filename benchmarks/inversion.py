"""Synthetic-set inversion: jaxprune's jitted loop (`synth.invert`) vs a PyTorch eager loop of
the same objective, on the same weights.

The model is a Hugging Face DeiT (random, seeded) imported into jaxprune (`convert`), so both
sides compute the same network (logits parity printed). Objective as DC-ViT's: CE toward the
target labels + TV (4 directions, exponent 1, one norm per group of 50 images) + L2, on a
randomly rolled and flipped copy of the images; Adam (0.5, 0.9), warm-up + cosine, pixels clipped.
Rows, timed in turn (`--rounds`, medians): jaxprune; jaxprune with the patch embedding as the
strided convolution it was before (`nnx.Conv`: its image gradient is XLA's transposed strided
conv); torch eager (`--threads`); with --bf16 also jaxprune with bfloat16 matmul operands
(`synthetic.compute_dtype = "bfloat16_matmul"`) and torch eager under CPU autocast to bfloat16.

  python benchmarks/inversion.py [--shape default|deit_base] [--steps N] [--rounds R] [--bf16]
                                 [--split]

--split also times the model part alone (forward + backward to the images of the
cross-entropy, jitted vs eager, interleaved) and prints where each loop's step goes: the model,
and the rest (jitter, image priors, Adam, clipping, loop overhead) as step time − model time.

Shapes: `default` = DC-ViT's embedded default (DeiT width 64, depth 6, 4 heads, MLP x2, patch
4, 28x28x1, 10 classes, 100 images); `deit_base` = DeiT-B at 224 px (width 768, depth 12, 12
heads, 1000 classes), 8 images.
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

SHAPES = {  # HF DeiTConfig fields, images
    "default": (dict(hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
                     intermediate_size=128, image_size=28, patch_size=4, num_channels=1,
                     num_labels=10), 100),
    "deit_base": (dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, image_size=224, patch_size=16, num_channels=3,
                       num_labels=1000), 8),
}
TV, L2, LR, JITTER_224 = 1e-4, 1e-5, 0.25, 30




def jax_rate(model, labels, steps: int, conv_patch_embed: bool, dtype: str = "float32") -> float:
  """images·steps/s of `synth.invert` (compile excluded, as it reports)."""
  from flax import nnx
  from jaxprune.models.blocks import PatchEmbed
  from jaxprune.synth import InversionConfig, invert
  from jaxprune.train.mesh import make_mesh
  call = PatchEmbed.__call__
  if conv_patch_embed:
    PatchEmbed.__call__ = nnx.Conv.__call__
  try:
    r = invert(model, labels, InversionConfig(steps=steps, lr=LR, warmup_steps=1, tv_weight=TV,
                                              l2_weight=L2, compute_dtype=dtype),
               make_mesh(), seed=0,
               mean=(0.5,), std=(0.5,))
  finally:
    PatchEmbed.__call__ = call
  return r["images_per_s"]


def model_part_ms(model, hf, labels, size: int, channels: int, iters: int = 20) -> tuple:
  """Median ms of the cross-entropy's forward + backward to the images alone: (JAX jitted,
  torch eager), timed interleaved on the same random images."""
  import jax
  import jax.numpy as jnp
  import optax
  import torch
  import torch.nn.functional as F
  from flax import nnx
  graphdef, state = nnx.split(model)
  x = np.random.default_rng(1).normal(size=(len(labels), size, size, channels)).astype(np.float32)
  y = jnp.asarray(labels)

  @jax.jit
  def jax_grad(x):
    return jax.grad(lambda x: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        nnx.merge(graphdef, state)(x, train=False), y)))(x)

  xt, yt = torch.as_tensor(x).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(labels).long()

  def torch_grad():
    xg = xt.detach().requires_grad_(True)
    F.cross_entropy(hf(pixel_values=xg).logits, yt).backward()
    return xg.grad

  xj = jnp.asarray(x)
  jax_grad(xj).block_until_ready()
  torch_grad()
  times = ([], [])
  for _ in range(iters):
    t0 = time.perf_counter()
    jax_grad(xj).block_until_ready()
    times[0].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    torch_grad()
    times[1].append(time.perf_counter() - t0)
  return tuple(1e3 * statistics.median(t) for t in times)


def torch_rate(hf, labels, size: int, channels: int, steps: int, autocast: bool = False) -> float:
  """images·steps/s of the same objective as an eager PyTorch loop (2 warm-up steps)."""
  import torch
  import torch.nn.functional as F
  n = len(labels)
  y = torch.as_tensor(labels, dtype=torch.long)
  lo, hi = -1.0, 1.0  # mean 0.5, std 0.5: pixels 0..1
  x = torch.randn(n, channels, size, size).clamp(lo, hi).requires_grad_(True)
  opt = torch.optim.Adam([x], lr=LR, betas=(0.5, 0.9))
  jitter = max(1, round(JITTER_224 * size / 224))
  group = 50

  def tv(z):
    d = (z[:, :, 1:, :] - z[:, :, :-1, :], z[:, :, :, 1:] - z[:, :, :, :-1],
         z[:, :, 1:, 1:] - z[:, :, :-1, :-1], z[:, :, 1:, :-1] - z[:, :, :-1, 1:])
    which = torch.arange(n) // group
    groups = int(which.max()) + 1
    total = 0.0
    for di in d:
      s = torch.zeros(groups).index_add_(0, which, (di ** 2).sum(dim=(1, 2, 3)))
      total = total + torch.sqrt(s + 1e-12)
    return total.mean()

  best = float("inf")
  times = []
  for i in range(steps + 2):
    t0 = time.perf_counter()
    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,)))
    xa = torch.roll(x, (dy, dx), (2, 3))
    if torch.rand(()) < 0.5:
      xa = xa.flip(3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      logits = hf(pixel_values=xa).logits
    ce = F.cross_entropy(logits.float(), y)
    loss = ce + TV * tv(xa) + L2 * x.flatten(1).norm(dim=1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
      x.clamp_(lo, hi)
    best = min(best, float(loss.detach()))
    if i >= 2:
      times.append(time.perf_counter() - t0)
  return n * len(times) / sum(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shape", choices=sorted(SHAPES), default="default")
  parser.add_argument("--steps", type=int, default=0, help="0: 50 (default), 4 (deit_base)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--skip-torch", action="store_true", help="the JAX rows only")
  parser.add_argument("--split", action="store_true",
                      help="also where each loop's step goes: the model part vs the rest")
  parser.add_argument("--bf16", action="store_true",
                      help="also jaxprune with synthetic.compute_dtype = bfloat16_matmul and "
                           "torch under CPU autocast to bfloat16")
  args = parser.parse_args()
  import torch
  import transformers
  from jaxprune.convert import import_checkpoint
  from jaxprune.synth import labels_for
  torch.set_num_threads(args.threads)
  fields, n = SHAPES[args.shape]
  steps = args.steps or (50 if args.shape == "default" else 4)
  torch.manual_seed(0)
  config = transformers.DeiTConfig(**fields)
  hf = transformers.DeiTForImageClassification(config).eval()
  model = import_checkpoint({k: v.numpy() for k, v in hf.state_dict().items()}, "hf",
                            hf_config=config.to_dict())
  size, ch = fields["image_size"], fields["num_channels"]
  probe = np.random.default_rng(0).normal(size=(2, size, size, ch)).astype(np.float32)
  with torch.no_grad():
    want = hf(pixel_values=torch.as_tensor(probe).permute(0, 3, 1, 2)).logits.numpy()
  print(f"{args.shape}: {n} images, {steps} steps; {cpu_class()}; torch "
        f"{args.threads} threads; logits max |JAX - torch| "
        f"{np.max(np.abs(np.asarray(model(probe)) - want)):.2e}", flush=True)
  labels = labels_for(n, fields["num_labels"])
  rows = {"jaxprune": [], "jaxprune, patch embedding as conv": [],
          "jaxprune, bf16 matmuls": [], "torch eager": [], "torch eager, autocast bf16": []}
  for _ in range(args.rounds):
    rows["jaxprune"].append(jax_rate(model, labels, steps, False))
    rows["jaxprune, patch embedding as conv"].append(jax_rate(model, labels, steps, True))
    if args.bf16:
      rows["jaxprune, bf16 matmuls"].append(
          jax_rate(model, labels, steps, False, "bfloat16_matmul"))
    if not args.skip_torch:
      rows["torch eager"].append(torch_rate(hf, labels, size, ch, steps))
      if args.bf16:
        rows["torch eager, autocast bf16"].append(torch_rate(hf, labels, size, ch, steps, True))
    print({k: f"{v[-1]:.1f}" for k, v in rows.items() if v}, flush=True)
  base = "jaxprune, patch embedding as conv" if args.skip_torch else "torch eager"
  ref = statistics.median(rows[base])
  print(f"\n| loop | images·steps/s | vs {base} |\n|---|---:|---:|")
  for k, v in rows.items():
    if v:
      rate = statistics.median(v)
      print(f"| {k} | {rate:.1f} | {rate / ref:.2f}× |" if rate >= 10 else
            f"| {k} | {rate:.3f} | {rate / ref:.2f}× |")
  if args.split and not args.skip_torch:
    model_ms = model_part_ms(model, hf, labels, size, ch)
    print(f"\nWhere a step goes ({n} images; step = {n} / images·steps/s; 'rest' = step − "
          "model: jitter, priors, Adam, clipping, loop)\n"
          "| loop | step ms | model fwd + bwd ms | rest ms |\n|---|---:|---:|---:|")
    for k, m in (("jaxprune", model_ms[0]), ("torch eager", model_ms[1])):
      step = 1e3 * n / statistics.median(rows[k])
      print(f"| {k} | {step:.1f} | {m:.1f} | {step - m:.1f} |")


if __name__ == "__main__":
  main()
