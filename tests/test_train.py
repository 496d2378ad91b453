import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import common as cfgs
from jaxprune import build_model, dense_spec
from jaxprune.data.pipeline import to_global
from jaxprune.errors import UserError
from jaxprune.models import Gate
from jaxprune.train.checkpoint import PhaseCheckpoints
from jaxprune.train.workdir import prepare_workdir
from jaxprune.train.logging import MetricWriter, read_metrics
from jaxprune.train.loop import NonFiniteLoss, Schedule, fit
from jaxprune.train.mesh import check_batch, data_sharding, make_mesh
from jaxprune.train.optim import group_labels, make_optimizer, path_str
from jaxprune.validate import check_fields
from jaxprune.train.step import init_state, make_train_step, place, soft_cross_entropy

SPEC = dense_spec("test_micro", image_size=8, patch_size=4, num_classes=4, in_channels=1)


def _loss(model, batch, key):
  del key
  logits = model(batch["image"], train=True)
  return soft_cross_entropy(logits, jax.nn.one_hot(batch["label"], 4)), {}


def _batch(step, mesh, n=16):
  rng = np.random.default_rng(step)
  images = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
  labels = rng.integers(0, 4, n).astype(np.int32)
  sh = data_sharding(mesh)
  return {"image": to_global(images, sh), "label": to_global(labels, sh)}


def _setup(mesh, optim=None, steps=10):
  optim = optim or cfgs.optim_config(lr=1e-2, warmup_steps=2)
  graphdef, state, tx = init_state(build_model(SPEC, seed=0),
                                   lambda p: make_optimizer(optim, p, steps))
  return graphdef, place(state, mesh), make_train_step(graphdef, tx, _loss, mesh, seed=0)


def test_sharded_step_equals_single_device():
  """8-way data parallel == 1 device. SGD, because Adam turns the float noise in gradients that
  are exactly zero in theory (attention's key bias) into full-size steps."""
  assert jax.device_count() == 8
  results, losses = [], []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = make_mesh(devices)
    graphdef, state, tx = init_state(build_model(SPEC, seed=0), lambda p: optax.sgd(0.5))
    state = place(state, mesh)
    step = make_train_step(graphdef, tx, _loss, mesh, seed=0)
    run_losses = []
    for s in range(3):
      state, metrics = step(state, _batch(s, mesh))
      run_losses.append(float(metrics["loss"]))
    results.append(jax.device_get(state["params"]))
    losses.append(run_losses)
  np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
  # Parameters are O(1); 8 shards sum in another order: up to 1.4e-6 apart (XLA CPU, test flags)
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-6)


def test_update_step_compiles_once():
  mesh = make_mesh()
  _, state, step = _setup(mesh)
  for s in range(4):
    state, _ = step(state, _batch(s, mesh))
  assert step.jitted._cache_size() == 1


