"""Nothing lost, nothing silently wrong: workdirs, checkpoints, logs and models under faults.

Case numbers refer to issue 10; each test reproduces its case first.
"""

import fcntl
import functools
import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from configs import common as cfgs
from configs import pretrain as pretrain_config
from jaxprune import build_model, dense_spec, load, save_model
from jaxprune.data.pipeline import to_global
from jaxprune.errors import UserError
from jaxprune.main import execute
from jaxprune.train import workdir as wd
from jaxprune.train.checkpoint import PhaseCheckpoints, all_finite
from jaxprune.train.logging import MetricWriter, read_metrics
from jaxprune.train.loop import Interrupted, NonFiniteLoss, Schedule, fit
from jaxprune.train.mesh import data_sharding, make_mesh
from jaxprune.train.optim import make_optimizer
from jaxprune.train.step import init_state, make_train_step, place, soft_cross_entropy

SPEC = dense_spec("test_micro", image_size=8, patch_size=4, num_classes=4, in_channels=1)


# Workdirs (cases 1, 2, 8, 9, 13) -------------------------------------------------------------------
def _finished_run(path):
  """A workdir as a finished run leaves it (config, marker, checkpoints, model, logs)."""
  config = pretrain_config.get_config("runlocal")
  wd.prepare_workdir(str(path), config)
  for d in ("checkpoints/pretrain/8", "model/state"):
    os.makedirs(path / d)
  (path / "summary.json").write_text("{}")
  (path / "metrics.jsonl").write_text('{"phase": "pretrain", "step": 4}\n')
  wd.unlock(str(path))
  return config


def test_overwrite_validates_before_deleting(tmp_path):  # case 1
  config = _finished_run(tmp_path / "w")
  bad = pretrain_config.get_config("runlocal")
  bad.train.epochs = -1
  before = sorted(os.listdir(tmp_path / "w"))
  with pytest.raises(UserError, match="train.epochs = -1"):
    execute(bad, str(tmp_path / "w"), overwrite=True)
  assert sorted(os.listdir(tmp_path / "w")) == before
  assert json.load(open(tmp_path / "w" / "config.json")) == json.loads(wd.config_to_json(config))


def test_a_source_that_does_not_open_writes_nothing(tmp_path):  # issue 26 case 10
  """A bad IDX file used to be found after config.json was written, so the corrected command
  was "a run of a different config"; and data.skip_corrupt, the fix an image error advises,
  may change on a resume."""
  (tmp_path / "idx").mkdir()
  for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"):
    (tmp_path / "idx" / name).write_bytes(b"\x01\x02\x03\x04")
  config = pretrain_config.get_config("runlocal")
  config.data.source = f"idx:{tmp_path / 'idx'}"
  config.data.mean, config.data.std = (0.5,), (0.25,)
  with pytest.raises(UserError, match="not an IDX file"):
    execute(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  from jaxprune.train.workdir import _diff_keys
  old = pretrain_config.get_config("runlocal").to_dict()
  new = pretrain_config.get_config("runlocal").to_dict()
  new["data"]["skip_corrupt"] = not old["data"]["skip_corrupt"]
  assert _diff_keys(old, new) == []


def test_overwrite_never_deletes_a_folder_jaxprune_did_not_make(tmp_path):  # case 2
  user = tmp_path / "project"
  (user / "src").mkdir(parents=True)
  (user / "notes.txt").write_text("mine")
  (user / "config.json").write_text('{"lr": 1}')  # some other program's config
  for overwrite in (True, False):  # issue 26 case 17: refused first, no advice to --overwrite,
    with pytest.raises(UserError) as e:  # and nothing (not even a lock file) written
      wd.prepare_workdir(str(user), pretrain_config.get_config("runlocal"), overwrite=overwrite)
    assert "is not empty and holds no jaxprune run (found config.json" in str(e.value)
    assert "--overwrite" not in str(e.value)
    assert sorted(os.listdir(user)) == ["config.json", "notes.txt", "src"]


def test_overwrite_deletes_only_jaxprunes_entries(tmp_path):
  _finished_run(tmp_path / "w")
  (tmp_path / "w" / "my_notes.txt").write_text("keep")
  other = pretrain_config.get_config("runlocal")
  other.seed = 1
  wd.prepare_workdir(str(tmp_path / "w"), other, overwrite=True)
  wd.unlock(str(tmp_path / "w"))
  assert sorted(os.listdir(tmp_path / "w")) == [".jaxprune-run", ".lock", "config.json",
                                                "my_notes.txt"]


def test_a_new_run_refuses_a_non_empty_foreign_folder(tmp_path):
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "data.csv").write_text("1,2")
  with pytest.raises(UserError, match="is not empty and holds no jaxprune run"):
    wd.prepare_workdir(str(tmp_path / "w"), pretrain_config.get_config("runlocal"))
  wd.unlock(str(tmp_path / "w"))


