"""ViT-Slim: the masked search model, exact slicing, the threshold for a MACs target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import build_model, count, dense_spec
from jaxprune.errors import UserError
from jaxprune.models.gates import Gate
from jaxprune.models.slim import build_slim_model, l1, masked_at, slice_model

SPEC = dense_spec("test_small", image_size=16, patch_size=4, num_classes=5, distilled=True)
X = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def _random_masks(model, seed=0):
  rng = np.random.default_rng(seed)
  for b in model.blocks:
    b.attn_zeta.set_value(jnp.asarray(rng.uniform(size=b.attn_zeta.shape), jnp.float32))
    b.mlp_zeta.set_value(jnp.asarray(rng.uniform(size=b.mlp_zeta.shape), jnp.float32))
  return model


def test_masks_start_at_one_in_their_own_pytree():
  dense = build_model(SPEC, seed=0)
  slim = build_slim_model(dense)
  np.testing.assert_array_equal(slim(X), dense(X))
  _, weights, gates, _ = nnx.split(slim, nnx.Param, Gate, ...)
  names = {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(gates))}
  assert names == {"attn_zeta", "mlp_zeta"}
  assert len(jax.tree.leaves(weights)) == len(jax.tree.leaves(nnx.state(dense, nnx.Param)))


@pytest.mark.parametrize("threshold", [0.3, 0.7, 0.99])
def test_slicing_computes_what_the_thresholded_masks_compute(threshold):
  slim = _random_masks(build_slim_model(build_model(SPEC, seed=1)))
  slim.blocks[2].attn_zeta.set_value(jnp.zeros((2, 32)))   # every head masked: one dim stays
  slim.blocks[3].mlp_zeta.set_value(jnp.zeros((128,)))     # every unit masked: fc2's bias
  sliced = slice_model(slim, threshold)
  np.testing.assert_allclose(sliced(X), masked_at(slim, threshold)(X), rtol=1e-5, atol=1e-5)
  held = sum(v.size for v in jax.tree.leaves(nnx.state(sliced, nnx.Param)))
  assert count(sliced.spec).params == held < count(SPEC).params
  b2, b3 = sliced.spec.blocks[2], sliced.spec.blocks[3]
  assert (b2.heads, b2.head_dim) == (1, 1) and (b3.mlp, b3.mlp_bias) == (0, True)
  widths = [b.heads * b.head_dim for b in sliced.spec.blocks]
  assert all(1 <= w <= 64 for w in widths)


def test_threshold_meets_the_macs_target_with_the_most_kept():
  from jaxprune.methods.vitslim import threshold_for
  slim = _random_masks(build_slim_model(build_model(SPEC, seed=2)), seed=3)
  dense = count(SPEC).macs
  for ratio in (0.8, 0.5):
    t, spec = threshold_for(slim, ratio * dense)
    assert count(spec).macs <= ratio * dense
    assert count(slice_model(slim, t).spec).macs == count(spec).macs
    lower = max(v for v in np.unique(np.concatenate([np.abs(np.asarray(b.masks()[i])).ravel()
                                                     for b in slim.blocks for i in (0, 1)]))
                if v < t)
    assert count(slice_model(slim, lower).spec).macs > ratio * dense
  with pytest.raises(UserError, match="below what slicing can reach"):
    threshold_for(slim, 0.01 * dense)


def test_l1_terms_and_their_gradient():
  slim = build_slim_model(build_model(SPEC, seed=0))
  la, lm, lt = l1(slim)
  assert float(la) == 4 * 64 and float(lm) == 4 * 128 and float(lt) == 0
  graphdef, gates, rest = nnx.split(slim, Gate, ...)
  grads = jax.grad(lambda g: sum(l1(nnx.merge(graphdef, g, rest))))(gates)
  assert all(bool((g == 1).all()) for g in jax.tree.leaves(grads))
  tok = build_slim_model(build_model(SPEC, seed=0), tokens=True)
  assert float(l1(tok)[2]) == pytest.approx(4 * 16 * np.tanh(3.0))
  graphdef, gates, rest = nnx.split(tok, Gate, ...)
  grads = jax.grad(lambda g: l1(nnx.merge(graphdef, g, rest))[2])(gates)
  for b in grads["blocks"].values():  # d|tanh ζ|/dζ at ζ = 3
    np.testing.assert_allclose(b["token_zeta"][...], 1 - np.tanh(3.0)**2, rtol=1e-5)


def test_token_masks_scale_each_patch_input_and_never_the_prefix():
  dense = build_model(SPEC, seed=0)
  slim = build_slim_model(dense, tokens=True)
  names = {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(
      nnx.to_pure_dict(nnx.state(slim, Gate)))}
  assert names == {"attn_zeta", "mlp_zeta", "token_zeta"}
  assert slim.blocks[0].token_mask().shape == (SPEC.num_tokens,)
  np.testing.assert_array_equal(slim.blocks[0].token_mask()[:2], 1.0)  # class, distillation
  assert not np.allclose(slim(X), dense(X), atol=1e-6)  # tanh(3) < 1 scales the patches
  for b in slim.blocks:
    b.token_zeta.set_value(jnp.full((16,), 20.0))  # tanh = 1 in float32
  np.testing.assert_allclose(slim(X), dense(X), rtol=1e-6, atol=1e-6)
  # A patch masked to 0 everywhere: its own attention and MLP inputs are 0, so its keys and
  # values are the projections' biases; the class token still sees it.
  blk = slim.blocks[0]
  x = dense.embed(X)
  z = np.full(16, 20.0, np.float32)
  z[5] = 0.0
  blk.token_zeta.set_value(jnp.asarray(z))
  h = dense.blocks[0].norm1(x).at[:, 2 + 5].set(0.0)
  want = x + dense.blocks[0].attn(h)
  want = want + dense.blocks[0].mlp(dense.blocks[0].norm2(want).at[:, 2 + 5].set(0.0))
  np.testing.assert_allclose(blk(x), want, rtol=1e-5, atol=1e-5)


def _reference_compress_patch(z, threshold):
  """The reference's `BaseModel.compress_patch`: from the last block back, a block's mask is
  its own (z >= threshold) or-ed with every later block's."""
  mask, out = np.zeros_like(z[0]), list(z)
  for i in range(len(z) - 1, -1, -1):
    mask = np.logical_or(mask, z[i] >= threshold).astype(np.float32)
    out[i] = mask
  return out


