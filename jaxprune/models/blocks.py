"""Transformer blocks and their sub-layers, dense and compact.

Parameter names follow the timm layout (`norm1`, `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1`,
`mlp.fc2`) so checkpoints map by name. The compact kinds are the ones pruning produces: a block
with no attention sub-layer, a bottleneck-convolution attention, and a narrowed MLP (any `mlp`
width).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec, BlockSpec, Shape, normalised
from jaxprune.errors import UserError
from jaxprune.models import tome

_kernel_init = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()


def check_images(images: jax.Array, spec: ArchSpec, model: str) -> None:
  """Raises ValueError unless `images` is [batch, H, W, C_in] as `spec` expects."""
  if images.shape[1:] != (spec.image_size, spec.image_size, spec.in_channels):
    raise ValueError(f"{model} expects NHWC images of shape [batch, {spec.image_size}, "
                     f"{spec.image_size}, {spec.in_channels}], got {list(images.shape)}")


def check_patches(spec: ArchSpec) -> None:
  """A patch embedding needs the image size to be a multiple of the patch size."""
  if spec.image_size % spec.patch_size:
    raise UserError(f"ArchSpec: image_size {spec.image_size} is not divisible by "
                    f"patch_size {spec.patch_size}")


def softmax32(logits: jax.Array) -> jax.Array:
  """Softmax over the last axis computed in float32, returned in the logits' dtype (bfloat16
  attention logits under mixed precision keep an accurate normaliser)."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(logits.dtype)


def linear(din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, kernel_init=_kernel_init, bias_init=_zeros, rngs=rngs)


def layer_norm(width: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=eps, rngs=rngs)


