"""SPViT on Swin: the search space inside (shifted) windows, its kernel order, surgery, MACs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import build_model, load, macs, save_model
from jaxprune.accounting import search_macs
from jaxprune.arch import swin_spec
from jaxprune.errors import UserError
from jaxprune.models.blocks import conv_same, on_patch_maps
from jaxprune.models.spvit import (SearchOptions, build_search_model, collapse_conv,
                                   conv_kernel_position)
from jaxprune.surgery import check_reachable, derive_arch, materialise
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
  assert all((b.window, b.head_dim) == (4, 0) for b in convs)  # they convolve inside windows
  assert arch.blocks[1].shift == (2 if ops[1] != "none" else 0)
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
