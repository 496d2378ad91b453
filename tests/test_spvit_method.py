import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import ArchSpec, load, macs
from jaxprune.methods.common import distillation_loss
from jaxprune.train.workdir import LOCK_FILE, run_entries
from tests.test_configs import run_config


def test_spvit_main_job_writes_summary_and_a_loadable_pruned_model(tmp_path):
  w = tmp_path / "w"
  r = run_config("spvit", w, "--config.spvit.target_ratio=0.8", "--config.spvit.tolerance=0.1",
                 "--config.spvit.stop=end")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "| dense" in r.stdout and "| pruned (SPViT)" in r.stdout
  s = json.load(open(w / "summary.json"))
  for key in ("dense", "pruned"):
    assert set(s[key]) >= {"params", "macs", "accuracy", "latency_ms"}
  assert s["target_ratio"] == 0.8
  arch = ArchSpec.from_dict(s["arch"])
  assert macs(arch) == s["pruned"]["macs"] < s["dense"]["macs"]  # the budget pruned something
  pruned = load(str(w / "pruned"))  # rebuilt from the ArchSpec alone
  assert pruned.spec == arch
  from jaxprune.export import read_preprocessing  # the exports carry their input normalisation
  for d in ("pruned", "dense", "search/compact"):
    assert read_preprocessing(str(w / d)) == {"mean": [0.1307], "std": [0.3081]}
  assert os.path.exists(w / "search" / "archs.jsonl")
  rows = [json.loads(l) for l in open(w / "metrics.jsonl")]
  search_rows = [r for r in rows if r["phase"] == "search"]
  assert search_rows and {"task_loss", "budget_loss", "macs_ratio", "ops", "ffn_width"} <= \
      set(search_rows[0])
  assert len(search_rows[0]["ops"]) == arch.depth
  # --overwrite deletes exactly these names: every top-level entry a run writes must be one
  written = set(os.listdir(w))
  assert written <= run_entries() | {LOCK_FILE}, written - run_entries()
  # stop=end: every evaluation to the end is logged, the choice says where it came from
  history = [json.loads(l) for l in open(w / "search" / "archs.jsonl")]
  assert [h["step"] for h in history] == [4, 8, 12, 16]
  assert s["selected"]["chosen_by"] in ("best recorded within tolerance", "search end")
  assert os.path.getsize(w / "arch.png") > 0

  # Fine-tune another logged architecture without searching again, distilled from an external
  # teacher (here the first run's pruned model, stored with its normalisation).
  w2 = tmp_path / "w2"
  r = run_config("spvit", w2, "--config.spvit.target_ratio=0.8", "--config.spvit.tolerance=0.1",
                 "--config.spvit.stop=end", f"--config.spvit.search_dir={w}",
                 "--config.spvit.arch=step:8", f"--config.finetune.distill.teacher={w}/pruned")
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"distilling from the teacher {w}/pruned" in r.stdout
  s2 = json.load(open(w2 / "summary.json"))
  assert s2["selected"]["step"] == 8 and s2["selected"]["chosen_by"] == "step:8"
  assert ArchSpec.from_dict(s2["arch"]) == ArchSpec.from_dict(history[1]["arch"])
  assert not (w2 / "checkpoints" / "search").exists() and not (w2 / "dense").exists()


def test_distillation_losses():
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  y = jax.nn.one_hot(jnp.array([0, 1, 2, 3]), 5)
  ce = lambda logits, tg: float(jnp.mean(-jnp.sum(tg * jax.nn.log_softmax(logits), -1)))
  assert float(distillation_loss(s, t, y, "none", 0.5, 1.0, 0.0)) == pytest.approx(ce(s, y))
  hard = jax.nn.one_hot(jnp.argmax(t, -1), 5)
  assert float(distillation_loss(s, t, y, "hard", 0.5, 1.0, 0.0)) == pytest.approx(
      0.5 * ce(s, y) + 0.5 * ce(s, hard), rel=1e-5)
  soft_same = distillation_loss(s, s, y, "soft", 1.0, 2.0, 0.0)
  assert float(soft_same) == pytest.approx(0.0, abs=1e-6)
  # DeiT's soft distillation, written out: T²·Σ_{b,k} KL terms / (B·K), K = 5 classes.
  T = 2.0
  pt, ps = jax.nn.softmax(t / T), jax.nn.log_softmax(s / T)
  kl_sum = float(jnp.sum(pt * (jnp.log(pt) - ps)))
  assert float(distillation_loss(s, t, y, "soft", 0.5, T, 0.0)) == pytest.approx(
      0.5 * ce(s, y) + 0.5 * T * T * kl_sum / (4 * 5), rel=1e-5)
  with pytest.raises(ValueError, match="distill.kind = 'kl' is unknown"):
    distillation_loss(s, t, y, "kl", 0.5, 1.0, 0.0)