def test_kept_tokens_follow_the_reference_rule():
  from jaxprune.models.slim import kept_tokens, token_threshold, token_zetas
  slim = build_slim_model(build_model(SPEC, seed=0), tokens=True)
  rng = np.random.default_rng(0)
  for b in slim.blocks:
    b.token_zeta.set_value(jnp.asarray(rng.normal(1.0, 1.0, size=16), jnp.float32))
  assert token_threshold(slim, 1.0) is None and kept_tokens(slim, None) == [None] * 4
  for budget in (0.3, 0.7):
    t = token_threshold(slim, budget)
    z = token_zetas(slim)
    assert np.mean(np.concatenate(z) >= t) == pytest.approx(budget, abs=1 / 64)
    got = kept_tokens(slim, t)
    want = [tuple(np.flatnonzero(m).tolist()) for m in _reference_compress_patch(z, t)]
    assert got == want
    assert all(set(a) >= set(b) for a, b in zip(got, got[1:]))  # nested
  last = slim.blocks[3]
  last.token_zeta.set_value(jnp.full((16,), -5.0).at[7].set(-4.0))
  assert kept_tokens(slim, 0.99)[3] == (7,)  # one patch at least, the highest


def test_slicing_removes_the_dropped_tokens():
  """The sliced model with token pruning is the sliced model without it, its blocks run on the
  kept patches (gathered at their original positions before each block)."""
  from jaxprune.models.slim import kept_at, kept_tokens, token_threshold
  slim = _random_masks(build_slim_model(build_model(SPEC, seed=4), tokens=True), seed=5)
  rng = np.random.default_rng(6)
  for b in slim.blocks:
    b.token_zeta.set_value(jnp.asarray(rng.normal(1.0, 1.0, size=16), jnp.float32))
  tt = token_threshold(slim, 0.5)
  pruned, plain = slice_model(slim, 0.3, tt), slice_model(slim, 0.3)
  kept = kept_tokens(slim, tt)
  assert [b.pruned(s).patches for b, s in zip(pruned.spec.blocks, pruned.spec.block_shapes())] \
      == [len(k) for k in kept]
  assert [k.tokens for k in kept_at(slim, 0.3, tt)] == kept
  x = plain.embed(X)
  pos = np.arange(x.shape[1])
  for block, k in zip(plain.blocks, kept):
    idx = [np.flatnonzero(pos == p)[0] for p in [0, 1] + [2 + q for q in k]]
    x, pos = block(x[:, idx]), pos[idx]
  want = plain.logits(plain.norm(x))
  np.testing.assert_allclose(pruned(X), want, rtol=1e-5, atol=1e-5)
  assert count(pruned.spec).macs < count(plain.spec).macs
  graphdef, state = nnx.split(pruned)
  np.testing.assert_allclose(jax.jit(lambda s: nnx.merge(graphdef, s)(X))(state), want,
                             rtol=1e-5, atol=1e-5)