def test_invalid_config_writes_nothing(tmp_path):  # case 8
  bad = pretrain_config.get_config("runlocal")
  bad.optim.lr = float("nan")
  with pytest.raises(UserError, match="optim.lr = nan"):
    execute(bad, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_second_run_on_a_locked_workdir_is_refused(tmp_path):  # case 9
  w = tmp_path / "w"
  w.mkdir()
  holder = open(w / ".lock", "a+")  # another process's lock (another open file description)
  holder.write("pid 4242 on elsewhere")
  holder.flush()
  fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
  with pytest.raises(UserError, match=r"in use by another jaxprune run \(pid 4242 on elsewhere\)"):
    wd.prepare_workdir(str(w), pretrain_config.get_config("runlocal"))
  holder.close()  # the holder dies: its lock goes with it, the stale file blocks nothing
  wd.prepare_workdir(str(w), pretrain_config.get_config("runlocal"))
  wd.unlock(str(w))


def test_unusable_workdirs_are_one_line_errors(tmp_path, monkeypatch):  # case 13
  config = pretrain_config.get_config("runlocal")
  (tmp_path / "file").write_text("x")
  with pytest.raises(UserError, match="is a file, not a folder"):
    wd.prepare_workdir(str(tmp_path / "file"), config)
  with pytest.raises(UserError, match=f"cannot create --workdir .*{tmp_path / 'file'} is a file"):
    wd.prepare_workdir(str(tmp_path / "file" / "w"), config)
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / wd.MARKER_FILE).write_text("")  # a run of jaxprune's, its config damaged
  (tmp_path / "w" / "config.json").write_text("{not json")
  with pytest.raises(UserError, match="config.json cannot be read as JSON"):
    wd.prepare_workdir(str(tmp_path / "w"), config)
  wd.unlock(str(tmp_path / "w"))
  # Read-only folders: tests run as root here, which ignores permission bits, so the write
  # probe is made to fail the way it fails for a normal user on a read-only folder.
  real_open = open

  def deny(path, *a, **k):
    if ".write-test" in str(path):
      raise PermissionError(13, "Permission denied")
    return real_open(path, *a, **k)

  monkeypatch.setattr("builtins.open", deny)
  with pytest.raises(UserError, match="is not writable \\(Permission denied\\)"):
    wd.prepare_workdir(str(tmp_path / "ro"), config)


# Training loop and checkpoints (cases 3, 11, 14, 15) --------------------------------------------
def _loss(model, batch, key):
  del key
  logits = model(batch["image"], train=True)
  return soft_cross_entropy(logits, jax.nn.one_hot(batch["label"], 4)), {}


def _batches(mesh):
  sh = data_sharding(mesh)

  def batch(step):
    rng = np.random.default_rng(step)
    return {"image": to_global(rng.normal(size=(16, 8, 8, 1)).astype(np.float32), sh),
            "label": to_global(rng.integers(0, 4, 16).astype(np.int32), sh)}
  return batch


@functools.lru_cache(maxsize=None)
def _compiled(total, lr, warmup):
  """(fresh state, jitted step), shared by the tests so each recipe compiles once."""
  mesh = make_mesh()
  optim = cfgs.optim_config(lr=lr, warmup_steps=warmup)
  graphdef, state, tx = init_state(build_model(SPEC, seed=0),
                                   lambda p: make_optimizer(optim, p, total))
  return jax.device_get(state), make_train_step(graphdef, tx, _loss, mesh, seed=0)


