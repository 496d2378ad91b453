"""SPViT search space: every MSA layer a nested single-path choice skip ⊂ conv1 ⊂ conv3 ⊂ msa, every
FFN a set of gated hidden-unit groups.

Weight sharing (DESIGN §3). The fused qkv keeps the dense layout: q,k serve `msa` only; v and the
output projection serve the bottleneck convolutions through a mixing matrix M [heads, 9] (init
ones), P = softmax(M / alpha, axis=heads). For kernel position k:
  W_k = Σ_h P[h,k] Wv_h   b_k = Σ_h P[h,k] bv_h   O_k = Σ_h P[h,k] Wo_h
  conv1: O_c · relu(BN1(W_c y + b_c)) + b_proj                 (c = 4, the centre)
  conv3: (Σ_k O_k) · relu(BN3(Σ_k W_k y[p+δ_k] + Σ_k b_k)) + b_proj   (zero padding, patch grid)
Kernel positions are numbered column-major: k = 3·column + row of the 3×3 window (centre 4),
as the DeiT reference does. The Swin reference puts the centre first (column 0 of M is the
centre, columns 1-8 the other positions column-major); Swin search blocks follow it.
Class/distillation tokens are not convolved: a conv op's output for them is the normalised token.
In a global-attention block the search computes conv3's pre-BN map from the attention's own
values, Σ_k W_k y[p+δ_k] = Σ_h Σ_k P[h,k] v°_h[p+δ_k] with v° = v − bv, as one spatial-mixing
matrix product (`SearchBlock.msa_and_conv3`; h·N·d multiply-adds per token instead of 9·C·d);
the materialised conv3 block convolves with the collapsed kernel (`collapse_conv`).

Swin (reference `SPViT_Swin`): the candidates sit in (shifted) window attention; the conv3
candidate runs inside each window of the block's cyclic shift, zero-padded at window borders
(the reference convolves the window tensor; the attention mask does not apply to them), and the
materialised block convolves the same windows (`BlockSpec.window/shift` on a conv block), so the
gated and the materialised model compute the same function (`spvit.swin_conv = "grid"`
materialises the reference's fine-tuned form instead: a plain conv on the whole grid). The
conv1 candidate, a 1×1 conv, is the same on the whole grid and runs there.

Parameter paths match the dense ViT (`blocks/i/attn/qkv`, ...), so dense weights load by name.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune.arch import ArchSpec, BlockSpec, Shape
from jaxprune.models.blocks import (Attention, Mlp, WindowAttention, branch_drops, conv_same,
                                    drop_path, gelu, layer_norm, on_patch_maps)
from jaxprune.models.gates import (GATE_INIT, Gate, flops_path, op_coefficients, sample_st,
                                   single_path, threshold_surrogate)
from jaxprune.models.build import build_model
from jaxprune.surgery import transplant


@dataclasses.dataclass(frozen=True)
class SearchOptions:
  alpha: float = 1e-2       # softmax temperature of the mixing matrix
  ffn_group: int = 1        # hidden units per FFN gate
  temperature: float = 1.0  # relaxed-Bernoulli temperature of the training path
  weight_sharing: bool = True  # False: the paper's multi-path ablation (own conv parameters)


class ConvCandidate(nnx.Module):
  """Multi-path ablation: a bottleneck conv candidate with its own randomly initialised weights
  (kernel [k, k, C, d], bias [d], output [d, C] and its bias), instead of sharing the MSA's."""

  def __init__(self, width: int, dim: int, size: int, *, rngs: nnx.Rngs):
    fan_in = size * size * width
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (size, size, width, dim))
                            * (2.0 / fan_in)**0.5)
    self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.out = nnx.Param(0.02 * jax.random.truncated_normal(rngs.params(), -2, 2, (dim, width)))
    self.out_bias = nnx.Param(jnp.zeros((width,), jnp.float32))


