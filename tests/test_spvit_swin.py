"""SPViT on Swin: the search space inside (shifted) windows, its kernel order, surgery, MACs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import build_model, load, macs, save_model
from jaxprune.arch import swin_spec
from jaxprune.errors import UserError
from jaxprune.models.blocks import conv_same, on_patch_maps
from jaxprune.models.spvit import (SearchOptions, build_search_model, collapse_conv,
                                   conv_kernel_position)
from jaxprune.methods.spvit.surgery import check_reachable, derive_arch, materialise, search_macs
from tests.test_spvit_model import (STATES, budget_gradient_matches_telescoping_reference,
                                     gated_search_model)

# grid 10 (windows of 4 pad it to 12, the second block shifted by 2), then grid 5 (padded to 8).
SPEC = swin_spec("swin_test", image_size=20, patch_size=2, num_classes=5, window=4)
X = jax.random.normal(jax.random.key(0), (3, 20, 20, 3))
def _search_model(ops, weight_sharing=True, seed=0):
  return gated_search_model(SPEC, X, ops, seed, weight_sharing, ffn_group=4, alpha=1.0)


def test_search_model_with_all_gates_on_is_the_dense_swin():
  dense = build_model(SPEC, seed=1)
  np.testing.assert_array_equal(build_search_model(dense, SearchOptions())(X), dense(X))


@pytest.mark.parametrize("ops, weight_sharing", [
    (("msa", "conv3", "conv1", "none"), True),    # conv3 in shifted, padded windows
    (("conv3", "none", "msa", "conv3"), True),    # conv3 in both stages, shifted in the second
    (("conv1", "conv3", "conv3", "conv1"), False)])
def test_materialised_swin_equals_gated_model(tmp_path, ops, weight_sharing):
  sm = _search_model(ops, weight_sharing)
  arch = derive_arch(sm)
  assert [b.attn for b in arch.blocks] == list(ops)
  convs = [b for b in arch.blocks if b.attn.startswith("conv")]
  # conv3 convolves inside the windows; a 1×1 conv is the same on the whole grid
  assert all((b.window, b.head_dim) == ((4, 0) if b.attn == "conv3" else (0, 0)) for b in convs)
  assert arch.blocks[1].shift == (2 if ops[1] in ("msa", "conv3") else 0)
  compact = materialise(sm, arch)
  np.testing.assert_allclose(compact(X), sm(X), atol=1e-5)
  save_model(str(tmp_path / "m"), compact)
  reloaded = load(str(tmp_path / "m"))
  assert reloaded.spec == arch
  np.testing.assert_allclose(reloaded(X), sm(X), atol=1e-5)


def test_search_macs_equal_derived_arch_macs_on_swin():
  sm = _search_model(("conv3", "conv1", "none", "msa"))
  gates, masks = zip(*[b.gates(None) for b in sm.blocks])
  f = search_macs(SPEC, gates, masks, [b.head_dim for b in sm.blocks])
  assert float(f) == macs(derive_arch(sm)) < macs(SPEC)


@pytest.mark.parametrize("state", STATES)
def test_budget_gradient_is_the_references_telescoping_sum_on_swin(state):
  budget_gradient_matches_telescoping_reference(SPEC, state)


def _explicit_window_conv(x, kernel, grid, window, shift):
  """Zero-pad the grid to a multiple of the window, roll by -shift, convolve each window alone
  (zero padding at window borders), roll back, crop: written out with loops."""
  gp = -(-grid // window) * window
  m = np.zeros((gp, gp, x.shape[-1]), np.float32)
  m[:grid, :grid] = x.reshape(grid, grid, -1)
  m = np.roll(m, (-shift, -shift), axis=(0, 1))
  out = np.zeros((gp, gp, kernel.shape[-1]), np.float32)
  for i in range(gp):
    for j in range(gp):
      wi, wj = i // window * window, j // window * window
      for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
          ii, jj = i + dr, j + dc
          if wi <= ii < wi + window and wj <= jj < wj + window:
            out[i, j] += m[ii, jj] @ kernel[dr + 1, dc + 1]
  out = np.roll(out, (shift, shift), axis=(0, 1))
  return out[:grid, :grid].reshape(grid * grid, -1)


@pytest.mark.parametrize("grid, window, shift", [(5, 4, 2), (6, 3, 1), (4, 4, 0)])
def test_conv_inside_shifted_windows_matches_explicit_loops(grid, window, shift):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, grid * grid, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 3, 2)).astype(np.float32)
  got = on_patch_maps(jnp.asarray(x), lambda m: conv_same(m, kernel, 0.0), 0, grid, window, shift)
  np.testing.assert_allclose(np.asarray(got)[0], _explicit_window_conv(x[0], kernel, grid, window,
                                                                       shift), atol=1e-4)


def test_swin_kernel_order_puts_the_centre_first_as_the_reference():
  """The Swin reference orders M's columns [centre, then column-major]: it builds the 3×3 kernel
  as cat(k[1:5], k[0], k[5:9]) laid out column-major. With 9 heads and M = 100·I, column j of M
  selects head j's value weights, so position (row, col) must hold head ref[3·col + row]."""
  ref = [1, 2, 3, 4, 0, 5, 6, 7, 8]
  h, d, c = 9, 2, 3
  rng = np.random.default_rng(1)
  qkv_k = jnp.asarray(rng.normal(size=(c, 3 * h * d)), jnp.float32)
  wv = np.asarray(qkv_k)[:, 2 * h * d:].reshape(c, h, d)
  kernel, _, _ = collapse_conv(qkv_k, jnp.zeros(3 * h * d), jnp.zeros((h * d, c)),
                               100 * jnp.eye(9), h, d, 3, alpha=1.0, centre_first=True)
  for row in range(3):
    for col in range(3):
      assert conv_kernel_position(row, col, centre_first=True) == ref[3 * col + row]
      np.testing.assert_allclose(kernel[row, col], wv[:, ref[3 * col + row]], atol=1e-5)
  conv1, _, _ = collapse_conv(qkv_k, jnp.zeros(3 * h * d), jnp.zeros((h * d, c)),
                              100 * jnp.eye(9), h, d, 1, alpha=1.0, centre_first=True)
  np.testing.assert_allclose(conv1[0, 0], wv[:, 0], atol=1e-5)  # conv1 = column 0


