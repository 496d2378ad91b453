"""Two processes on localhost (jax.distributed, CPU collectives) agree with one process."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.jobs import job_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["-m", "jaxprune.main", "--config=configs/pretrain.py:runlocal", "--config.train.steps=6",
        "--config.train.checkpoint_every=3", "--config.train.eval_every_epochs=0"]


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  single = str(tmp_path / "single")
  r = subprocess.run([sys.executable, *ARGS, f"--workdir={single}"], cwd=ROOT, env=job_env(4),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]

  multi, port = str(tmp_path / "multi"), _free_port()
  procs = [subprocess.Popen([sys.executable, *ARGS, f"--workdir={multi}",
                             f"--coordinator=localhost:{port}", "--num_processes=2",
                             f"--process_id={i}"], cwd=ROOT, env=job_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    if p.returncode != 0 and "Gloo" not in err and "collectives" in err:
      pytest.skip(f"this JAX cannot run CPU multi-process: {err[-500:]}")
    assert p.returncode == 0, err[-3000:]
  a = json.load(open(os.path.join(single, "summary.json")))
  b = json.load(open(os.path.join(multi, "summary.json")))
  assert a["dense"]["accuracy"] == pytest.approx(b["dense"]["accuracy"], abs=1e-6)
  losses = {}
  for name, d in (("single", single), ("multi", multi)):
    rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    losses[name] = [r["loss"] for r in rows if r["phase"] == "pretrain"]
  assert losses["single"] and losses["single"] == pytest.approx(losses["multi"], rel=1e-4)


def test_a_lost_peer_is_one_line_within_the_timeout(tmp_path):  # issue 26 case 4
  """Process 1 killed mid-run: process 0 stops within --peer_timeout with one line naming the
  lost peer and the last checkpoint (it aborted after 71 s with a Gloo traceback)."""
  import signal
  import time
  work, port = tmp_path / "w", _free_port()
  args = [a for a in ARGS if not a.startswith("--config.train.steps")]
  procs = [subprocess.Popen([sys.executable, *args, "--config.train.steps=100000",
                             f"--workdir={work}", f"--coordinator=localhost:{port}",
                             "--num_processes=2", f"--process_id={i}", "--peer_timeout=8"],
                            cwd=ROOT, env=job_env(2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    deadline = time.time() + 240
    while not (work / "checkpoints" / "pretrain" / "3").exists():  # training, checkpointed
      assert time.time() < deadline and all(p.poll() is None for p in procs), "no checkpoint"
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    err = procs[0].communicate(timeout=120)[1]
  finally:
    for p in procs:
      p.kill()
  lines = [l for l in err.splitlines() if l.strip()]
  if procs[0].returncode != 3 and "collectives" in err:
    pytest.skip(f"this JAX cannot run CPU multi-process: {err[-500:]}")
  assert procs[0].returncode == 3, err[-3000:]
  assert time.time() - killed < 60
  assert lines[-1].startswith("error: lost peer process 1 (no sign of life for 8 s); the last "
                              "checkpoint of phase pretrain is step "), err[-2000:]
  assert "Traceback" not in err and "Fatal Python error" not in err, err[-2000:]