class PatchEmbed(nnx.Conv):
  """The p×p, stride-p patch embedding: an `nnx.Conv` (the same parameters, `kernel`
  [p, p, C_in, C] and `bias`) computed as patchify + one matmul. The same numbers up to float
  summation order; its gradient with respect to the images (the synthetic-set inversion's) is
  a reshape, where XLA's CPU backend emits a strided transposed convolution: 8 images at 224 px,
  patch 16, width 48 took 0.21 s for that gradient against 7.5 ms as a matmul (108 s under the
  test suite's LLVM -O0)."""

  def __init__(self, in_channels: int, width: int, patch: int, *, rngs: nnx.Rngs):
    super().__init__(in_channels, width, (patch, patch), strides=(patch, patch),
                     padding="VALID", rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.kernel_size[0]
    b, h, w, c = x.shape
    gh, gw = h // p, w // p  # VALID: a remainder row or column of pixels is left out
    x = x[:, :gh * p, :gw * p].reshape(b, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, gh, gw, p * p * c)
    kernel = self.kernel[...].reshape(p * p * c, -1)
    bias = None if self.bias is None else self.bias[...]
    x, kernel, bias = self.promote_dtype((x, kernel, bias), dtype=self.dtype)
    y = x @ kernel
    return y if bias is None else y + bias


class Classifier(nnx.Module):
  """What every family's model shares: `model(images)` = `logits(features(images))`."""

  def __call__(self, images: jax.Array, train: bool = False, return_dist: bool = False,
               **block_kwargs):
    return self.logits(self.features(images, train=train, **block_kwargs),
                       return_dist=return_dist)


class PooledClassifier(Classifier):
  """A classifier with one head on the token (or position) average."""

  def logits(self, feats: jax.Array, return_dist: bool = False):
    """Head on the token average (one head: `return_dist` gives it twice, as ViT does)."""
    logits = self.head(feats.mean(axis=1))
    return (logits, logits) if return_dist else logits


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection (timm layout: q heads, k heads, v heads).

  `heads` may be fewer than the dense model's: each head keeps the model's `head_dim`.
  """

  def __init__(self, width: int, heads: int, head_dim: int, *, rngs: nnx.Rngs):
    self.heads, self.head_dim = heads, head_dim
    inner = heads * head_dim
    self.qkv = linear(width, 3 * inner, rngs)
    self.proj = linear(inner, width, rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self.attend(x)[0]

  def attend(self, x: jax.Array, size: jax.Array | None = None,
             dim_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The attention output and ToMe's matching metric (the keys averaged over heads,
    [B, N, head_dim]); with `size` [B, N, 1] (tokens standing for several patches), ToMe's
    proportional attention: log(size) of each key added to the logits; with `dim_mask`
    [heads, head_dim], q, k and v scaled per head dimension (ViT-Slim's soft mask)."""
    return self.combine(*self.heads_first(x, dim_mask), size)

  def heads_first(self, x: jax.Array, dim_mask: jax.Array | None = None):
    """q, k, v, each [B, heads, N, head_dim] (with their biases)."""
    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim)
    if dim_mask is not None:
      qkv = qkv * dim_mask.astype(qkv.dtype)
    # a split (its gradient one concatenation, where unpacking the leading axis costs a pad and
    # an add per operand in the backward pass)
    return tuple(t[0] for t in jnp.split(qkv.transpose(2, 0, 3, 1, 4), 3))

  def combine(self, q: jax.Array, k: jax.Array, v: jax.Array,
              size: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """`attend` from `heads_first`'s q, k, v."""
    b, _, n, _ = q.shape
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * self.head_dim**-0.5, k)
    if size is not None:
      logits = logits + jnp.log(size)[:, None, None, :, 0].astype(logits.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", softmax32(logits), v).transpose(0, 2, 1, 3)
    return self.proj(out.reshape(b, n, self.heads * self.head_dim)), k.mean(axis=1)


def relative_position_index(window: int) -> np.ndarray:
  """[w², w²] index into the (2w-1)² relative position bias table: query i, key j →
  (dy + w - 1)·(2w - 1) + (dx + w - 1), with (dy, dx) the offset of i from j."""
  ys, xs = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
  coords = np.stack([ys.ravel(), xs.ravel()])            # [2, w²]
  rel = coords[:, :, None] - coords[:, None, :] + window - 1
  return rel[0] * (2 * window - 1) + rel[1]


def shift_mask(grid: int, window: int, shift: int) -> np.ndarray:
  """[windows, w², w²] additive mask of shifted-window attention on a `grid`² map (already padded
  to a multiple of `window`): after the cyclic shift a window may hold patches from up to four
  regions that were not neighbours; pairs from different regions get -100 (as in Swin)."""
  idx = np.arange(grid)
  region = (idx >= grid - window).astype(int) + (idx >= grid - shift)
  labels = region[:, None] * 3 + region[None, :]
  n = grid // window
  labels = labels.reshape(n, window, n, window).transpose(0, 2, 1, 3).reshape(n * n, -1)
  return np.where(labels[:, None, :] != labels[:, :, None], -100.0, 0.0).astype(np.float32)


def to_windows(x: jax.Array, window: int) -> jax.Array:
  """[B, H, W, C] → [B, windows, w², C] (row-major windows, row-major patches inside)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def from_windows(x: jax.Array, grid: int, window: int) -> jax.Array:
  """Inverse of `to_windows` for a `grid`² map."""
  b, _, _, c = x.shape
  n = grid // window
  x = x.reshape(b, n, n, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid, grid, c)


def to_shifted_windows(x: jax.Array, grid: int, window: int, shift: int) -> jax.Array:
  """Tokens [B, grid², C] → windows [B, nw, window², C] as Swin's window ops see them: the map
  zero-padded at the bottom/right to a multiple of the window, then rolled by -shift."""
  b, _, c = x.shape
  gp = -(-grid // window) * window
  x = x.reshape(b, grid, grid, c)
  if gp != grid:
    x = jnp.pad(x, ((0, 0), (0, gp - grid), (0, gp - grid), (0, 0)))
  if shift:
    x = jnp.roll(x, (-shift, -shift), axis=(1, 2))
  return to_windows(x, window)


def from_shifted_windows(x: jax.Array, grid: int, window: int, shift: int) -> jax.Array:
  """Inverse of `to_shifted_windows`: [B, nw, window², C] → tokens [B, grid², C]."""
  gp = -(-grid // window) * window
  x = from_windows(x, gp, window)
  if shift:
    x = jnp.roll(x, (shift, shift), axis=(1, 2))
  return x[:, :grid, :grid].reshape(x.shape[0], grid * grid, x.shape[-1])


class WindowAttention(Attention):
  """Swin's (shifted) window attention: self-attention inside non-overlapping window² patches
  with a learned relative position bias per head; with `shift`, the map is rolled by -shift first
  (and back after), with the mask that keeps formerly distant patches apart. A grid that is not
  a multiple of the window is zero-padded at the bottom/right (as the reference does)."""

  def __init__(self, width: int, heads: int, head_dim: int, window: int, shift: int, grid: int,
               *, rngs: nnx.Rngs):
    super().__init__(width, heads, head_dim, rngs=rngs)
    self.window, self.shift, self.grid = window, shift, grid
    self.relative_position_bias_table = nnx.Param(nnx.initializers.truncated_normal(0.02)(
        rngs.params(), ((2 * window - 1)**2, heads), jnp.float32))

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    g, w, s = self.grid, self.window, self.shift
    win = to_shifted_windows(x, g, w, s)                              # [B, nw, w², C]
    qkv = self.qkv(win).reshape(*win.shape[:3], 3, self.heads, self.head_dim)
    q, k, v = qkv.transpose(3, 0, 1, 4, 2, 5)  # heads first: [B, nw, heads, w², head_dim] each
    logits = jnp.einsum("bnhqd,bnhkd->bnhqk", q * self.head_dim**-0.5, k)
    bias = self.relative_position_bias_table[...][relative_position_index(w)]  # [w², w², h]
    logits = logits + bias.transpose(2, 0, 1)
    if s:
      logits = logits + shift_mask(-(-g // w) * w, w, s)[None, :, None]
    out = jnp.einsum("bnhqk,bnhkd->bnhqd", softmax32(logits), v).transpose(0, 1, 3, 2, 4)
    out = self.proj(out.reshape(*win.shape[:3], self.heads * self.head_dim))
    return from_shifted_windows(out, g, w, s)


def on_patch_maps(x: jax.Array, fn, num_prefix: int, grid: int, window: int = 0,
                  shift: int = 0) -> jax.Array:
  """Applies `fn` ([maps, h, w, C] → [maps, h, w, C]) to the patch tokens of x [B, N, C] laid
  out as maps: the whole `grid`² map (window 0), or each `window`² window after Swin's padding
  and cyclic shift (`to_shifted_windows`), so that a convolution zero-pads at window borders.
  Prefix tokens (class, distillation) are returned unchanged."""
  b, _, c = x.shape
  prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
  if window:
    win = to_shifted_windows(patches, grid, window, shift)
    nw = win.shape[1]
    out = fn(win.reshape(b * nw, window, window, c))
    out = from_shifted_windows(out.reshape(b, nw, window * window, -1), grid, window, shift)
  else:
    out = fn(patches.reshape(b, grid, grid, c)).reshape(b, grid * grid, -1)
  return jnp.concatenate([prefix, out], axis=1) if num_prefix else out


def conv_same(maps: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  """Zero-padded ("SAME") stride-1 convolution of NHWC maps with an HWIO kernel, plus bias, in
  the maps' dtype (SPViT's collapsed kernels are float32 under bfloat16 compute)."""
  z = jax.lax.conv_general_dilated(maps, kernel.astype(maps.dtype), (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return z + jnp.asarray(bias, z.dtype)


class ConvAttention(nnx.Module):
  """Bottleneck convolution in the attention slot: k×k conv C→d (+bias) → BN → ReLU → 1×1 d→C.

  Runs on the patch grid (zero padding), or, with `window`, inside each (shifted) window of a
  Swin block, zero-padded at the window borders (what SPViT's search on Swin computes).
  Prefix tokens (class, distillation) are not convolved: their output is the normalised input
  token itself, as in SPViT.
  """

  def __init__(self, width: int, conv_dim: int, kernel_size: int, num_prefix: int, *,
               grid: int, window: int = 0, shift: int = 0, rngs: nnx.Rngs):
    self.num_prefix, self.grid, self.window, self.shift = num_prefix, grid, window, shift
    self.conv = nnx.Conv(width, conv_dim, (kernel_size, kernel_size), padding="SAME",
                         kernel_init=_kernel_init, bias_init=_zeros, rngs=rngs)
    self.bn = nnx.BatchNorm(conv_dim, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.proj = linear(conv_dim, width, rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    def bottleneck(maps):
      return self.proj(jax.nn.relu(self.bn(self.conv(maps), use_running_average=not train)))
    return on_patch_maps(x, bottleneck, self.num_prefix, self.grid, self.window, self.shift)


_INV_SQRT2 = np.float32(1 / np.sqrt(2))


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU written as 0.5·x·(1 + erf(x/√2)).

  Same function as `jax.nn.gelu(approximate=False)`, which lowers through erfc; XLA's CPU erf is
  a single rational polynomial, 3× faster forward (4160×768: 0.68 vs 2.02 ms), and within one
  float32 ulp of the exact value.
  """
  # The constant in x's dtype: a NumPy float32 scalar is not weakly typed and would promote a
  # bfloat16 x (mixed precision) to float32 for the whole activation.
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(_INV_SQRT2, x.dtype)))


