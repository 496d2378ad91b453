"""Every config runs end to end in its `runlocal` form, through the real command line."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxprune.train.workdir import LOCK_FILE, run_entries
from tests.jobs import SMOKE_DEVICES, job_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Configs with an end-to-end test of their own (checking more than this smoke test does):
# tests/test_spvit_method.py, tests/test_dcvit.py, tests/test_cli.py (pretrain: run, killed,
# resumed; its written entries checked there).
OWN_TEST = {"spvit", "dcvit", "pretrain"}
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "common.py"))
# Run by hand, not in CI: its runlocal form alone takes minutes on the 2-core CI machine (many
# distinct Swin graphs to compile); its pieces are tested in tests/test_swin.py.
BY_HAND = {"dcvit_swin"}
SMOKE = [c for c in CONFIGS if c not in OWN_TEST | BY_HAND]


def run_config(name, workdir, *overrides, devices=8):
  return subprocess.run([sys.executable, "-m", "jaxprune.main",
                         f"--config=configs/{name}.py:runlocal", f"--workdir={workdir}",
                         *overrides], cwd=ROOT, env=job_env(devices), capture_output=True,
                        text=True, timeout=600)


# A method's run writes its final models in the `export.formats` asked (checked on one config).
EXPORTING = {"practise": "stablehlo"}


@pytest.mark.parametrize("name", SMOKE)
def test_config_runs_in_runlocal_form(name, tmp_path):
  fmt = EXPORTING.get(name)
  r = run_config(name, tmp_path / "w", *([f"--config.export.formats=('{fmt}',)"] if fmt else []),
                 devices=SMOKE_DEVICES)
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(tmp_path / "w" / "summary.json"))
  assert "dense" in summary
  if fmt:
    assert list(summary["exports"]) == ["practise_drop1.stablehlo"]
    from jax import export
    program = export.deserialize(open(summary["exports"]["practise_drop1.stablehlo"],
                                      "rb").read())
    assert program.in_avals[0].dtype == np.uint8
  # --overwrite deletes exactly these names: every top-level entry a run writes must be one
  written = set(os.listdir(tmp_path / "w"))
  assert written <= run_entries() | {LOCK_FILE}, written - run_entries()


@pytest.mark.parametrize("name, arg", [
    ("spvit_deit", a) for a in ("tiny", "small", "base", "tiny,smoke", "base,smoke")] + [
    (n, a) for n in ("dcvit_deit_base", "practise_deit_base") for a in ("", "smoke")])
def test_imagenet_configs_are_valid(name, arg):
  """configs/imagenet/: every field passes validation (the data set is not opened)."""
  import importlib

  from jaxprune.validate import check_fields
  config = importlib.import_module(f"configs.imagenet.{name}").get_config(arg)
  check_fields(config)
  assert config.model.image_size == 224 and config.data.eval_crop == 0.875
  phases = [config[p].train for p in ("search", "finetune", "mimic") if p in config]
  assert phases and all(t.compute_dtype == ("float32" if "smoke" in arg else "bfloat16")
                        for t in phases)


def test_imagenet_config_arguments_are_checked():
  from configs.imagenet import dcvit_deit_base, spvit_deit
  with pytest.raises(ValueError, match="start with one of tiny, small, base"):
    spvit_deit.get_config("huge")
  with pytest.raises(ValueError, match="'fast' is unknown; allowed: smoke"):
    dcvit_deit_base.get_config("fast")
