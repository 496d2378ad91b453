"""Model inversion: DC-ViT's synthetic metric set, made from the dense model alone.

From Gaussian noise, minimise over the images x̃ (in the model's normalised input space)

    CE(f(jitter(x̃)), y) + α_tv·Σ_dirs ‖Δ_dir jitter(x̃)‖₂^β + α_l2·‖x̃‖₂ [+ α_bn·R_bn]

with four TV directions (down, right, and both diagonals). CE and the L2 term are means over the
images; the TV norm is taken over groups of `tv_group` images and averaged over the groups. The
reference (DeepInversion's code, batches of 50) takes one norm over its whole batch, √50 times
stronger per image than a norm per image: `tv_group` 50 follows it, 1 is the per-image norm.
A random roll of up to ±`jitter`
pixels (±30 at 224, scaled to the image size) and a random horizontal flip each step; as in the
reference the TV prior sees the jittered image (the roll's seam included). Adam
(β 0.5, 0.9) with linear warm-up then cosine; pixels clipped to the valid range after every step;
the lowest-loss batch is kept. On a CNN (a model with `bn_layers()`), `bn_weight` > 0 adds
DeepInversion's BatchNorm-statistics prior R_bn = Σ_l w_l (‖μ_l − μ̂_l‖₂ + ‖σ²_l − σ̂²_l‖₂),
the batch statistics of each BatchNorm's input against its running ones, w = 10 for the first
BatchNorm and 1 for the others (DESIGN §4; weight 0.01 there). The loop is a jitted `lax.scan` (run in ~10 chunks so that
progress can be reported between them), the batch sharded on the mesh, deterministic per seed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxprune.atomic import replacing
from jaxprune.errors import UserError
from jaxprune.models.precision import compute_dtype, set_compute_dtype
from jaxprune.train.mesh import data_sharding


@dataclasses.dataclass(frozen=True)
class InversionConfig:
  steps: int = 2000
  lr: float = 0.25
  warmup_steps: int = 100
  tv_weight: float = 1e-4
  tv_exponent: float = 1.0   # β: 1.0 for DeiT/Swin, 0.6 for ViT
  l2_weight: float = 1e-5
  jitter: int = -1           # ± pixels; -1 = 30 at 224, scaled to the image size
  flip: bool = True
  tv_group: int = 50         # images per TV norm: 50 = the reference's batch, 1 = per image
  bn_weight: float = 0.0     # α_bn: DeepInversion's BatchNorm-statistics prior (CNNs); 0 = off
  compute_dtype: str = "float32"  # the model's, as train.compute_dtype (models/precision.py)


LABEL_BATCH = 50  # the reference draws 50 distinct classes per batch of images


def labels_for(n: int, num_classes: int, seed: int = 0, batch: int = LABEL_BATCH) -> np.ndarray:
  """Target labels of `n` synthetic images, drawn as the reference does: for each `batch`
  consecutive images, random distinct classes (its `random.sample(range(1000), 50)` per batch),
  so every class can be targeted whatever `n` is. A batch larger than the class count takes
  whole random permutations of the classes (each class ⌊b/K⌋ or ⌈b/K⌉ times). Seeded."""
  rng = np.random.default_rng(seed)
  out = []
  for start in range(0, n, batch):
    size = min(batch, n - start)
    perms = [rng.permutation(num_classes) for _ in range(-(-size // num_classes))]
    out.append(np.concatenate(perms)[:size])
  return np.concatenate(out).astype(np.int32) if out else np.zeros((0,), np.int32)


def total_variation(x: jax.Array, exponent: float, group: int = 1) -> jax.Array:
  """Σ over 4 directions of ‖Δx‖₂^β, the norm over each group of `group` consecutive images
  (the last group may be smaller), averaged over the groups. x: [B,H,W,C]."""
  diffs = (x[:, 1:, :] - x[:, :-1, :], x[:, :, 1:] - x[:, :, :-1],
           x[:, 1:, 1:] - x[:, :-1, :-1], x[:, 1:, :-1] - x[:, :-1, 1:])
  groups = -(-x.shape[0] // group)
  which = jnp.arange(x.shape[0]) // group
  sq = [jax.ops.segment_sum(jnp.sum(d**2, axis=(1, 2, 3)), which, groups) for d in diffs]
  return jnp.mean(sum(jnp.sqrt(s + 1e-12)**exponent for s in sq))


def invert(model: nnx.Module, labels: np.ndarray, cfg: InversionConfig, mesh, *, seed: int,
           mean: Sequence[float], std: Sequence[float],
           progress: Callable[[int, int, float, float, float], None] | None = None
           ) -> dict[str, Any]:
  """Synthesises one image per label. Returns `images` (normalised, [B,H,W,C]), `pixels`
  (uint8), `loss_curve` (per step), `best_loss`, `seconds`, `images_per_s`. `progress(step,
  steps, loss, best loss, seconds)` is called about ten times along the way."""
  spec = model.spec
  size, ch = spec.image_size, spec.in_channels
  mean = jnp.broadcast_to(jnp.asarray(mean, jnp.float32), (ch,))
  std = jnp.broadcast_to(jnp.asarray(std, jnp.float32), (ch,))
  lo, hi = (0 - mean) / std, (1 - mean) / std
  jitter = cfg.jitter if cfg.jitter >= 0 else max(1, round(30 * size / 224))
  if cfg.bn_weight > 0:
    if not hasattr(model, "bn_layers"):
      raise UserError(f"synthetic.bn_weight = {cfg.bn_weight}: the BatchNorm-statistics prior "
                      f"needs a CNN; a {spec.family!r} model has no BatchNorm layers to read")
    model = nnx.clone(model)
    for j, layer in enumerate(model.bn_layers()):
      layer.stat_weight = 10.0 if j == 0 else 1.0
  graphdef, state = nnx.split(model)
  dtype = compute_dtype(cfg.compute_dtype, "synthetic.compute_dtype")
  tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup_steps,
                                                                      cfg.steps - 1), cfg.steps),
                  b1=0.5, b2=0.9)
  data = data_sharding(mesh)
  n = len(labels)
  pad = -n % mesh.size  # the batch must split evenly over the mesh: pad, then drop the extras
  padded = np.concatenate([np.asarray(labels), np.asarray(labels)[:pad]]) if pad else labels
  y = jax.device_put(jnp.asarray(padded), data)

  def loss_fn(x, key):
    k_roll, k_flip = jax.random.split(key)
    dy, dx = jax.random.randint(k_roll, (2,), -jitter, jitter + 1)
    xa = jnp.roll(x, (dy, dx), axis=(1, 2))
    if cfg.flip:
      xa = jnp.where(jax.random.bernoulli(k_flip), xa[:, :, ::-1], xa)
    net = set_compute_dtype(nnx.merge(graphdef, state), dtype)
    logits = net(xa, train=False)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    prior = (cfg.tv_weight * total_variation(xa, cfg.tv_exponent, cfg.tv_group)
             + cfg.l2_weight * jnp.mean(jnp.sqrt(jnp.sum(x**2, axis=(1, 2, 3)))))
    if cfg.bn_weight > 0:
      prior = prior + cfg.bn_weight * sum(jax.tree.leaves(nnx.pop(net, nnx.Intermediate)))
    return ce + prior, ce

  def step(carry, i):
    x, opt, best_x, best = carry
    (loss, ce), g = jax.value_and_grad(loss_fn, has_aux=True)(x, jax.random.fold_in(key, i))
    better = loss < best
    best_x = jnp.where(better, x, best_x)
    best = jnp.where(better, loss, best)
    updates, opt = tx.update(g, opt, x)
    x = jnp.clip(optax.apply_updates(x, updates), lo, hi)
    return (x, opt, best_x, best), (loss, ce)

  @jax.jit
  def run(carry, indices):  # one chunk of the loop: a jitted lax.scan over global step indices
    return jax.lax.scan(step, carry, indices)

  key = jax.random.key(seed)
  x0 = jax.random.normal(jax.random.fold_in(key, cfg.steps), (len(padded), size, size, ch))
  x0 = jax.device_put(jnp.clip(x0, lo, hi), data)
  carry = (x0, tx.init(x0), x0, jnp.asarray(jnp.inf, jnp.float32))
  # The loop runs in ~10 chunks (a function of `steps` alone, so the result does not depend on
  # whether anyone watches) so that long inversions can report progress between them.
  chunk = -(-cfg.steps // 10)
  starts = list(range(0, cfg.steps, chunk))
  programs = {}
  for length in {min(chunk, cfg.steps - a) for a in starts}:  # compiled before the clock starts
    programs[length] = run.lower(carry, jnp.arange(length)).compile()
  t0 = time.perf_counter()
  losses, ces = [], []
  for a in starts:
    indices = jnp.arange(a, min(a + chunk, cfg.steps))
    carry, (loss, ce) = programs[len(indices)](carry, indices)
    losses.append(np.asarray(loss))
    ces.append(np.asarray(ce))
    if progress is not None:
      progress(a + len(indices), cfg.steps, float(losses[-1][-1]), float(carry[3]),
               time.perf_counter() - t0)
  _, _, best_x, best = jax.block_until_ready(carry)
  losses, ces = np.concatenate(losses), np.concatenate(ces)
  seconds = time.perf_counter() - t0
  images = np.asarray(best_x)[:n]
  pixels = np.clip(np.round((images * np.asarray(std) + np.asarray(mean)) * 255), 0, 255)
  return {"images": images, "pixels": pixels.astype(np.uint8), "labels": np.asarray(labels),
          "loss_curve": losses, "ce_curve": ces,
          "best_loss": float(best), "seconds": seconds,
          "images_per_s": len(padded) * cfg.steps / seconds}


def jpeg_roundtrip(images: np.ndarray, mean: Sequence[float], std: Sequence[float],
                   quality: int = 75, eval_crop: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """What the reference's metric set goes through between inversion and use: each image
  rescaled to its own [min, max] → [0, 255] (torchvision `save_image(normalize=True,
  scale_each=True)`, which does not undo the normalisation), saved as JPEG at `quality` (PIL's
  default 75 is what it gets), read back through the eval view (`data.eval_crop`; DeiT's 0.875
  is the reference's Resize(256) + CenterCrop(224)) and normalised again. Returns (normalised
  images, the uint8 pixels as read back)."""
  import io

  from PIL import Image

  from jaxprune.data.transforms import eval_view
  n, size, _, ch = images.shape
  lo = images.min(axis=(1, 2, 3), keepdims=True)
  hi = images.max(axis=(1, 2, 3), keepdims=True)
  pixels = np.clip((images - lo) / np.maximum(hi - lo, 1e-5) * 255 + 0.5, 0, 255).astype(np.uint8)
  back = []
  for p in pixels:
    buf = io.BytesIO()
    Image.fromarray(p[..., 0] if ch == 1 else p).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    img = np.asarray(Image.open(buf).convert("L" if ch == 1 else "RGB"))
    img = img[..., None] if img.ndim == 2 else img
    back.append(eval_view(img, size, eval_crop) if eval_crop > 0 else img)
  back = np.stack(back)
  mean = np.broadcast_to(np.asarray(mean, np.float32), (ch,))
  std = np.broadcast_to(np.asarray(std, np.float32), (ch,))
  return ((back.astype(np.float32) / 255.0 - mean) / std).astype(np.float32), back


def save(directory: str, result: dict[str, Any], columns: int = 10) -> tuple[str, str]:
  """Writes `synthetic.npz` (images, pixels, labels, loss curve) and `synthetic.png` (a grid)."""
  from PIL import Image
  os.makedirs(directory, exist_ok=True)
  npz = os.path.join(directory, "synthetic.npz")
  with replacing(npz, "wb") as f:  # DC-ViT reuses an existing file on a rerun: never half of one
    np.savez_compressed(f, images=result["images"], pixels=result["pixels"],
                        labels=result["labels"], loss_curve=result["loss_curve"])
  pixels = result["pixels"]
  n, h, w, c = pixels.shape
  rows = -(-n // columns)
  grid = np.zeros((rows * (h + 2), columns * (w + 2), c), np.uint8)
  for i in range(n):
    r, q = divmod(i, columns)
    grid[r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = pixels[i]
  scale = max(1, 256 // max(h, 1))
  img = Image.fromarray(grid[..., 0] if c == 1 else grid)
  img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  png = os.path.join(directory, "synthetic.png")
  img.save(png)
  return npz, png
