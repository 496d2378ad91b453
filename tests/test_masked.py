"""Masked trial students (`models.masked`): the compressed block's function in the dense
block's shape, a trainable set held as optimizer state, and one compiled step for every DC-ViT
trial of a run."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from jaxprune import build_model, dense_spec
from jaxprune.methods.dcvit.structure import compress_block
from jaxprune.models.masked import build_masked, plain, switched
from jaxprune.surgery import random_units
from jaxprune.train.optim import leaf_paths, make_optimizer, set_trainable
from configs import common as cfgs

SPEC = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=4, in_channels=1,
                  depth=4, num_heads=2)
X = jax.random.normal(jax.random.key(0), (3, 16, 16, 1))


@pytest.mark.parametrize("hidden", [0, 5])
def test_switched_blocks_compute_the_compressed_blocks(hidden):
  dense = build_model(SPEC, seed=2)
  masked = build_masked(dense)
  np.testing.assert_array_equal(masked(X), dense(X))  # every mask at 1: the model itself
  keep = {b: random_units(SPEC.blocks[b].mlp, hidden, 7, b) for b in (1, 2)}
  want = compress_block(compress_block(dense, 1, hidden, 7), 2, hidden, 7)
  np.testing.assert_allclose(switched(masked, keep)(X), want(X), atol=1e-5)
  # back to the ordinary model, on which compress_block cuts what the masks switched off
  back = plain(switched(masked, keep))
  assert type(back.blocks[1]) is type(dense.blocks[1]) and back.spec == SPEC
  np.testing.assert_array_equal(back(X), dense(X))


def test_masked_blocks_pass_no_gradient_to_what_is_switched_off():
  masked = switched(build_masked(build_model(SPEC, seed=2)), {1: random_units(64, 5, 7, 1)})
  grads = nnx.grad(lambda m: jnp.sum(m(X)**2))(masked)
  block = grads.blocks[1]
  assert not np.any(block.attn.qkv.kernel[...]) and not np.any(block.norm1.scale[...])
  fc1 = np.asarray(block.mlp.fc1.kernel[...])
  off = np.setdiff1d(np.arange(fc1.shape[1]), random_units(64, 5, 7, 1))
  assert not np.any(fc1[:, off]) and np.any(fc1[:, random_units(64, 5, 7, 1)])


def test_a_traced_trainable_set_updates_as_the_static_one():
  """AdamW with weight decay and clipping, a few steps of random gradients: the trainable set as
  optimizer state gives the same parameters as the frozen group."""
  params = {"weights": {"a": jnp.ones((3, 4)), "b": jnp.ones((4,)), "c": jnp.full((2, 2), 2.0)},
            "gates": {}}
  cfg = cfgs.optim_config(lr=0.1, warmup_steps=0, weight_decay=0.1)
  cfg.grad_clip = 0.5
  trainable = frozenset({"weights/a", "weights/b"})
  static = make_optimizer(cfg, params, 10, trainable)
  traced = make_optimizer(cfg, params, 10, traced_trainable=True)
  s1, s2 = static.init(params), set_trainable(traced.init(params), params, trainable)
  p1 = p2 = params
  for i in range(3):
    g = jax.tree.map(lambda x, k=i: jax.random.normal(jax.random.key(k), x.shape), params)
    u1, s1 = static.update(g, s1, p1)
    u2, s2 = traced.update(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), p1, p2)
  np.testing.assert_array_equal(p2["weights"]["c"], params["weights"]["c"])  # frozen: untouched
  assert jax.tree.leaves(leaf_paths(params)) == ["weights/a", "weights/b", "weights/c"]


def test_every_dcvit_trial_of_a_run_shares_one_compiled_step(tmp_path):
  """Three block trials: after the first, no train step is traced or compiled again (counted by
  JAX's lowering events); each trial still trains only the layers up to its block's successor."""
  from configs import dcvit as dcvit_config
  from jaxprune.export import save_model
  from jaxprune.methods import pretrain
  from jaxprune.methods.dcvit import Trials
  from jaxprune.train.logging import MetricWriter
  config = dcvit_config.get_config("runlocal")
  config.model.depth = 5
  config.dcvit.trial_steps = 3
  spec = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=10, in_channels=1,
                    depth=5, num_heads=2)
  save_model(str(tmp_path / "dense"), build_model(spec, seed=1))
  config.model.init_from = str(tmp_path / "dense")
  config.data.update(mean=(0.5,), std=(0.25,))
  config.dcvit.metric_set = "fewshot"  # no synthetic set needed
  writer = MetricWriter(str(tmp_path / "w"))
  dense = pretrain.dense_model(config, str(tmp_path / "w"), writer)
  trials = Trials(config, str(tmp_path / "w"), dense, None, writer)
  first = trials.metric((1,), 16)
  lowered = []

  def count(event, duration, **kwargs):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      lowered.append(event)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    later = [trials.metric((b,), 16) for b in (2, 3)]
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert lowered == [], f"{len(lowered)} programs lowered for two more trials"
  assert first["score"] > 0 and all(r["score"] > 0 for r in later)
  # the recovered student: the compressed architecture; blocks 0-3 trained, block 4 frozen
  student = trials.recovered((2,), 16)
  assert student.spec.blocks[2].attn == "none" and student.spec.blocks[2].mlp == 16
  np.testing.assert_array_equal(student.blocks[4].mlp.fc1.kernel[...],
                                dense.blocks[4].mlp.fc1.kernel[...])
  assert not np.array_equal(student.blocks[3].mlp.fc1.kernel[...],
                            dense.blocks[3].mlp.fc1.kernel[...])
  assert not np.array_equal(student.blocks[2].mlp.fc2.kernel[...],
                            compress_block(dense, 2, 16, config.seed).blocks[2].mlp.fc2.kernel[...])
  # the same trial on its own architecture (dcvit.shared_trials off): the same recovery
  config.dcvit.shared_trials = False
  own = Trials(config, str(tmp_path / "own"), dense, None, writer)
  alone = own.metric((2,), 16)
  assert alone["score"] == pytest.approx(later[0]["score"], rel=1e-4)
  assert alone["feature_mse"] == pytest.approx(later[0]["feature_mse"], rel=1e-4)
  np.testing.assert_allclose(own.recovered((2,), 16)(X), student(X), atol=1e-5)
  writer.close()


def test_practise_masked_phase_is_the_pruned_model_with_its_adaptors():
  """A dropped unit switched off, with adaptors everywhere: the same function as
  `with_adaptor(dense, unit, "around")` for any adaptor values at the reference's places (the
  others stay identity), and the same number of trainable adaptor weights."""
  from jaxprune.methods.practise import ADAPTORS_ONLY, with_adaptor
  from jaxprune.models.masked import practise_trainable
  from jaxprune.train.optim import trainable_paths
  dense = build_model(SPEC, seed=2)
  unit = (1, 2)
  ref = with_adaptor(dense, unit, "around")
  masked = switched(build_masked(dense, adaptors=True), dropped=unit)
  np.testing.assert_allclose(masked(X), ref(X), atol=1e-5)
  rng = np.random.default_rng(0)
  for i, block in enumerate(ref.blocks):  # pruned index i: dense block i, or i + 2 after the unit
    j = i if i < unit[0] else i + len(unit)
    for where in ("fc2", "qkv"):
      layer = block.mlp.fc2 if where == "fc2" else block.attn.qkv
      if hasattr(layer, "practise_adaptor"):
        k = rng.normal(0, 0.3, layer.practise_adaptor.adaptor.kernel.shape).astype(np.float32)
        layer.practise_adaptor.adaptor.kernel[...] = jnp.asarray(k)
        twin = masked.blocks[j].mlp.fc2 if where == "fc2" else masked.blocks[j].attn.qkv
        twin.practise_adaptor.adaptor.kernel[...] = jnp.asarray(k)
  np.testing.assert_allclose(masked(X), ref(X), atol=1e-4)
  assert len(trainable_paths(masked, practise_trainable(SPEC, unit), "t")) == len(
      trainable_paths(ref, ADAPTORS_ONLY, "t"))


def test_practise_adaptor_phases_share_one_compiled_step(tmp_path, monkeypatch):
  """PRACTISE scores every block with one adaptor phase each: after the first phase, none
  lowers a program again (counted per phase)."""
  from configs import practise as practise_config
  from jaxprune.export import save_model
  from jaxprune.methods import practise, pretrain
  from jaxprune.train.logging import MetricWriter
  monkeypatch.setattr(practise, "latency_saved", lambda d, b, units: {u: 1.0 for u in units})
  lowered, per_phase = [], []

  def count(event, duration, **kwargs):
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
      lowered.append(event)

  def counted_mimic(*args, **kwargs):
    before = len(lowered)
    out = mimic(*args, **kwargs)
    per_phase.append(len(lowered) - before)
    return out

  mimic = practise.mimic
  monkeypatch.setattr(practise, "mimic", counted_mimic)
  config = practise_config.get_config("runlocal")
  config.model.depth = 5
  config.practise.adaptor_steps = 2
  config.data.update(mean=(0.5,), std=(0.25,))
  spec = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=10, in_channels=1,
                    depth=5, num_heads=2)
  save_model(str(tmp_path / "dense"), build_model(spec, seed=1))
  config.model.init_from = str(tmp_path / "dense")
  writer = MetricWriter(str(tmp_path / "w"))
  dense = pretrain.dense_model(config, str(tmp_path / "w"), writer)
  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    scores = practise.block_scores(config, str(tmp_path / "w"), dense, writer)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  writer.close()
  assert len(scores) == 5 and all(r["recovered_error"] > 0 for r in scores)
  assert per_phase[0] > 0 and per_phase[1:] == [0] * 4, per_phase
  # each phase on its own pruned model (dcvit.shared_trials off): the same recovered errors
  config.dcvit.shared_trials = False
  writer = MetricWriter(str(tmp_path / "own"))
  own = practise.block_scores(config, str(tmp_path / "own"), dense, writer)
  writer.close()
  np.testing.assert_allclose([r["recovered_error"] for r in own],
                             [r["recovered_error"] for r in scores], rtol=1e-4)