class Mlp(nnx.Module):
  """fc1 → exact GELU → fc2. Any hidden width: a narrowed MLP is just a smaller `hidden`."""

  def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs):
    self.fc1 = linear(width, hidden, rngs)
    self.fc2 = linear(hidden, width, rngs)

  def narrowed(self, keep) -> "Mlp":
    """A new MLP of the hidden units `keep` (indices, in order): fc1's columns and biases and
    fc2's rows; fc2's bias as it is. The one narrowing SPViT's materialise and DC-ViT's
    compressed block share."""
    keep = np.asarray(keep, np.int64)
    out = nnx.eval_shape(lambda: Mlp(self.fc1.in_features, len(keep), rngs=nnx.Rngs(0)))
    out.fc1.kernel.set_value(self.fc1.kernel[...][:, keep])
    out.fc1.bias.set_value(self.fc1.bias[...][keep])
    out.fc2.kernel.set_value(self.fc2.kernel[...][keep])
    out.fc2.bias.set_value(self.fc2.bias[...])
    return out

  def __call__(self, x: jax.Array, unit_mask: jax.Array | None = None) -> jax.Array:
    """`unit_mask` [hidden]: the hidden units scaled after the activation (ViT-Slim)."""
    h = gelu(self.fc1(x))
    return self.fc2(h if unit_mask is None else h * unit_mask.astype(h.dtype))