def _phase(tmp_path, total, lr=1e-2, warmup=0, checkpoint_every=2, **kw):
  mesh = make_mesh()
  state, step = _compiled(total, lr, warmup)  # a host copy: the donated step never eats it
  return fit(workdir=str(tmp_path), phase="p", state=place(state, mesh), train_step=step,
             batches=kw.pop("batches", _batches(mesh)), writer=MetricWriter(str(tmp_path)),
             schedule=Schedule(total_steps=total, log_every=1, checkpoint_every=checkpoint_every),
             **kw)


def _overflowing_at(step_fn, at):
  """`step_fn` whose update at step `at` overflows one weight to inf while the loss it reports
  stays finite — what a too-large learning rate does, at a step fixed on every CPU (where real
  overflow happens depends on the machine's float rounding)."""
  def step(state, batch):
    state, metrics = step_fn(state, batch)
    if int(state["step"]) == at:
      leaves, treedef = jax.tree.flatten(state["params"])
      leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(np.inf)
      state = dict(state, params=jax.tree.unflatten(treedef, leaves))
    return state, metrics
  return step


def test_no_checkpoint_ever_holds_non_finite_weights(tmp_path):  # case 3
  mesh = make_mesh()
  state, step = _compiled(10, 1e-2, 0)
  with pytest.raises(NonFiniteLoss, match="the weights became non-finite .* at step 3; "
                                          r"stopped. The last good checkpoint \(step 2\)") as e:
    fit(workdir=str(tmp_path), phase="p", state=place(state, mesh),
        train_step=_overflowing_at(step, 3), batches=_batches(mesh),
        writer=MetricWriter(str(tmp_path)),
        schedule=Schedule(total_steps=10, log_every=1, checkpoint_every=1))
  assert "None" not in str(e.value)
  ckpts = PhaseCheckpoints(str(tmp_path), "p")
  assert ckpts.manager.all_steps() == [1, 2]
  target = place(_compiled(10, 1e-2, 0)[0], make_mesh())
  for s in ckpts.manager.all_steps():  # restore(step=s) raises on a non-finite checkpoint
    state, _ = ckpts.restore(target, step=s)
    assert all_finite(state), f"checkpoint {s} holds non-finite values"
  ckpts.close()


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, capsys):  # case 11
  _phase(tmp_path, total=4)  # checkpoints at steps 2 and 4
  shutil.rmtree(tmp_path / "checkpoints" / "p" / "4" / "state")
  state, _ = _phase(tmp_path, total=4)
  out = capsys.readouterr().out
  assert "skipped the checkpoint at step 4" in out and "resumed from checkpoint at step 2" in out
  assert int(state["step"]) == 4
  assert PhaseCheckpoints(str(tmp_path), "p").latest_step() == 4  # saved again, readable
  assert os.listdir(tmp_path / "checkpoints" / "p.damaged") == ["4"]  # set aside, not deleted


def test_a_checkpoint_of_other_shapes_is_refused_and_kept(tmp_path):  # issue 26, case 1
  """A class added to the data between a kill and the rerun changes the head's shape: that is
  a changed run, not a damaged checkpoint — one line naming the array and both shapes, and
  every checkpoint stays where it is (it used to delete both good ones)."""
  _phase(tmp_path, total=4)  # checkpoints at steps 2 and 4, a 4-class head
  optim = cfgs.optim_config(lr=1e-2, warmup_steps=0)
  _, five, _ = init_state(build_model(SPEC.replace(num_classes=5), seed=0),
                          lambda p: make_optimizer(optim, p, 4))
  before = sorted(os.listdir(tmp_path / "checkpoints" / "p"))
  with pytest.raises(UserError) as e:
    PhaseCheckpoints(str(tmp_path), "p").restore(place(jax.device_get(five), make_mesh()))
  msg = str(e.value)
  assert "\n" not in msg and len(msg) < 400, msg
  assert ("the checkpoint at step 4 in" in msg and "stores params/weights/head/bias with shape "
          "(4,) where this run's "
          "is (5,): the data or the config changed" in msg and "nothing was touched" in msg), msg
  assert sorted(os.listdir(tmp_path / "checkpoints" / "p")) == before
  assert not (tmp_path / "checkpoints" / "p.damaged").exists()
  state, _ = _phase(tmp_path, total=4)  # the unchanged run still resumes from them
  assert int(state["step"]) == 4