def test_checkpoint_round_trip(tmp_path):
  """On the 8-device mesh, saving and restoring compile nothing: orbax's replica-parallel
  saving sliced each small replicated array per replica (88 compiles for this state), and a
  per-leaf finiteness check on device compiled a program per leaf shape."""
  mesh = make_mesh()
  _, state, step = _setup(mesh)
  state, _ = step(state, _batch(0, mesh))
  _, fresh, _ = _setup(mesh)
  ckpts = PhaseCheckpoints(str(tmp_path), "phase")
  compiles = []

  def count(event, seconds, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiles.append(seconds)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    ckpts.save(1, state, {"step": 1, "arch": SPEC.to_dict()})
    ckpts.wait()
    restored, meta = ckpts.restore(fresh)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  ckpts.close()
  assert not compiles, f"saving and restoring compiled {len(compiles)} programs"
  assert meta["step"] == 1 and meta["arch"] == SPEC.to_dict()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


def test_a_checkpoint_of_other_work_is_not_resumed(tmp_path):
  """Same phase name and ArchSpec, other dropped blocks (a re-made choice): refused by name;
  the same work resumes, and checkpoints without the entry (older runs) resume too."""
  mesh = make_mesh()
  schedule = Schedule(total_steps=2, log_every=1, checkpoint_every=2)

  def run(meta, phase="p"):
    _, state, step = _setup(mesh)
    return fit(workdir=str(tmp_path), phase=phase, state=state, train_step=step,
               batches=lambda s: _batch(s, mesh), schedule=schedule,
               writer=MetricWriter(str(tmp_path)), meta=meta)

  run({"arch": SPEC.to_dict(), "dropped": [10]})
  run({"arch": SPEC.to_dict(), "dropped": [10]})  # the same work: resumed (done)
  with pytest.raises(UserError, match=r"holds a checkpoint of phase p for another dropped "
                                      r"\(\[10\], now \[11\]\); delete that folder"):
    run({"arch": SPEC.to_dict(), "dropped": [11]})
  run({"arch": SPEC.to_dict()}, phase="q")
  run({"arch": SPEC.to_dict(), "dropped": [3]}, phase="q")  # written before the entry existed


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path):
  mesh = make_mesh()
  _, state, step = _setup(mesh)

  def batches(s):  # poisons the data from step 6 on
    b = _batch(s, mesh)
    return dict(b, image=b["image"] * (jnp.nan if s >= 5 else 1.0))

  with pytest.raises(NonFiniteLoss, match="loss became nan at step 6; stopped. The last good "
                                          r"checkpoint \(step 4\)"):
    fit(workdir=str(tmp_path), phase="p", state=state, train_step=step, batches=batches,
        schedule=Schedule(total_steps=10, log_every=3, checkpoint_every=2),
        writer=MetricWriter(str(tmp_path)))
  assert PhaseCheckpoints(str(tmp_path), "p").latest_step() == 4
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == [3]


def _by_path(tree):
  return {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_path_rules_freeze_scale_and_separate_gates():
  class Gated(nnx.Module):
    def __init__(self):
      self.vit = build_model(SPEC)
      self.theta = Gate(jnp.zeros(3))

  _, weights, gates, _ = nnx.split(Gated(), nnx.Param, Gate, ...)
  params = {"weights": weights, "gates": gates}
  cfg = cfgs.optim_config(lr=0.1, frozen=r"/head/", lr_rules=((r"blocks/1/", 0.0),))
  labels = _by_path(group_labels(params, cfg))
  assert {v for k, v in labels.items() if "/head/" in k} == {"frozen"}
  assert labels["gates/theta"] == "gates"
  assert {v for k, v in labels.items() if "/blocks/1/" in k} == {"lr0"}
  assert labels["weights/vit/blocks/0/attn/qkv/kernel"] == "lr-1"
  tx = make_optimizer(cfg, params, total_steps=5)
  grads = jax.tree.map(jnp.ones_like, params)
  updates = _by_path(tx.update(grads, tx.init(params), params)[0])
  for k, v in updates.items():
    zero = float(jnp.abs(v).max()) == 0
    assert zero == ("/head/" in k or "/blocks/1/" in k), k  # frozen, or learning rate x 0
  # A phase whose every parameter is frozen trains nothing: an error, not a silent no-op
  # (issue 26 case 16); gates still learning is training.
  with pytest.raises(UserError, match=r"optim.frozen = '\.\*' freezes every parameter of the "
                                      "phase: it would train nothing"):
    make_optimizer(cfgs.optim_config(lr=0.1, frozen=".*"), {"weights": weights, "gates": {}}, 5)
  make_optimizer(cfgs.optim_config(lr=0.1, frozen=".*"), params, 5)


def test_sgd_with_step_decay_is_pytorchs_sgd():
  """`optim.kind = "sgd"`, `schedule = "step"` (MiR's recipe): v ← μ·v + (g + λ·w),
  w ← w − lr·v, as torch.optim.SGD(momentum, weight_decay); lr ×0.1 from 40 % of the steps;
  no decay on biases."""
  w0 = {"weights": {"dense": {"kernel": jnp.full((2, 2), 1.0), "bias": jnp.full((2,), 1.0)}},
        "gates": {}}
  cfg = cfgs.optim_config(lr=0.5, kind="sgd", momentum=0.9, weight_decay=0.1, schedule="step",
                          step_at=(0.4,))
  tx = make_optimizer(cfg, w0, total_steps=5)
  state, w = tx.init(w0), w0
  ref_w, ref_b, vw, vb = 1.0, 1.0, 0.0, 0.0
  for step in range(5):
    grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), w)
    updates, state = tx.update(grads, state, w)
    w = jax.tree.map(lambda a, u: a + u, w, updates)
    lr = 0.5 if step < 2 else 0.05
    vw, vb = 0.9 * vw + (0.3 + 0.1 * ref_w), 0.9 * vb + 0.3
    ref_w, ref_b = ref_w - lr * vw, ref_b - lr * vb
  np.testing.assert_allclose(w["weights"]["dense"]["kernel"], ref_w, rtol=1e-6)
  np.testing.assert_allclose(w["weights"]["dense"]["bias"], ref_b, rtol=1e-6)