def drop_path(x: jax.Array, drop: tuple[float, jax.Array] | None) -> jax.Array:
  """Stochastic depth on a residual branch `x` [B, ...]: with `drop` = (rate, key) each sample's
  branch is kept with probability 1 − rate and scaled by 1 / (1 − rate); None = identity."""
  if drop is None:
    return x
  rate, key = drop
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def branch_drops(drop: tuple[float, jax.Array] | None) -> tuple:
  """A block's `drop` = (rate, key) as one (rate, key) per residual branch (attention, MLP),
  each with its own key; (None, None) when off."""
  if drop is None:
    return None, None
  k1, k2 = jax.random.split(drop[1])
  return (drop[0], k1), (drop[0], k2)


def block_maker(own, make_block):
  """`make_block(spec, layer, index, rngs, shape)`, falling back to the family's `own` builder
  where it is None or returns None (a method replaces some blocks, the family builds the rest)."""
  if make_block is None:
    return own

  def make(*args):
    block = make_block(*args)
    return own(*args) if block is None else block

  return make


def layer_is_block(module) -> bool:
  """A model layer is a block (counted by stochastic depth, given the block kwargs) unless its
  class says `is_block = False` (patch merging, downsampling)."""
  return getattr(type(module), "is_block", True)


def _maybe_remat(fn, remat: bool):
  """`fn(layer, *args)` under `nnx.remat` (its activations recomputed in the backward pass
  instead of kept) when `remat`."""
  return nnx.remat(fn) if remat else fn


def apply_layers(layers, x: jax.Array, train: bool, drop_rate: float = 0.0,
                 drop_key: jax.Array | None = None, remat: bool = False,
                 **block_kwargs) -> jax.Array:
  """Runs `layers` in order. In training, with `drop_key` and `drop_rate` > 0, block i of n
  (patch merging layers are not blocks) drops its residual branches at rate
  drop_rate·i/(n − 1), the linear rule of DeiT and Swin; `block_kwargs` go to every block.
  When a block merges tokens (ToMe), the blocks from it on run `Block.forward`, which carries
  the tokens' sizes to the next. `remat` (`train.remat`): every block rematerialised — its
  activations are recomputed in the backward pass, not stored (less memory, one more forward)."""
  n = sum(layer_is_block(layer) for layer in layers)
  i, size = 0, None
  for layer in layers:
    if not layer_is_block(layer):
      x = layer(x)
      continue
    extra = {}
    rate = drop_rate * i / max(n - 1, 1)
    if train and drop_key is not None and rate > 0:
      extra["drop"] = (rate, jax.random.fold_in(drop_key, i))
    kw = {"train": train, **extra, **block_kwargs}
    if size is not None or getattr(layer, "merge_r", 0):
      x, size = _maybe_remat(lambda m, x, size: m.forward(x, size, **kw), remat)(layer, x, size)
    else:
      x = _maybe_remat(lambda m, x: m(x, **kw), remat)(layer, x)
    i += 1
  return x