def test_a_resume_on_changed_data_says_so(tmp_path, capsys):  # issue 26 case 14
  """An image deleted between a kill and the rerun: the listing (fingerprinted in the
  checkpoints' meta by train_phase) differs, and the resume says it is not exact."""
  from jaxprune.data.pipeline import Subset, fingerprint
  from jaxprune.data.sources import ArraySplit
  split = ArraySplit(np.zeros((6, 2, 2, 1), np.uint8), np.arange(6) % 3)
  before, after = fingerprint(split), fingerprint(Subset(split, np.arange(5)))
  assert before != after and after["images"] == 5
  assert fingerprint(split) == before  # a pure function of the data
  _phase(tmp_path, total=4, meta={"data": before})
  capsys.readouterr()
  _phase(tmp_path, total=4, meta={"data": before})  # same data: a silent resume
  assert "WARNING" not in capsys.readouterr().out
  _phase(tmp_path, total=4, meta={"data": after})
  out = capsys.readouterr().out
  assert ("[p] WARNING: the training data changed since checkpoint step 4 was written (6 → 5 "
          "images): this resume is not exact") in out


def test_ctrl_c_twice_during_a_checkpoint_write(tmp_path, monkeypatch):  # issue 26 case 5
  """Two Ctrl-Cs arriving while the step-2 checkpoint is written (as the signal handler sees
  them): the write finishes, the phase stops there with one Interrupted naming step 2 (it
  printed four tracebacks and "interrupted before training started")."""
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
  real_save = PhaseCheckpoints.save

  def save_interrupted(self, step, state, meta):
    if step == 2:
      handler = signal.getsignal(signal.SIGINT)
      handler(signal.SIGINT, None)  # the first: stop after this step
      handler(signal.SIGINT, None)  # the second: at once — but not inside the write
    real_save(self, step, state, meta)

  monkeypatch.setattr(PhaseCheckpoints, "save", save_interrupted)
  try:
    with pytest.raises(Interrupted, match=r"interrupted at step 2 of phase p \(the last "
                                          r"checkpoint is step 2\)"):
      _phase(tmp_path, total=6)
  finally:
    signal.signal(signal.SIGINT, previous)
  monkeypatch.undo()
  assert PhaseCheckpoints(str(tmp_path), "p").latest_step() == 2  # written whole
  state, _ = _phase(tmp_path, total=6)
  assert int(state["step"]) == 6


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
  _phase(tmp_path, total=4)
  for s in ("2", "4"):
    shutil.rmtree(tmp_path / "checkpoints" / "p" / s / "state")
  with pytest.raises(UserError, match="no checkpoint in .* restores .*moved to .*p.damaged; "
                                      "delete .* to restart"):
    _phase(tmp_path, total=4)


def test_ctrl_c_names_the_step_and_the_checkpoint(tmp_path):  # case 14
  base = _batches(make_mesh())

  def batches(step):
    if step == 3:  # after 3 steps, while fetching the 4th batch
      raise KeyboardInterrupt
    return base(step)

  with pytest.raises(Interrupted, match="interrupted at step 3 of phase p \\(the last "
                                        "checkpoint is step 2\\); rerun the same command"):
    _phase(tmp_path, total=4, batches=batches)


def test_first_ctrl_c_stops_between_steps_and_saves_them(tmp_path):
  """A real SIGINT (the handler, not a raised KeyboardInterrupt): the phase stops after the
  step in flight, saves it, and a rerun resumes there."""
  base = _batches(make_mesh())

  def batches(step):
    if step == 2:
      os.kill(os.getpid(), signal.SIGINT)  # arrives while step 3 is being prepared
    return base(step)

  previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
  try:
    with pytest.raises(Interrupted, match="interrupted at step 3 of phase p \\(the last "
                                          "checkpoint is step 3\\)"):
      _phase(tmp_path, total=6, checkpoint_every=100, batches=batches)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
  finally:
    signal.signal(signal.SIGINT, previous)
  starts = []
  _phase(tmp_path, total=6, checkpoint_every=100, on_start=starts.append)
  assert starts == [3]


