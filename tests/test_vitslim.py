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
  la, lm = l1(slim)
  assert float(la) == 4 * 64 and float(lm) == 4 * 128
  graphdef, gates, rest = nnx.split(slim, Gate, ...)
  grads = jax.grad(lambda g: sum(l1(nnx.merge(graphdef, g, rest))))(gates)
  assert all(bool((g == 1).all()) for g in jax.tree.leaves(grads))


def test_vitslim_refuses_a_pruned_model():
  spec = SPEC.replace_block(1, attn="conv3", heads=0, conv_dim=8)
  with pytest.raises(ValueError, match="block 1 is 'conv3'"):
    build_slim_model(build_model(spec))