class Block(nnx.Module):
  """Pre-norm block `x + attn(norm1(x))` then `x + mlp(norm2(x))`; either sub-layer may be absent.

  The attention slot is built by the block's attention kind (`registry.attention`); `shape` is
  the input shape the block sits at (default: the stem's, where every ViT block is).
  """

  def __init__(self, spec: ArchSpec, block: BlockSpec, *, rngs: nnx.Rngs,
               shape: Shape | None = None):
    shape = shape or spec.stem_shape
    c = shape.width
    self.norm1, self.attn = registry.attention(block.attn).build(spec, block, shape, rngs)
    if block.mlp:
      self.norm2 = layer_norm(c, spec.ln_eps, rngs)
      self.mlp = Mlp(c, block.mlp, rngs=rngs)
    else:
      self.norm2 = self.mlp = None
    # A pruned-away MLP's output bias (BlockSpec.mlp_bias): x + b.
    self.mlp_bias = nnx.Param(jnp.zeros((c,), jnp.float32)) if block.mlp_bias else None
    # ToMe: tokens merged after the attention (clipped at this block's input shape).
    self.merge_r = block.merged(shape)
    self.prefix = (spec.class_token, spec.dist_token)
    self.keep_tokens = block.keep_tokens  # token pruning: patches kept at the input

  def without_attention(self) -> None:
    """Removes the attention sub-layer and its LayerNorm (in place): `x + mlp(norm2(x))`."""
    self.norm1 = self.attn = None

  def without_mlp(self) -> None:
    """Removes the MLP sub-layer (in place), keeping fc2's bias as the block's learned vector
    (`BlockSpec.mlp_bias`): what an MLP with every hidden unit pruned computes."""
    if self.mlp is not None:
      self.mlp_bias = nnx.data(nnx.Param(self.mlp.fc2.bias[...]))
    self.norm2 = self.mlp = None

  def layer_spec(self, template: BlockSpec) -> BlockSpec:
    """The BlockSpec of this block as its modules now are; `template` (the spec it was built
    from) for what modules do not record (head_dim's default, the kind's other fields)."""
    if self.attn is None:
      attn = {"attn": "norm" if self.norm1 is not None else "none", "heads": 0, "conv_dim": 0}
    elif isinstance(self.attn, ConvAttention):
      attn = {"attn": f"conv{self.attn.conv.kernel_size[0]}", "heads": 0,
              "conv_dim": self.attn.conv.out_features, "window": self.attn.window,
              "shift": self.attn.shift}
    else:
      attn = {"attn": "msa", "heads": self.attn.heads, "conv_dim": 0}
    mlp = self.mlp.fc1.out_features if self.mlp is not None else 0
    return normalised(dataclasses.replace(template, **attn, mlp=mlp,
                                          mlp_bias=self.mlp_bias is not None,
                                          keep_tokens=self.keep_tokens))

  def __call__(self, x: jax.Array, train: bool = False,
               drop: tuple[float, jax.Array] | None = None) -> jax.Array:
    """`drop` = (rate, key): stochastic depth on each residual branch (training only). A block
    that merges tokens returns fewer of them (without their sizes: `forward` keeps them)."""
    return self.forward(x, None, train=train, drop=drop)[0]

  def forward(self, x: jax.Array, size: jax.Array | None, train: bool = False,
              drop: tuple[float, jax.Array] | None = None) -> tuple[jax.Array, Any]:
    """The block on tokens x [B, N, C] of sizes `size` [B, N, 1] (patches per token after
    ToMe's merging; None: one each): (output tokens, their sizes). Attention is proportional
    to the sizes, and `merge_r` tokens are merged after it (`jaxprune.models.tome`)."""
    d1, d2 = branch_drops(drop)
    if self.keep_tokens:  # token pruning: prefix tokens, then the kept patches
      p = sum(self.prefix)
      keep = np.concatenate([np.arange(p), p + np.asarray(self.keep_tokens)])
      x, size = x[:, keep], None if size is None else size[:, keep]
    dim_mask, unit_mask = self.masks()
    on_attn, on_mlp = self.branches_on()
    scale = self.token_mask()
    if self.attn is not None:
      h = self.norm1(x) if scale is None else self.norm1(x) * scale[:, None].astype(x.dtype)
      if isinstance(self.attn, Attention) and (size is not None or self.merge_r
                                               or dim_mask is not None):
        y, metric = self.attn.attend(h, size, dim_mask)
      else:
        y, metric = self.attn(h, train=train), None
      x = x + drop_path(_scaled(y, on_attn), d1)
      if self.merge_r:
        x, size = tome.bipartite_merge(x, size, metric, self.merge_r, *self.prefix)
    elif self.norm1 is not None:  # attn "norm"
      x = x + drop_path(_scaled(self.norm1(x), on_attn), d1)
    if self.mlp is not None:
      h = self.norm2(x) if scale is None else self.norm2(x) * scale[:, None].astype(x.dtype)
      x = x + drop_path(_scaled(self.mlp(h, unit_mask), on_mlp), d2)
    elif self.mlp_bias is not None:
      x = x + drop_path(_scaled(jnp.broadcast_to(self.mlp_bias[...], x.shape), on_mlp), d2)
    return x, size

  def masks(self) -> tuple[jax.Array | None, jax.Array | None]:
    """Soft masks over the attention's head dimensions and the MLP's hidden units (None: none;
    ViT-Slim's search block has them, `jaxprune.models.slim`)."""
    return None, None

  def token_mask(self) -> jax.Array | None:
    """A soft mask [tokens] scaling the normalised input of both sub-layers per token (None:
    none; ViT-Slim's search block has one, `jaxprune.models.slim`)."""
    return None

  def branches_on(self) -> tuple[jax.Array | None, jax.Array | None]:
    """0/1 scalars switching the attention and the MLP branch (None: always on; the trial
    blocks of DC-ViT and PRACTISE have them, `jaxprune.models.masked`)."""
    return None, None