def test_resumed_phase_logs_each_step_once(tmp_path):  # case 15
  _phase(tmp_path, total=4)  # checkpoints 2, 4; rows for steps 1..4
  shutil.rmtree(tmp_path / "checkpoints" / "p" / "4")  # killed before the last save
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"phase": "p", "st')  # and mid-way through writing a row
  history = []
  _phase(tmp_path, total=4, on_start=history.append)
  assert history == [2]
  assert [r["step"] for r in read_metrics(str(tmp_path)) if r["phase"] == "p"] == [1, 2, 3, 4]


# Loading models (cases 4, 13) ---------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("num_classes", 5, "head/bias has shape (4,) but the spec"),
    ("width", 64, "has shape"),
    ("layers", [{"kind": "block", "attn": "msa", "heads": 2, "mlp": 32}] * 2,
     "mlp/fc1/bias has shape (64,)"),
])
def test_load_checks_every_shape_against_arch_json(tmp_path, field, value, message):
  save_model(str(tmp_path / "m"), build_model(SPEC, seed=0))
  meta = json.load(open(tmp_path / "m" / "arch.json"))
  meta["arch"][field] = value
  json.dump(meta, open(tmp_path / "m" / "arch.json", "w"))
  with pytest.raises(UserError, match="the weights do not match its arch.json") as e:
    load(str(tmp_path / "m"))
  assert message in str(e.value)


def test_damaged_model_folders_are_clear_errors(tmp_path):
  save_model(str(tmp_path / "m"), build_model(SPEC, seed=0))
  (tmp_path / "m" / "arch.json").write_text("{trunc")
  with pytest.raises(UserError, match="arch.json is not a jaxprune arch file"):
    load(str(tmp_path / "m"))
  save_model(str(tmp_path / "n"), build_model(SPEC, seed=0))
  shutil.rmtree(tmp_path / "n" / "state")
  with pytest.raises(UserError, match="has no state/ folder"):
    load(str(tmp_path / "n"))


def test_atomic_writes_leave_the_old_file_or_none(tmp_path):
  from jaxprune.atomic import replacing, write_text
  path = str(tmp_path / "cache.json")
  write_text(path, "old")
  with pytest.raises(RuntimeError):
    with replacing(path) as f:
      f.write("half of a new fi")
      raise RuntimeError("killed")
  assert open(path).read() == "old" and os.listdir(tmp_path) == ["cache.json"]


def test_an_export_without_arch_json_is_incomplete_and_redone(tmp_path):
  """arch.json is written last: a kill during the weights leaves no arch.json, so the stages
  that reuse exports (`os.path.exists(.../arch.json)`) redo it instead of loading half."""
  import orbax.checkpoint as ocp
  calls = []
  real = ocp.StandardCheckpointer.save

  def save_then_check(self, path, *a, **k):
    calls.append(os.path.exists(os.path.join(os.path.dirname(path), "arch.json")))
    return real(self, path, *a, **k)

  ocp.StandardCheckpointer.save = save_then_check
  try:
    save_model(str(tmp_path / "m"), build_model(SPEC, seed=0))
  finally:
    ocp.StandardCheckpointer.save = real
  assert calls == [False] and os.path.exists(tmp_path / "m" / "arch.json")


def test_stage_cache_computes_once_and_leaves_no_temporary_file(tmp_path):
  from jaxprune.methods.cache import cached_json, cached_model
  calls = []
  path = str(tmp_path / "stage" / "scores.json")
  for _ in range(2):
    assert cached_json(path, lambda: calls.append(1) or {"x": [1, 2]}) == {"x": [1, 2]}
  assert calls == [1] and os.listdir(tmp_path / "stage") == ["scores.json"]
  model = build_model(SPEC, seed=3)
  for _ in range(2):
    got, extra = cached_model(str(tmp_path / "m"), lambda: calls.append(2) or (model, {"k": 5}))
  assert calls == [1, 2] and extra == {"k": 5} and got.spec == model.spec


