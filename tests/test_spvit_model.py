"""SPViT search space: gate maths, weight sharing, derive and materialise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import build_model, dense_spec, load, macs, save_model
from jaxprune.models.gates import (Gate, flops_path, op_coefficients, sample_st, single_path,
                                   threshold_surrogate)
from jaxprune.models.blocks import conv_same
from jaxprune.models.spvit import (SearchOptions, build_search_model, collapse_conv,
                                   conv_kernel_position)
from jaxprune.methods.spvit.surgery import derive_arch, materialise, search_macs


def _sig(z):
  return 1 / (1 + np.exp(-z))


def test_sample_st_forward_is_hard_and_gradient_is_relaxed():
  theta = jnp.array([-2.0, -0.3, 0.0, 0.4, 3.0])
  key = jax.random.key(7)
  g = sample_st(theta, key, temperature=0.5)
  u = np.asarray(jax.random.uniform(key, theta.shape, minval=1e-6, maxval=1 - 1e-6))
  soft = _sig((np.asarray(theta) + np.log(u) - np.log1p(-u)) / 0.5)
  np.testing.assert_array_equal(g, (soft > 0.5).astype(np.float32))
  grad = jax.grad(lambda t: jnp.sum(sample_st(t, key, 0.5) * jnp.arange(5.0)))(theta)
  np.testing.assert_allclose(grad, np.arange(5.0) * soft * (1 - soft) / 0.5, rtol=1e-4)


def test_sample_st_frequency_follows_sigmoid():
  theta = jnp.full((20000,), 0.8)
  g = sample_st(theta, jax.random.key(0))
  assert float(g.mean()) == pytest.approx(_sig(0.8), abs=0.01)


def test_threshold_surrogate_value_and_gradient():
  theta = jnp.array([-1.0, -1e-3, 0.5, 2.0])
  np.testing.assert_array_equal(threshold_surrogate(theta), [0, 0, 1, 1])
  grad = jax.grad(lambda t: jnp.sum(threshold_surrogate(t)))(theta)
  s = _sig(np.asarray(theta))
  expected = _sig(s - 0.5) * (1 - _sig(s - 0.5)) * s * (1 - s)
  np.testing.assert_allclose(grad, expected, rtol=1e-5)


STATES = [tuple(int(b) for b in f"{i:03b}") for i in range(8)]  # hard (g0, g1, g2)
W = np.array([1.0, 10.0, 100.0])  # L = Σ w_i c_i separates the three entries' gradients


def _reference_dl_dg(g, detach_entries: bool) -> np.ndarray:
  """dL/dg for c = (g0, g0·g1, g0·g1·g2), written out by hand. With `detach_entries` (the
  reference's training path, `single_path_init`): entry c0 is detached when c0 and c1 are on,
  entry c1 when c2 is on; the factors inside the products are never detached."""
  g0, g1, g2 = g
  c = np.cumprod(g)
  live0 = not (detach_entries and c[0] and c[1])
  live1 = not (detach_entries and c[2])
  return np.array([W[0] * live0 + W[1] * g1 * live1 + W[2] * g1 * g2,
                   W[1] * g0 * live1 + W[2] * g0 * g2,
                   W[2] * g0 * g1])


@pytest.mark.parametrize("state", STATES)
def test_training_path_gate_gradients_match_the_reference(state):
  key, tau = jax.random.key(3), 0.7
  u = np.asarray(jax.random.uniform(key, (3,), minval=1e-6, maxval=1 - 1e-6))
  noise = np.log(u) - np.log1p(-u)
  theta = jnp.asarray(-noise + np.where(np.array(state) > 0, 0.9, -0.6), jnp.float32)
  soft = _sig((np.asarray(theta) + noise) / tau)
  f = lambda t: single_path(sample_st(t, key, tau))  # noqa: E731
  np.testing.assert_array_equal(f(theta), np.cumprod(state))
  grad = jax.grad(lambda t: jnp.sum(f(t) * W))(theta)
  want = _reference_dl_dg(np.array(state, float), True) * soft * (1 - soft) / tau
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("state", STATES)
def test_flops_path_gate_gradients_match_the_reference(state):
  theta = jnp.asarray(np.where(np.array(state) > 0, 0.8, -0.5), jnp.float32)
  f = lambda t: flops_path(threshold_surrogate(t))  # noqa: E731
  np.testing.assert_array_equal(f(theta), np.cumprod(state))
  grad = jax.grad(lambda t: jnp.sum(f(t) * W))(theta)
  s = _sig(np.asarray(theta))
  surrogate = _sig(s - 0.5) * (1 - _sig(s - 0.5)) * s * (1 - s)
  want = _reference_dl_dg(np.array(state, float), False) * surrogate
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


def test_msa_on_still_moves_every_gate():
  """The deviation issue 9 fixed: with msa chosen, θ0 and θ1 used to get no gradient at all."""
  key = jax.random.key(0)
  u = np.asarray(jax.random.uniform(key, (3,), minval=1e-6, maxval=1 - 1e-6))
  theta = jnp.asarray(1.0 + np.abs(np.log(u) - np.log1p(-u)), jnp.float32)  # > 0, sampled on
  for f in (lambda t: single_path(sample_st(t, key, 1.0)),
            lambda t: flops_path(threshold_surrogate(t))):
    np.testing.assert_array_equal(f(theta), [1, 1, 1])  # msa chosen
    assert np.all(np.asarray(jax.grad(lambda t: jnp.sum(f(t) * W))(theta)) != 0)


def test_search_block_uses_both_paths():
  sm = build_search_model(build_model(SPEC, seed=1), SearchOptions())
  block = sm.blocks[0]
  block.theta_attn[...] = jnp.asarray([0.8, 0.8, 0.8])

  def grad_of(key):
    loss = lambda b: jnp.sum(b.gates(key)[0] * W)  # noqa: E731
    return np.asarray(nnx.grad(loss, argnums=nnx.DiffState(0, Gate))(block)["theta_attn"][...])

  s = _sig(0.8)
  surrogate = _sig(s - 0.5) * (1 - _sig(s - 0.5)) * s * (1 - s)
  np.testing.assert_allclose(grad_of(None), _reference_dl_dg(np.ones(3), False) * surrogate,
                             rtol=1e-5)
  assert grad_of(jax.random.key(0))[0] != 0  # g0 learns through c1 and c2 on the training path


def test_op_coefficients_pick_one_op():
  for k, op in enumerate(("skip", "conv1", "conv3", "msa")):
    c = jnp.asarray([1.0] * k + [0.0] * (3 - k))
    coef = {o: float(v) for o, v in op_coefficients(c).items()}
    assert coef == {o: float(o == op) for o in ("msa", "conv3", "conv1")}


def test_conv3_kernel_order_matches_explicit_convolution():
  """k = 3·column + row, centre 4: check against Σ_k W_k y[p + δ_k] written out by hand."""
  rng = np.random.default_rng(0)
  c, h, d, g = 6, 2, 3, 4
  qkv_k = jnp.asarray(rng.normal(size=(c, 3 * h * d)), jnp.float32)
  qkv_b = jnp.asarray(rng.normal(size=(3 * h * d,)), jnp.float32)
  proj_k = jnp.asarray(rng.normal(size=(h * d, c)), jnp.float32)
  mix = jnp.asarray(rng.normal(size=(h, 9)), jnp.float32)
  kernel, bias, _ = collapse_conv(qkv_k, qkv_b, proj_k, mix, h, d, 3, alpha=1.0)
  y = rng.normal(size=(1, 1 + g * g, c)).astype(np.float32)
  got = np.asarray(conv_same(jnp.asarray(y[:, 1:].reshape(1, g, g, c)), kernel, bias))[0]
  p = np.asarray(jax.nn.softmax(mix, axis=0))
  wv = np.asarray(qkv_k)[:, 2 * h * d:].reshape(c, h, d)
  bv = np.asarray(qkv_b)[2 * h * d:].reshape(h, d)
  grid = y[0, 1:].reshape(g, g, c)
  want = np.zeros((g, g, d), np.float32)
  for i in range(g):
    for j in range(g):
      for row in range(3):
        for col in range(3):
          k = conv_kernel_position(row, col)
          ii, jj = i + row - 1, j + col - 1
          w_k = np.einsum("h,chd->cd", p[:, k], wv)
          if 0 <= ii < g and 0 <= jj < g:
            want[i, j] += grid[ii, jj] @ w_k
      want[i, j] += np.einsum("hk,hd->d", p, bv)
  assert conv_kernel_position(1, 1) == 4
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


SPEC = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5, depth=4,
                  distilled=True)
X = jax.random.normal(jax.random.key(0), (3, 16, 16, 3))


def _nonzero_biases(model, seed=2):
  """Every parameter (biases, LayerNorm offsets included) nudged away from its initial value, so
  an equivalence test catches a bias that surgery drops (initial biases are all zero)."""
  state = nnx.state(model, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(state))))
  nnx.update(model, jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), state))
  return model


# Gate logits that choose each op (thresholds at 0): θ = (≥conv1, ≥conv3, msa).
OPS = {"msa": [1, 1, 1], "conv3": [1, 1, -1], "conv1": [1, -1, 1], "none": [-1, 1, 1]}


def gated_search_model(spec, x, ops, seed=0, weight_sharing=True, **opts):
  """A search model over a dense model with non-zero biases, its gates set to `ops` (one per
  block), random FFN gates and mixing matrices, BatchNorm statistics moved by one batch `x`."""
  sm = build_search_model(_nonzero_biases(build_model(spec, seed=1)),
                          SearchOptions(weight_sharing=weight_sharing, **opts))
  if not weight_sharing:
    _nonzero_biases(sm, seed=5)  # the candidates' own biases too
  rng = np.random.default_rng(seed)
  for b, op in zip(sm.blocks, ops):
    b.theta_attn[...] = jnp.asarray(OPS[op], jnp.float32)
    b.theta_mlp[...] = jnp.asarray(rng.normal(size=b.theta_mlp.shape), jnp.float32)
    b.mix[...] = jnp.asarray(rng.normal(size=b.mix.shape), jnp.float32)
  sm(x, train=True)  # BatchNorm statistics away from their initial values
  return sm


def _search_model(ffn_group=2, seed=0, weight_sharing=True):
  return gated_search_model(SPEC, X, ("msa", "conv3", "conv1", "none"), seed, weight_sharing,
                            ffn_group=ffn_group)


def test_search_model_with_all_gates_on_is_the_dense_model():
  dense = build_model(SPEC, seed=1)
  np.testing.assert_array_equal(build_search_model(dense, SearchOptions())(X), dense(X))


@pytest.mark.parametrize("weight_sharing", [True, False])
def test_materialised_model_equals_gated_model(tmp_path, weight_sharing):
  sm = _search_model(weight_sharing=weight_sharing)
  arch = derive_arch(sm)
  assert [b.attn for b in arch.blocks] == ["msa", "conv3", "conv1", "none"]
  compact = materialise(sm, arch)
  np.testing.assert_allclose(compact(X), sm(X), atol=1e-5)
  save_model(str(tmp_path / "pruned"), compact)
  np.testing.assert_allclose(load(str(tmp_path / "pruned"))(X), sm(X), atol=1e-5)


def test_fully_pruned_mlp_keeps_its_bias_and_group_size(tmp_path):
  sm = _search_model(ffn_group=4)
  sm.blocks[0].theta_mlp[...] = -jnp.ones_like(sm.blocks[0].theta_mlp[...])
  arch = derive_arch(sm)
  assert arch.blocks[0].mlp == 0 and all(b.mlp % 4 == 0 for b in arch.blocks)
  assert arch.blocks[0].mlp_bias  # the search block still adds fc2's bias: so must the compact one
  compact = materialise(sm, arch)
  np.testing.assert_allclose(compact(X), sm(X), atol=1e-5)
  np.testing.assert_array_equal(compact.blocks[0].mlp_bias[...], sm.blocks[0].mlp.fc2.bias[...])
  save_model(str(tmp_path / "m"), compact)
  reloaded = load(str(tmp_path / "m"))
  assert reloaded.spec == arch and macs(arch) < macs(SPEC)
  np.testing.assert_allclose(reloaded(X), sm(X), atol=1e-5)


def test_search_macs_equal_derived_arch_macs():
  sm = _search_model()
  gates, masks = zip(*[b.gates(None) for b in sm.blocks])
  f = search_macs(SPEC, gates, masks, [b.head_dim for b in sm.blocks])
  assert float(f) == macs(derive_arch(sm))


def budget_gradient_matches_telescoping_reference(spec, state):
  """The gradient of SPViT's whole budget term λ·(F_target − F)² w.r.t. every block's θ_attn,
  with every block's gates in hard `state` (g0, g1, g2), against the reference's telescoping
  attention MACs written out: F_attn = c0·F1 + c1·(F3 − F1) + c2·(Fm − F3), c = cumprod(g)."""
  from jaxprune.arch import BlockSpec
  from jaxprune.methods.spvit import budget_loss
  sm = build_search_model(build_model(spec, seed=1), SearchOptions(ffn_group=2))
  rng = np.random.default_rng(sum(state))
  theta = np.where(np.array(state) > 0, 0.9, -0.4)
  for b in sm.blocks:  # every block in `state`, θ varied so the surrogate slopes differ
    b.theta_attn[...] = jnp.asarray(theta + rng.uniform(-0.2, 0.2, 3), jnp.float32)
    b.theta_mlp[...] = jnp.asarray(rng.normal(size=b.theta_mlp.shape), jnp.float32)
  target, weight = 0.4 * macs(spec), 3.0
  f = macs(derive_arch(sm))  # hard gates: the budget's F is the derived architecture's MACs
  grads = nnx.clone(sm)  # a model holding the gradient in its gates: read by block
  nnx.update(grads, nnx.grad(lambda m: budget_loss(m, target, weight)[0],
                             argnums=nnx.DiffState(0, Gate))(sm))
  g0, g1, g2 = np.array(state, float)
  for i, (b, shape) in enumerate(zip(spec.blocks, spec.block_shapes())):
    def cost(attn, b=b, shape=shape):  # the attention sub-layer (with its LayerNorm) alone
      d = spec.head_dim_of(b)
      windowed = attn != "conv1"  # a 1×1 conv runs on the whole grid
      one = (BlockSpec("msa", heads=b.heads, head_dim=b.head_dim, window=b.window, shift=b.shift)
             if attn == "msa" else BlockSpec(attn, conv_dim=d, window=b.window * windowed,
                                             shift=b.shift * windowed))
      return one.macs(shape, d)
    f1, f3, fm = cost("conv1"), cost("conv3"), cost("msa")
    df_dg = np.array([f1 + g1 * (f3 - f1) + g1 * g2 * (fm - f3),
                      g0 * (f3 - f1) + g0 * g2 * (fm - f3),
                      g0 * g1 * (fm - f3)])
    t = np.asarray(sm.blocks[i].theta_attn[...], np.float64)
    s = _sig(t)
    surrogate = _sig(s - 0.5) * (1 - _sig(s - 0.5)) * s * (1 - s)
    want = -2 * weight * (target - f) / 1e18 * df_dg * surrogate
    np.testing.assert_allclose(np.asarray(grads.blocks[i].theta_attn[...]), want, rtol=2e-4,
                               err_msg=f"block {i}, state {state}")


@pytest.mark.parametrize("state", STATES)
def test_budget_gradient_is_the_references_telescoping_sum(state):
  budget_gradient_matches_telescoping_reference(SPEC, state)


def _choice_config(arch="", stop="first", target=0.8):
  import ml_collections
  return ml_collections.ConfigDict({"spvit": {"arch": arch, "stop": stop, "target_ratio": target,
                                              "tolerance": 0.1}})


def test_choose_arch_by_step_band_file_and_automatic(tmp_path):
  from jaxprune.methods.spvit import choose_arch
  from jaxprune.methods.spvit.surgery import encode_arch, gate_masks
  sm = _search_model()
  a = derive_arch(sm)
  b = a.replace_block(0, attn="conv3", heads=0, conv_dim=a.head_dim)
  history = [{"step": 4, "macs_ratio": 0.95, "accuracy": 0.9, "arch": a.to_dict(),
              "ffn_groups": gate_masks(sm)},
             {"step": 8, "macs_ratio": macs(b) / macs(SPEC), "accuracy": 0.8,
              "arch": b.to_dict(), "ffn_groups": gate_masks(sm)}]
  assert choose_arch(_choice_config("step:8"), sm, history)[0] == b
  with pytest.raises(Exception, match=r"no architecture was recorded at that step; recorded "
                                      r"steps: \[4, 8\]"):
    choose_arch(_choice_config("step:5"), sm, history)
  arch, masks, how = choose_arch(_choice_config("macs:0.5-1.0"), sm, history)
  assert (arch, how["step"]) == (a, 4)  # the more accurate of the two in the band
  with pytest.raises(Exception, match="no recorded architecture has a MACs ratio in"):
    choose_arch(_choice_config("macs:0.1-0.2"), sm, history)
  # An ArchSpec file: FFN groups kept by the largest gate logits.
  narrow = a.replace_block(1, mlp=2, mlp_bias=False)
  (tmp_path / "a.json").write_text(narrow.to_json())
  arch, masks, _ = choose_arch(_choice_config(str(tmp_path / "a.json")), sm, history)
  assert arch == narrow and masks is None
  best = int(np.argmax(np.asarray(sm.blocks[1].theta_mlp[...])))
  encode_arch(sm, arch)
  assert derive_arch(sm) == narrow and gate_masks(sm)[1][best] == "1"
  # stop="end", automatic: the most accurate recorded within tolerance of the target.
  arch, _, how = choose_arch(_choice_config(stop="end", target=0.95), sm, history)
  assert (arch, how["chosen_by"], how["step"]) == (a, "best recorded within tolerance", 4)


def test_unreachable_arch_is_refused():
  from jaxprune.errors import UserError
  from jaxprune.methods.spvit.surgery import check_reachable
  sm = _search_model()
  a = derive_arch(sm)
  with pytest.raises(UserError, match="block 1 .* is not in the search space"):
    check_reachable(sm, a.replace_block(1, mlp=3, mlp_bias=False), "spvit.arch")
  with pytest.raises(UserError, match="does not prune this model"):
    check_reachable(sm, a.replace(width=64), "spvit.arch")


def test_convs_from_the_attention_values_equal_the_collapsed_convolutions():
  """A global-attention search block computes the weight-shared conv3 and conv1 from the
  attention's own values (and their output products as one) instead of convolving y with the
  collapsed kernels: the same mixed output and gradients (the coefficients' too), with one and
  two prefix tokens, train and eval."""
  for distilled in (False, True):
    spec = dense_spec("test_micro", image_size=20, patch_size=4, num_classes=5,
                      distilled=distilled)
    model = build_search_model(build_model(spec, seed=0), SearchOptions())
    block = model.blocks[1]
    block.mix[...] = 0.02 * jax.random.normal(jax.random.key(1), block.mix.shape)
    for i, bias in enumerate((block.attn.qkv.bias, block.attn.proj.bias)):  # (init: zeros)
      bias[...] = 0.1 * jax.random.normal(jax.random.key(10 + i), bias.shape)
    y = jax.random.normal(jax.random.key(2), (3, block.num_prefix + 25, spec.width))
    graphdef, state = nnx.split(block)

    coef = {"msa": jnp.float32(0.3), "conv3": jnp.float32(0.5), "conv1": jnp.float32(-0.7)}
    w = jax.random.normal(jax.random.key(3), y.shape)

    def output(st, y, coef, shared, train):
      b = nnx.merge(graphdef, st)
      if shared:
        return b.shared_candidates(y, train, coef)
      return (coef["msa"] * b.attn(y) + coef["conv3"] * b.conv_op(y, 3, train)
              + coef["conv1"] * b.conv_op(y, 1, train))

    for train in (False, True):
      ours, ref = (output(state, y, coef, s, train) for s in (True, False))
      np.testing.assert_allclose(np.asarray(ours), np.asarray(ref),
                                 atol=2e-5 * float(jnp.abs(ref).max()))
      loss = lambda st, y, c, s: jnp.sum(output(st, y, c, s, train) * w)  # noqa: E731
      g_ours, g_ref = (jax.grad(loss, argnums=(0, 1, 2))(state, y, coef, s) for s in (True, False))
      # one scale for all: under BatchNorm's batch statistics a bias gradient is rounding noise
      scale = max(float(jnp.abs(r).max()) for r in jax.tree.leaves(g_ref))
      for a, r in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-5 * scale)