def _scaled(y: jax.Array, on: jax.Array | None) -> jax.Array:
  """A residual branch times its 0/1 switch (`Block.branches_on`; None: on)."""
  return y if on is None else y * on.astype(y.dtype)


# Attention kinds ---------------------------------------------------------------------------------
# Each owns its MACs, parameters and module (`registry.AttentionKind`); N tokens, C width,
# D = heads·head_dim, HW patch positions (the padded grid inside windows).
def _msa_macs(b: BlockSpec, shape: Shape, head_dim: int, attention_matmuls: bool,
              norm: int) -> int:
  d, na, c = b.heads * head_dim, b.attn_tokens(shape), shape.width
  total = 3 * na * c * d + na * d * c + norm * shape.tokens * c
  if attention_matmuls:
    total += 2 * na * (b.window**2 if b.window else na) * d
  return total


def _msa_params(b: BlockSpec, shape: Shape, head_dim: int) -> int:
  c, d = shape.width, b.heads * head_dim
  bias_table = (2 * b.window - 1)**2 * b.heads if b.window else 0
  return 2 * c + (c * 3 * d + 3 * d) + (d * c + c) + bias_table


def _msa_build(spec: ArchSpec, b: BlockSpec, shape: Shape, rngs: nnx.Rngs):
  c, d = shape.width, spec.head_dim_of(b)
  attn = (WindowAttention(c, b.heads, d, b.window, b.shift, shape.grid, rngs=rngs) if b.window
          else Attention(c, b.heads, d, rngs=rngs))
  return layer_norm(c, spec.ln_eps, rngs), attn


def _conv_macs(b: BlockSpec, shape: Shape, head_dim: int, attention_matmuls: bool,
               norm: int) -> int:
  c, k2 = shape.width, b.kernel_size**2
  return (k2 * c * b.conv_dim + b.conv_dim * c) * b.conv_positions(shape) + norm * shape.tokens * c


