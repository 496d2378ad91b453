"""The command line as a user meets it: one-line errors, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.jobs import job_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "--config=configs/pretrain.py:runlocal"


def _main(*args, devices=8, **kw):
  return subprocess.run([sys.executable, "-m", "jaxprune.main", *args], cwd=ROOT,
                        env=job_env(devices), capture_output=True, text=True, timeout=300, **kw)


@pytest.mark.parametrize("override, expected", [
    ("--config.data.source=cifar", "data.source = 'cifar' is unknown; allowed are mnist5k"),
    ("--config.data.source=folder:/no/such/dir", "/no/such/dir/train is not a directory"),
    ("--config.model.variant=vit_giant", "model variant 'vit_giant' is unknown; allowed are"),
    ("--config.train.batch_size=12", "train.batch_size = 12 is not divisible by the 8 devices"),
    ("--config.model.init_from=/no/such/model", "model directory '/no/such/model' has no arch.json"),
    ("--config.method=spvitt", "config.method = 'spvitt' is unknown; allowed are dcvit, practise, pretrain, spvit, spvit_random"),
    ("--config.optim.lrr=0.1", "unknown config field in the --config.* overrides: 'lrr' Did "
                               'you mean "lr"'),
    ("--config.optim.lr=abc", "--config.optim.lr=abc: could not convert string to float"),
    ("--config.train.epochs=-1", "train.epochs = -1: must be an integer >= 0"),
])
def test_user_errors_are_one_line(tmp_path, override, expected):
  r = _main(CONFIG, f"--workdir={tmp_path / 'w'}", override)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
  assert expected in lines[0]
  assert "Traceback" not in r.stderr


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_the_flags_and_configs(flag):  # issue 26 case 8
  r = subprocess.run([sys.executable, "-m", "jaxprune.main", flag], cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0 and not r.stderr.strip(), r.stderr
  for text in ("--config", "--workdir", "--overwrite", "runs/<method> in the current folder",
               "spvit", "dcvit", "practise", "imagenet/spvit_deit", ":runlocal"):
    assert text in r.stdout, text


@pytest.mark.skipif(bool(__import__("shutil").which("nvidia-smi")), reason="a GPU machine")
def test_a_platform_this_machine_lacks_is_one_line(tmp_path):  # issue 26 case 7
  env = dict(job_env(1), JAX_PLATFORMS="cuda")
  r = subprocess.run([sys.executable, "-m", "jaxprune.main", CONFIG, f"--workdir={tmp_path}/w"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-2000:]
  assert r.stderr.startswith("error: JAX_PLATFORMS='cuda': the backend did not start")
  assert not (tmp_path / "w").exists()


def test_missing_config_file_is_one_line():
  r = _main("--config=configs/nope.py")
  assert r.returncode == 2 and r.stderr.count("\n") == 1 and "configs/nope.py" in r.stderr


def _signal_at_first_checkpoint(workdir, args, sig):
  """Starts the command, sends `sig` once its first checkpoint exists; (returncode, stderr)."""
  # Ctrl-C as in a terminal, even when the tests run under nohup: an ignored SIGINT would be
  # inherited, a handled one is reset by exec (no preexec_fn: forking a threaded JAX process)
  ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  if ignored:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    proc = subprocess.Popen([sys.executable, "-m", "jaxprune.main", *args], cwd=ROOT,
                            env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
  finally:
    if ignored:
      signal.signal(signal.SIGINT, signal.SIG_IGN)
  ckpt_dir = os.path.join(workdir, "checkpoints", "pretrain")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
      break
    time.sleep(0.02)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  return proc.returncode, err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
  w = str(tmp_path / "w")
  rc, err = _signal_at_first_checkpoint(w, [CONFIG, f"--workdir={w}", "--config.train.steps="
                                            "100000", "--config.train.checkpoint_every=5"],
                                        signal.SIGINT)
  assert rc == 130, err[-2000:]
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
  assert lines[0].startswith("error: interrupted at step ") and "of phase pretrain (the last " \
      "checkpoint is step " in lines[0] and lines[0].endswith("rerun the same command to resume")


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
  """Also (on the finished run, rather than a run of its own): the pretrain config's smoke
  test, and a workdir holding another config's run is refused before any work."""
  extra = ["--config.train.steps=60", "--config.train.checkpoint_every=10",
           "--config.train.eval_every_epochs=0"]
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  assert _main(CONFIG, f"--workdir={a}", *extra).returncode == 0
  rc, _ = _signal_at_first_checkpoint(b, [CONFIG, f"--workdir={b}", *extra], signal.SIGKILL)
  assert rc == -signal.SIGKILL and not os.path.exists(os.path.join(b, "summary.json"))
  r = _main(CONFIG, f"--workdir={b}", *extra)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from checkpoint at step" in r.stdout
  sa, sb = (json.load(open(os.path.join(d, "summary.json"))) for d in (a, b))
  assert sa["dense"]["accuracy"] == pytest.approx(sb["dense"]["accuracy"], abs=1e-6)
  from jaxprune.train.workdir import LOCK_FILE, run_entries  # (the pretrain config's smoke test)
  for d in (a, b):  # --overwrite deletes exactly these names: every entry written must be one
    assert set(os.listdir(d)) <= run_entries() | {LOCK_FILE}, set(os.listdir(d)) - run_entries()
  from jaxprune import load
  import jax
  ma, mb = load(os.path.join(a, "model")), load(os.path.join(b, "model"))
  from flax import nnx
  for x, y in zip(jax.tree.leaves(nnx.state(ma)), jax.tree.leaves(nnx.state(mb))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
  r = _main(CONFIG, f"--workdir={a}", "--config.train.steps=61", *extra[1:])
  assert r.returncode == 2 and "holds a run of a different config (differs in: train.steps)" in \
      r.stderr




def test_compiled_programs_are_kept_in_the_user_cache(tmp_path):  # issue 31, target 5
  """jaxprune.main keeps XLA's compiled programs in ~/.cache/jaxprune/xla (a rerun or resume
  skips compiling) unless JAX_COMPILATION_CACHE_DIR names another folder."""
  env = {k: v for k, v in job_env(1).items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  code = ("import jax, jax.numpy as jnp; from jaxprune.main import use_compile_cache; "
          "use_compile_cache(); print(jax.config.jax_compilation_cache_dir); "
          "jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(7)).block_until_ready()")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  cache = tmp_path / ".cache" / "jaxprune" / "xla"
  assert r.stdout.strip() == str(cache) and os.listdir(cache)
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     env=dict(env, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine")), timeout=120)
  assert r.stdout.strip() == str(tmp_path / "mine")
