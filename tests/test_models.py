import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import BlockSpec, Gate, build_model, dense_spec, load, save_model
from jaxprune.models import split_model

BASE = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5, depth=1)
KINDS = {
    "msa": BlockSpec("msa", heads=2, mlp=16),
    "msa_pruned_heads": BlockSpec("msa", heads=1, mlp=16),
    "conv1": BlockSpec("conv1", mlp=16, conv_dim=8),
    "conv3": BlockSpec("conv3", mlp=16, conv_dim=8),
    "mlp_only": BlockSpec("none", mlp=16),
    "narrow_mlp": BlockSpec("msa", heads=2, mlp=3),
    "attn_only": BlockSpec("msa", heads=2, mlp=0),
    "empty": BlockSpec("none", mlp=0),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_block_kind_runs_jitted_once(kind):
  chex.clear_trace_counter()
  spec = BASE.replace(blocks=(KINDS[kind], KINDS[kind]), dist_token=True, dist_head=True)
  graphdef, weights, gates, rest = split_model(build_model(spec))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(weights, rest, x):
    model = nnx.merge(graphdef, weights, gates, rest)
    out = model(x, train=True)
    return out, nnx.state(model, nnx.BatchStat)

  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  for _ in range(3):
    out, _ = forward(weights, rest, x)
  assert out.shape == (4, 5) and bool(jnp.all(jnp.isfinite(out)))


def test_split_separates_weights_gates_and_state():
  class Gated(nnx.Module):
    def __init__(self):
      self.vit = build_model(BASE.replace(blocks=(KINDS["conv3"],)))
      self.theta = Gate(jnp.full((3,), 1.5))

  model = Gated()
  graphdef, weights, gates, rest = nnx.split(model, nnx.Param, Gate, ...)
  assert set(nnx.to_pure_dict(gates)) == {"theta"}
  assert all(isinstance(v, nnx.BatchStat) for v in jax.tree.leaves(
      rest, is_leaf=lambda x: isinstance(x, nnx.Variable)))
  assert len(jax.tree.leaves(rest)) == 2  # BatchNorm mean and var
  merged = nnx.merge(graphdef, weights, gates, rest)
  chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(merged)),
                              nnx.to_pure_dict(nnx.state(model)))


def test_distilled_eval_logits_are_mean_of_heads():
  model = build_model(BASE.replace(dist_token=True, dist_head=True))
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  cls_logits, dist_logits = model(x, return_dist=True)
  np.testing.assert_allclose(model(x), (cls_logits + dist_logits) / 2, rtol=1e-6)


def test_wrong_input_shape_is_a_clear_error():
  model = build_model(BASE)
  with pytest.raises(ValueError, match=r"expects NHWC images of shape \[batch, 16, 16, 3\]"):
    model(jnp.zeros((2, 3, 16, 16)))


def test_save_and_load_round_trip(tmp_path):
  spec = BASE.replace(blocks=(KINDS["conv3"], KINDS["mlp_only"], KINDS["narrow_mlp"]))
  model = build_model(spec, seed=3)
  save_model(str(tmp_path / "m"), model)
  again = load(str(tmp_path / "m"))
  assert again.spec == spec
  x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
  np.testing.assert_array_equal(again(x), model(x))


@pytest.mark.parametrize("size", [32, 35])  # 35: VALID leaves the last 3 pixel rows/columns out
def test_patch_embed_matches_the_strided_convolution(size):
  from jaxprune.models.blocks import PatchEmbed
  embed = PatchEmbed(3, 8, 4, rngs=nnx.Rngs(0))
  conv = nnx.Conv(3, 8, (4, 4), strides=(4, 4), padding="VALID", rngs=nnx.Rngs(1))
  conv.kernel[...], conv.bias[...] = embed.kernel[...], embed.bias[...]
  x = jax.random.normal(jax.random.key(2), (2, size, size, 3))
  np.testing.assert_allclose(embed(x), conv(x), rtol=1e-5, atol=1e-5)
  g = lambda m: jax.grad(lambda x: jnp.sum(jnp.sin(m(x))))(x)
  np.testing.assert_allclose(g(embed), g(conv), rtol=1e-5, atol=1e-5)