def _conv_params(b: BlockSpec, shape: Shape, head_dim: int) -> int:
  c, d, k2 = shape.width, b.conv_dim, b.kernel_size**2
  return 2 * c + (k2 * c * d + d) + 2 * d + (d * c + c)


def _conv_build(spec: ArchSpec, b: BlockSpec, shape: Shape, rngs: nnx.Rngs):
  c = shape.width
  return layer_norm(c, spec.ln_eps, rngs), ConvAttention(
      c, b.conv_dim, b.kernel_size, shape.prefix, grid=shape.grid, window=b.window,
      shift=b.shift, rngs=rngs)


registry.register_attention(registry.AttentionKind(
    "msa", _msa_macs, _msa_params, _msa_build, fields=("heads", "head_dim", "window", "shift"),
    needs=("heads",), merges=True, summary="multi-head self-attention (in windows with window > 0)"))
registry.register_attention(registry.AttentionKind(
    "conv1", _conv_macs, _conv_params, _conv_build, fields=("conv_dim",), needs=("conv_dim",),
    summary="bottleneck 1x1 conv C -> conv_dim, BN, ReLU, 1x1 conv_dim -> C (SPViT)"))
registry.register_attention(registry.AttentionKind(
    "conv3", _conv_macs, _conv_params, _conv_build, fields=("conv_dim", "window", "shift"),
    needs=("conv_dim",), summary="bottleneck 3x3 conv C -> conv_dim, BN, ReLU, 1x1 "
    "conv_dim -> C (SPViT; inside windows with window > 0)"))
registry.register_attention(registry.AttentionKind(
    "none", lambda *a: 0, lambda *a: 0, lambda *a: (None, None),
    summary="no attention sub-layer (SPViT's skip, DC-ViT's compressed block)"))
registry.register_attention(registry.AttentionKind(
    "norm", lambda b, shape, hd, am, norm: norm * shape.tokens * shape.width,
    lambda b, shape, hd: 2 * shape.width,
    lambda spec, b, shape, rngs: (layer_norm(shape.width, spec.ln_eps, rngs), None),
    summary="x + LN1(x): the skip as the SPViT reference's fine-tuning code computes it"))


class LinearAdaptor(nnx.Module):
  """PRACTISE's stand-in for a dropped block: `x·W + b`, initialised to the identity."""

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    self.adaptor = nnx.Linear(width, width, kernel_init=lambda *_: jnp.eye(width),
                              bias_init=_zeros, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False, **unused) -> jax.Array:
    return self.adaptor(x)


class WithAdaptor(nnx.Module):
  """`layer` (a linear layer) with PRACTISE's identity-initialised linear adaptor right before
  it (`where="pre"`: layer(A·x)) or right after it (`"post"`: A·layer(x)), as the reference's
  forward hooks place them. Swapped in for the layer by assignment, trained alone, removed."""

  def __init__(self, layer: nnx.Linear, where: str, *, rngs: nnx.Rngs):
    if where not in ("pre", "post"):
      raise ValueError(f"WithAdaptor: where = {where!r}; allowed are pre, post")
    self.layer, self.where = layer, where
    self.practise_adaptor = LinearAdaptor(layer.in_features if where == "pre"
                                          else layer.out_features, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.where == "pre":
      return self.layer(self.practise_adaptor(x))
    return self.practise_adaptor(self.layer(x))


class PatchMerging(nnx.Module):
  """Swin patch merging (`MergeSpec`): [B, g², C] → [B, ⌈g/2⌉², out_width]. The four tokens of
  each 2×2 cell are concatenated in the order (0,0), (1,0), (0,1), (1,1) (row, column offsets),
  as in the reference; an odd grid is zero-padded at the bottom/right."""

  is_block = False

  def __init__(self, width: int, out_width: int, grid: int, eps: float, *, rngs: nnx.Rngs):
    self.grid = grid
    self.norm = layer_norm(4 * width, eps, rngs)
    self.reduction = nnx.Linear(4 * width, out_width, use_bias=False, kernel_init=_kernel_init,
                                rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False, **unused) -> jax.Array:
    b, _, c = x.shape
    g = self.grid
    x = x.reshape(b, g, g, c)
    if g % 2:
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        axis=-1)
    return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))