def test_vitslim_refuses_a_pruned_model():
  spec = SPEC.replace_block(1, attn="conv3", heads=0, conv_dim=8)
  with pytest.raises(ValueError, match="block 1 is 'conv3'"):
    build_slim_model(build_model(spec))
  with pytest.raises(ValueError, match="block 2 is 'msa' pruning tokens"):
    build_slim_model(build_model(SPEC.replace_block(2, keep_tokens=(0, 1))))


def test_keep_tokens_rules_round_trip_and_macs_against_xla():
  from jaxprune import ArchSpec, BlockSpec
  from jaxprune.accounting import xla_flops
  base = SPEC.replace_block(1, keep_tokens=(0, 3, 4, 9, 15)).replace_block(3, keep_tokens=(1, 2))
  assert [b.pruned(s).tokens for b, s in zip(base.blocks, base.block_shapes())] == [18, 7, 7, 4]
  again = ArchSpec.from_json(base.to_json())
  assert again == base and again.blocks[1].keep_tokens == (0, 3, 4, 9, 15)
  old = SPEC.to_dict()
  for layer in old["layers"]:
    del layer["keep_tokens"]
  assert ArchSpec.from_dict(old) == SPEC and BlockSpec().keep_tokens == ()
  for bad, match in [((3, 1), "increasing indices in \\[0, 16\\)"), ((0, 16), "in \\[0, 16\\)"),
                     (("a",), "list of patch indices")]:
    with pytest.raises(UserError, match=r"blocks\[1\].keep_tokens = .*" + match):
      SPEC.replace_block(1, keep_tokens=bad)
  with pytest.raises(UserError, match=r"blocks\[2\].keep_tokens: .*merging in block 0"):
    SPEC.replace_block(0, merge_r=2).replace_block(2, keep_tokens=(0, 1))
  with pytest.raises(UserError, match=r"blocks\[2\]: attn 'conv3' .* needs the patch grid"):
    SPEC.replace_block(1, keep_tokens=(0, 1)).replace_block(2, attn="conv3", heads=0, conv_dim=8)
  with pytest.raises(UserError, match=r"keep_tokens: token pruning needs .*family 'swin'"):
    dense_spec("swin_test", image_size=32, num_classes=10).replace_block(1, keep_tokens=(0,))
  # merging after (or in) the pruning block is fine: gathered first, then merged
  both = SPEC.replace_block(1, keep_tokens=tuple(range(10)), merge_r=3)
  assert both.out_shape.patches == 7
  # MACs: the blocks at their kept tokens, against XLA's count (as test_accounting's blocks)
  wide = dense_spec("test_small", width=256, num_heads=4, image_size=32, patch_size=4,
                    num_classes=10, depth=2).replace_block(1, keep_tokens=tuple(range(0, 64, 3)))
  graphdef, state = nnx.split(build_model(wide))
  xla = xla_flops(lambda s, x: nnx.merge(graphdef, s)(x), state, jnp.ones((1, 32, 32, 3))) / 2
  c = count(wide)
  tail = c.macs - sum(c.block_macs)
  assert c.block_macs[1] == pytest.approx(xla - tail - c.block_macs[0], rel=0.08)
  assert c.block_macs[1] < 0.4 * c.block_macs[0]
