"""train.remat: per-block rematerialisation computes the same loss and gradients in less memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import build_model, dense_spec
from jaxprune.errors import UserError


def _grads(model, images, **kw):
  graphdef, state = nnx.split(model)

  def loss(state):
    return jnp.mean(nnx.merge(graphdef, state)(images, train=True, **kw)**2)

  return jax.jit(jax.value_and_grad(loss))(state)


def _tome(spec):
  return spec.replace(blocks=[dataclasses.replace(b, merge_r=3) for b in spec.blocks])


@pytest.mark.parametrize("spec", [
    dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5, distilled=True),
    dense_spec("swin_test", image_size=16, num_classes=5),
    dense_spec("resnet_test", image_size=16, num_classes=5),
    _tome(dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5))],
    ids=["vit", "swin", "resnet", "vit_tome"])
def test_remat_gives_the_same_loss_and_gradients(spec):
  model = build_model(spec, seed=0)
  images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  key = jax.random.key(2)
  (l0, g0), (l1, g1) = (_grads(model, images, drop_rate=0.1, drop_key=key, **kw)
                        for kw in ({}, {"remat": True}))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_remat_in_the_spvit_search_model():
  from configs import spvit as spvit_config
  from jaxprune.methods.spvit import search_options
  from jaxprune.models.spvit import build_search_model
  dense = build_model(dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5,
                                 num_heads=2), seed=0)
  model = build_search_model(dense, search_options(spvit_config.get_config("runlocal")))
  images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  key = jax.random.key(3)
  (l0, g0), (l1, g1) = (_grads(model, images, gate_key=key, **kw) for kw in ({}, {"remat": True}))
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_remat_keeps_less_for_the_backward_pass():
  """What reverse mode keeps from the forward pass (`accounting.backward_residual_bytes`): with
  per-block rematerialisation only each block's input (and the weights) remain. (XLA's CPU
  buffer plan does not show it: its scheduler is not memory-aware.)"""
  from jaxprune.accounting import backward_residual_bytes
  spec = dense_spec("test_small", image_size=32, patch_size=2, num_classes=5, depth=6)
  graphdef, state = nnx.split(build_model(spec, seed=0))
  images = jnp.zeros((16, 32, 32, 3))

  def kept(**kw):
    return backward_residual_bytes(
        lambda s: jnp.mean(nnx.merge(graphdef, s)(images, train=True, **kw)**2), state)

  plain, remat = kept(), kept(remat=True)
  tokens = 16 * spec.num_tokens * spec.width * 4  # one block's input, float32
  assert remat < 0.1 * plain
  assert remat < 2 * spec.depth * tokens + 4 * sum(x.size for x in jax.tree.leaves(state))


def test_remat_is_checked_and_a_resume_may_turn_it_on(tmp_path):
  from configs import pretrain as pretrain_config
  from jaxprune.train.workdir import prepare_workdir
  from jaxprune.validate import check_fields
  import ml_collections
  config = pretrain_config.get_config("runlocal")
  bad = config.to_dict()
  bad["train"]["remat"] = "yes"  # e.g. a hand-edited config.json
  with pytest.raises(UserError, match="train.remat = 'yes': must be True or False"):
    check_fields(ml_collections.ConfigDict(bad))
  prepare_workdir(str(tmp_path), config, take_lock=False)
  config.train.remat = True  # same computation, less memory: not a different run
  prepare_workdir(str(tmp_path), config, take_lock=False)
  config.train.lr_typo = 1
  with pytest.raises(UserError, match="different config"):
    prepare_workdir(str(tmp_path), config, take_lock=False)