def test_mir_recipe_config():
  from configs import dcvit_resnet
  config = dcvit_resnet.get_config("runlocal,mir")
  assert config.mimic.optim.kind == "sgd" and config.mimic.optim.lr == 0.02
  assert config.model.image_size == 16  # runlocal still applies
  check_fields(config)
  assert dcvit_resnet.get_config().mimic.optim.kind == "adamw"


def test_batch_must_divide_devices():
  with pytest.raises(UserError, match="train.batch_size = 12 is not divisible by the 8 devices"):
    check_batch(12)


def test_workdir_of_another_config_is_refused(tmp_path):
  c1 = ml_collections.ConfigDict({"method": "pretrain", "optim": {"lr": 1.0}})
  c2 = ml_collections.ConfigDict({"method": "pretrain", "optim": {"lr": 2.0}})
  prepare_workdir(str(tmp_path / "w"), c1)
  prepare_workdir(str(tmp_path / "w"), c1)  # same config: resume is fine
  with pytest.raises(UserError, match=r"different config \(differs in: optim.lr\)"):
    prepare_workdir(str(tmp_path / "w"), c2)
  (tmp_path / "w" / "metrics.jsonl").write_text("{}\n")
  (tmp_path / "w" / "notes.txt").write_text("x")
  prepare_workdir(str(tmp_path / "w"), c2, overwrite=True)
  assert not (tmp_path / "w" / "metrics.jsonl").exists()  # jaxprune's own files go
  assert (tmp_path / "w" / "notes.txt").exists()          # nothing else does


@pytest.mark.parametrize("devices", [1, 8])
def test_training_never_deletes_the_callers_model(devices):
  """On 8 devices, JAX 0.10's device_put(may_alias=False) of a one-device array still reuses
  its buffer as the first shard: the donated step then freed the caller's (teacher's) weights
  and a DC-ViT trial on a freshly built model crashed (segfault)."""
  mesh = make_mesh(jax.devices()[:devices])
  model = build_model(SPEC, seed=0)
  graphdef, state, tx = init_state(model, lambda p: optax.sgd(0.1))
  placed = place(state, mesh)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(placed)):
    if isinstance(a, jax.Array):
      assert all(s.data.unsafe_buffer_pointer() != a.unsafe_buffer_pointer()
                 for s in b.addressable_shards)
  step = make_train_step(graphdef, tx, _loss, mesh, seed=0)
  step(placed, _batch(0, mesh))  # donates its input state
  assert np.isfinite(np.asarray(model(jnp.zeros((1, 8, 8, 1))))).all()