def test_fields_added_after_a_run_at_their_off_value_do_not_block_resuming(tmp_path):
  """A workdir written before a config field existed resumes while the field is at its off
  value (0, "", empty); set to anything else it is a different config."""
  w = tmp_path / "w"
  config = pretrain_config.get_config("runlocal")
  wd.prepare_workdir(str(w), config)
  wd.unlock(str(w))
  stored = json.loads((w / "config.json").read_text())
  del stored["train"]["drop_path"], stored["data"]["augment"]["cutmix"]  # an older jaxprune
  del stored["train"]["compute_dtype"]  # added at its default float32, the only dtype before
  del stored["data"]["augment"]["randaugment_std"]  # inert while randaugment is 0
  (w / "config.json").write_text(json.dumps(stored))
  wd.prepare_workdir(str(w), config)  # accepted, and the file completed
  wd.unlock(str(w))
  assert "drop_path" in json.loads((w / "config.json").read_text())["train"]
  (w / "config.json").write_text(json.dumps(stored))  # the older file again
  config.train.drop_path = 0.1
  with pytest.raises(UserError, match=r"different config \(differs in: train.drop_path\)"):
    wd.prepare_workdir(str(w), config)
  wd.unlock(str(w))
  config.train.drop_path, config.train.compute_dtype = 0.0, "bfloat16"
  with pytest.raises(UserError, match=r"different config \(differs in: train.compute_dtype\)"):
    wd.prepare_workdir(str(w), config)
  wd.unlock(str(w))
  config.train.compute_dtype, config.data.workers, config.data.threads = "float32", 3, 2
  stored["data"].update(workers=0, threads=-1)  # loader settings: a resume may change them
  (w / "config.json").write_text(json.dumps(stored))
  wd.prepare_workdir(str(w), config)


# Every config field whose default is not an "off" value, by the end of its dotted path (as
# `workdir.added_defaults()`), as of the resume rules. A run written before a new such field lacks
# it, and resuming it reads as a different config unless `workdir.added_defaults()` names the value
# that run computed with (or the field is inert at an off default). Forgetting that once stopped a
# day-long benchmark at its next resume.
NON_OFF_FIELDS = frozenset({
    "latency_batch", "method",
    "augment.crop_scale_min", "augment.cutmix", "augment.erase", "augment.flip",
    "augment.mixup", "augment.randaugment", "augment.shift",
    "data.eval_crop", "data.fewshot", "data.fewshot_balanced", "data.source", "data.threads",
    "dcvit.finetune_steps", "dcvit.num_targets", "dcvit.trial_steps", "dcvit.width_multiple",
    "distill.kind", "distill.temperature", "distill.weight",
    "model.depth", "model.image_size", "model.num_heads", "model.patch_size", "model.variant",
    "optim.b1", "optim.b2", "optim.final_lr_ratio", "optim.gate_lr", "optim.lr",
    "optim.warmup_steps", "optim.weight_decay",
    "practise.adaptor_steps", "practise.num_drop", "random.num_archs",
    "spvit.alpha", "spvit.budget_scale", "spvit.eval_every", "spvit.ffn_group",
    "spvit.finetune_from", "spvit.lambda_preset", "spvit.stop", "spvit.target_ratio",
    "spvit.temperature", "spvit.tolerance", "spvit.weight_sharing",
    "synthetic.jitter", "synthetic.l2_weight", "synthetic.lr", "synthetic.num_images",
    "synthetic.steps", "synthetic.tv_exponent", "synthetic.tv_weight", "synthetic.warmup_steps",
    "train.batch_size", "train.checkpoint_every", "train.drop_path", "train.epochs",
    "train.eval_every_epochs", "train.label_smoothing", "train.log_every",
    # methods' own fields from their first version: no older run to resume
    "tome.r_values", "vitslim.attn_weight", "vitslim.mlp_weight", "vitslim.target_ratio",
})


def test_a_new_config_field_says_what_older_runs_computed_with():
  import glob
  import importlib
  names = set()

  def walk(d, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      elif not wd._off(v):
        names.add(prefix + k)

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for path in glob.glob(os.path.join(root, "configs", "**", "*.py"), recursive=True):
    module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    config = importlib.import_module(module)
    if hasattr(config, "get_config"):  # (the ImageNet SPViT config needs a model size)
      walk(config.get_config("tiny" if module.endswith("spvit_deit") else None).to_dict())
  known = dict.fromkeys(NON_OFF_FIELDS) | wd.added_defaults()
  new = sorted(k for k in names if wd.path_entry(known, k) is wd._MISSING)
  assert not new, (f"config fields {new} have a non-off default: add each to the method's "
                   "Method.added_defaults (or workdir.CORE_ADDED_DEFAULTS) with the value runs "
                   "before it computed with (so they resume), or, if it is not new, to "
                   "NON_OFF_FIELDS here")