def conv_kernel_position(row: int, col: int, centre_first: bool = False) -> int:
  """Column k of the mixing matrix M serving window position (row, col) ∈ {0,1,2}²:
  column-major k = 3·col + row (centre 4), or with `centre_first` (the Swin reference) the centre
  at 0 and the other positions column-major after it."""
  k = 3 * col + row
  if not centre_first:
    return k
  return 0 if k == 4 else k + 1 if k < 4 else k


def collapse_conv(qkv_kernel, qkv_bias, proj_kernel, mix, heads: int, head_dim: int, size: int,
                  alpha: float, centre_first: bool = False):
  """The bottleneck conv of kernel `size` (1 or 3) collapsed from (v, proj, M).

  Returns (kernel [size, size, C, d], bias [d], out_kernel [d, C]) in flax layouts.
  """
  c, hd = qkv_kernel.shape[0], heads * head_dim
  wv = qkv_kernel[:, 2 * hd:].reshape(c, heads, head_dim)   # Wv_h as [C, h, d]
  bv = qkv_bias[2 * hd:].reshape(heads, head_dim)
  wo = proj_kernel.reshape(heads, head_dim, -1)             # Wo_h as [h, d, C]
  p = mixing(mix, alpha, centre_first)
  if size == 1:
    centre = p[:, 4]
    kernel = jnp.einsum("h,chd->cd", centre, wv)[None, None]
    return kernel, centre @ bv, jnp.einsum("h,hdc->dc", centre, wo)
  w = jnp.einsum("hk,chd->kcd", p, wv)                      # [9 (k = 3·col + row), C, d]
  kernel = w.reshape(3, 3, c, head_dim).transpose(1, 0, 2, 3)  # [row, col, C, d]
  total = p.sum(axis=1)
  return kernel, total @ bv, jnp.einsum("h,hdc->dc", total, wo)


@functools.lru_cache(maxsize=None)
def neighbour_shifts(grid: int) -> np.ndarray:
  """[9, N, N] (N = grid²): S[k, i, j] = 1 where patch j sits at kernel position k
  (k = 3·col + row) of the 3×3 window centred on patch i; rows at the border miss the
  positions outside the grid (zero padding)."""
  s = np.zeros((9, grid * grid, grid * grid), np.float32)
  for row in range(3):
    for col in range(3):
      for y in range(grid):
        for x in range(grid):
          yy, xx = y + row - 1, x + col - 1
          if 0 <= yy < grid and 0 <= xx < grid:
            s[3 * col + row, y * grid + x, yy * grid + xx] = 1
  return s