def test_unreachable_swin_arch_is_refused():
  sm = _search_model(("msa", "conv3", "conv1", "none"))
  arch = derive_arch(sm)
  check_reachable(sm, arch, "here")
  for bad in (arch.replace_block(1, shift=0),            # conv outside the searched windows
              arch.replace_block(1, window=0, shift=0),  # conv on the whole grid
              arch.replace_block(0, head_dim=8, heads=4)):
    with pytest.raises(UserError, match="not in the search space"):
      check_reachable(sm, bad, "here")


def test_grid_form_materialises_conv3_as_a_plain_conv_on_the_whole_grid():
  """`spvit.swin_conv = "grid"` (the reference's fine-tuned form): block 1's conv3, searched
  inside shifted, padded windows, becomes a 3×3 conv over the whole unshifted grid — same
  weights, written out here with the loops over one window as large as the grid — and no
  longer pays for the padding; a conv1 block is windowless in both forms."""
  from jaxprune.methods.spvit.surgery import conv_form
  sm = _search_model(("conv1", "conv3", "msa", "conv3"))
  arch = derive_arch(sm)
  grid = conv_form(arch, "grid")
  assert [(b.attn, b.window, b.shift) for b in grid.blocks] == [
      ("conv1", 0, 0), ("conv3", 0, 0), ("msa", 4, 0), ("conv3", 0, 0)]
  assert arch.blocks[0] == grid.blocks[0]
  assert (arch.blocks[1].window, arch.blocks[1].shift) == (4, 2)
  assert conv_form(arch, "window") == arch and macs(grid) < macs(arch)  # 10² vs 12² positions
  compact = materialise(sm, grid)
  windowed = materialise(sm, arch)
  np.testing.assert_allclose(windowed(X), sm(X), atol=1e-5)  # the gated function
  assert not np.allclose(compact(X), sm(X), atol=1e-3)       # ... which the grid form is not
  block, search_block = compact.layers[1], sm.blocks[1]
  y = np.asarray(block.norm1(jax.random.normal(jax.random.key(1), (2, 100, 32))))
  kernel, bias, out, out_bias = (np.asarray(a) for a in search_block.conv_parts(3))
  bn = search_block.bn3
  for i in range(2):
    z = _explicit_window_conv(y[i], kernel, 10, 10, 0) + bias
    z = (z - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + 1e-5)
    z = np.maximum(z * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...]), 0)
    np.testing.assert_allclose(np.asarray(block.attn(jnp.asarray(y[i:i + 1])))[0],
                               z @ out + out_bias, atol=1e-4)


def test_reference_skip_form_rebuilds_a_reference_model_exactly():
  """attn "norm" is the SPViT reference's fine-tuned skip, x + LN1(x), then the MLP: a block
  with hand-set weights computes exactly that; jaxprune's own skip ("none") adds nothing."""
  from flax import nnx
  from jaxprune import count
  from jaxprune.arch import ArchSpec, BlockSpec, dense_spec
  spec = dense_spec("test_micro", image_size=8, patch_size=4, num_classes=3, depth=1)
  spec = spec.replace(blocks=(BlockSpec("norm", mlp=16),))
  assert ArchSpec.from_json(spec.to_json()) == spec
  model = build_model(spec, seed=0)
  block, c = model.blocks[0], spec.width
  rng = np.random.default_rng(0)
  g, b = rng.normal(size=c).astype(np.float32), rng.normal(size=c).astype(np.float32)
  block.norm1.scale[...], block.norm1.bias[...] = jnp.asarray(g), jnp.asarray(b)
  x = rng.normal(size=(2, 5, c)).astype(np.float32)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  y = x + (x - mu) / np.sqrt(var + spec.ln_eps) * g + b
  np.testing.assert_allclose(np.asarray(block(jnp.asarray(x))),
                             np.asarray(y + block.mlp(block.norm2(jnp.asarray(y)))), atol=1e-5)
  counts = count(spec)
  assert counts.params == sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
  skip = count(spec.replace(blocks=(BlockSpec("none", mlp=16),)))
  assert counts.block_macs[0] == skip.block_macs[0] + spec.num_tokens * c  # one more LayerNorm