def mixing(mix, alpha: float, centre_first: bool = False):
  """P = softmax(M / alpha) over heads, [h, 9], its columns in column-major window order
  (k = 3·col + row, centre 4) whatever M's order."""
  p = jax.nn.softmax(mix / alpha, axis=0)
  return p[:, [conv_kernel_position(k % 3, k // 3, centre_first) for k in range(9)]]


class SearchBlock(nnx.Module):
  """A dense block turned into SPViT's search space (gates: `theta_attn` [3], `theta_mlp`)."""

  def __init__(self, spec: ArchSpec, block: BlockSpec, index: int, opts: SearchOptions, *,
               rngs: nnx.Rngs, shape: Shape | None = None):
    """`shape`: the block's input shape (default: the stem's, where every ViT block sits)."""
    if block.attn != "msa" or not block.mlp:
      raise ValueError(f"SPViT searches dense blocks (msa + MLP); block {index} is {block}")
    if block.mlp % opts.ffn_group:
      raise ValueError(f"spvit.ffn_group = {opts.ffn_group} does not divide the MLP width "
                       f"{block.mlp} of block {index}")
    shape = shape or spec.stem_shape
    c, d = shape.width, spec.head_dim_of(block)
    self.index, self.opts, self.num_prefix = index, opts, shape.prefix
    self.grid, self.window, self.shift = shape.grid, block.window, block.shift
    self.centre_first = bool(block.window)  # the Swin reference orders M's columns so
    self.heads, self.head_dim = block.heads, d
    self.norm1 = layer_norm(c, spec.ln_eps, rngs)
    if block.window:
      self.attn = WindowAttention(c, block.heads, d, block.window, block.shift, shape.grid,
                                  rngs=rngs)
    else:
      self.attn = Attention(c, block.heads, d, rngs=rngs)
    self.mix = nnx.Param(jnp.ones((block.heads, 9), jnp.float32))
    self.bn1 = nnx.BatchNorm(d, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.bn3 = nnx.BatchNorm(d, momentum=0.9, epsilon=1e-5, rngs=rngs)
    self.norm2 = layer_norm(c, spec.ln_eps, rngs)
    self.mlp = Mlp(c, block.mlp, rngs=rngs)
    if not opts.weight_sharing:
      self.conv1 = ConvCandidate(c, d, 1, rngs=rngs)
      self.conv3 = ConvCandidate(c, d, 3, rngs=rngs)
    self.theta_attn = Gate(jnp.full((3,), GATE_INIT, jnp.float32))
    self.theta_mlp = Gate(jnp.full((block.mlp // opts.ffn_group,), GATE_INIT, jnp.float32))

  def conv_parts(self, size: int):
    """(kernel [k, k, C, d], bias [d], out kernel [d, C], out bias [C]) of the conv candidate:
    collapsed from (v, proj, M) with weight sharing, else the candidate's own weights."""
    if not self.opts.weight_sharing:
      own = self.conv1 if size == 1 else self.conv3
      return own.kernel[...], own.bias[...], own.out[...], own.out_bias[...]
    kernel, bias, out = collapse_conv(self.attn.qkv.kernel[...], self.attn.qkv.bias[...],
                                      self.attn.proj.kernel[...], self.mix[...], self.heads,
                                      self.head_dim, size, self.opts.alpha, self.centre_first)
    return kernel, bias, out, self.attn.proj.bias[...]

  def conv_op(self, y: jax.Array, size: int, train: bool) -> jax.Array:
    """The conv candidate of kernel `size` on the patch grid, or inside the block's (shifted)
    windows on Swin; prefix tokens pass through."""
    kernel, bias, out, out_bias = self.conv_parts(size)
    bn = self.bn1 if size == 1 else self.bn3

    def bottleneck(maps):
      z = jax.nn.relu(bn(conv_same(maps, kernel, bias), use_running_average=not train))
      return z @ out + out_bias

    if size == 1:  # a 1×1 conv is the same on the whole grid: no windows (`arch.normalised`)
      return on_patch_maps(y, bottleneck, self.num_prefix, self.grid)
    return on_patch_maps(y, bottleneck, self.num_prefix, self.grid, self.window, self.shift)

  def candidates(self, y: jax.Array, train: bool, coef: dict[str, jax.Array]) -> jax.Array:
    """Σ over the candidate ops of coef[op] · op(y) (skip adds nothing)."""
    if self.opts.weight_sharing and not self.window:
      return self.shared_candidates(y, train, coef)
    return (coef["msa"] * self.attn(y) + coef["conv3"] * self.conv_op(y, 3, train)
            + coef["conv1"] * self.conv_op(y, 1, train))

  def shared_candidates(self, y: jax.Array, train: bool, coef: dict[str, jax.Array]):
    """`candidates` of a weight-shared global-attention block, both convs computed from the
    attention's own values instead of convolving y with their collapsed kernels. With
    v°_h = y·Wv_h (v without its bias), conv3's W_k y[p+δ_k] = Σ_h P[h,k] v°_h[p+δ_k], so its
    pre-BN map is one matrix product [N, h·N] × [h·N, d] (the 3×3 neighbourhoods and the zero
    padding are in the matrix; h·N·d multiply-adds per token instead of 9·C·d), and conv1's is
    Σ_h P[h, centre] v_h (h·d per token instead of C·d). Their two output products are one,
    [N, 2d] × [2d, C], each half scaled by its op's coefficient. The same function as the
    convolutions (tested)."""
    q, k, v = self.attn.heads_first(y)                         # [B, h, N, d] each
    msa = self.attn.combine(q, k, v)[0]
    h, d, hd, g = self.heads, self.head_dim, self.heads * self.head_dim, self.grid
    bv = self.attn.qkv.bias[...][2 * hd:].reshape(h, d)
    wo = self.attn.proj.kernel[...].reshape(h, d, -1)
    p = mixing(self.mix[...], self.opts.alpha, self.centre_first)
    total, centre = p.sum(axis=1), p[:, 4]
    # A[i, (h, j)] = P[h, k] where patch j is patch i's neighbour at kernel position k
    mix = jnp.einsum("hk,kij->ihj", p, neighbour_shifts(g)).reshape(g * g, h * g * g)
    vp = v[:, :, self.num_prefix:]
    v0 = vp - bv[None, :, None, :].astype(v.dtype)
    z3 = jnp.einsum("ik,bkd->bid", mix.astype(v.dtype), v0.reshape(v.shape[0], h * g * g, d))
    z3 = jax.nn.relu(self.bn3(z3 + (total @ bv).astype(z3.dtype), use_running_average=not train))
    z1 = jnp.einsum("h,bhnd->bnd", centre.astype(v.dtype), vp)
    z1 = jax.nn.relu(self.bn1(z1, use_running_average=not train))
    c3, c1 = coef["conv3"], coef["conv1"]
    out_kernel = jnp.concatenate([c3 * jnp.einsum("h,hdc->dc", total, wo),
                                  c1 * jnp.einsum("h,hdc->dc", centre, wo)])   # [2d, C]
    conv = jnp.concatenate([z3, z1], axis=-1) @ out_kernel.astype(z3.dtype)
    conv = conv + ((c3 + c1) * self.attn.proj.bias[...]).astype(z3.dtype)
    if self.num_prefix:  # the convs pass prefix tokens through
      conv = jnp.concatenate([(c3 + c1) * y[:, :self.num_prefix], conv.astype(y.dtype)], axis=1)
    return coef["msa"] * msa + conv

  def gates(self, key: jax.Array | None):
    """(nested attention gates c [3], FFN unit mask [hidden]); sampled when `key` is given."""
    if key is None:  # FLOPs path (and eval): thresholds with the surrogate gradient
      c = flops_path(threshold_surrogate(self.theta_attn[...]))
      g_mlp = threshold_surrogate(self.theta_mlp[...])
    else:  # training path: one straight-through sample
      k1, k2 = jax.random.split(jax.random.fold_in(key, self.index))
      c = single_path(sample_st(self.theta_attn[...], k1, self.opts.temperature))
      g_mlp = sample_st(self.theta_mlp[...], k2, self.opts.temperature)
    return c, jnp.repeat(g_mlp, self.opts.ffn_group)

  def __call__(self, x: jax.Array, train: bool = False, gate_key: jax.Array | None = None,
               drop: tuple[float, jax.Array] | None = None):
    c, mask = self.gates(gate_key)
    coef = op_coefficients(c)
    d1, d2 = branch_drops(drop)  # stochastic depth, as the dense block
    x = x + drop_path(self.candidates(self.norm1(x), train, coef), d1)
    h = gelu(self.mlp.fc1(self.norm2(x))) * mask
    return x + drop_path(self.mlp.fc2(h), d2)


def build_search_model(dense: nnx.Module, opts: SearchOptions) -> nnx.Module:
  """A search model (ViT or Swin) over `dense`'s spec, holding `dense`'s weights (mix, BN and
  gates fresh)."""
  model = build_model(dense.spec, 0, make_block=lambda s, b, i, rngs, shape: SearchBlock(
      s, b, i, opts, rngs=rngs, shape=shape))
  return transplant(dense, model)
