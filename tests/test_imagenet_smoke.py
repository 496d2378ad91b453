"""The real-scale path at smoke size: a Hugging Face DeiT at 224 px (4 blocks, narrow: the
suite's time is the limit) converted, then the ImageNet configs' `:smoke` forms on a generated
folder of JPEGs of mixed sizes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxprune import ArchSpec, convert, load  # noqa: E402
from jaxprune.export import read_preprocessing  # noqa: E402
from tests.jobs import SMOKE_DEVICES, job_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def deit224(tmp_path_factory):
  """(converted model dir, JPEG folder): a random 4-block DeiT (width 48, 3 heads) at 224 px
  and 3 classes of 6 train / 2 test JPEGs between 180 and 320 px on a side."""
  from PIL import Image
  root = tmp_path_factory.mktemp("imagenet")
  torch.manual_seed(0)
  hf = transformers.DeiTForImageClassification(transformers.DeiTConfig(
      hidden_size=48, num_hidden_layers=4, num_attention_heads=3, intermediate_size=192,
      image_size=224, patch_size=16, num_channels=3, num_labels=3))
  hf.save_pretrained(root / "hf")
  assert convert.main([str(root / "hf"), "--out", str(root / "deit"), "--mean", *map(str, MEAN),
                       "--std", *map(str, STD)]) == 0
  rng = np.random.default_rng(0)
  for split, n in (("train", 6), ("test", 2)):
    for c in range(3):
      os.makedirs(root / "jpeg" / split / f"n0{c}")
      for i in range(n):
        h, w = rng.integers(180, 320, 2)
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) // (c + 1)
        Image.fromarray(base).resize((int(w), int(h))).save(
            root / "jpeg" / split / f"n0{c}" / f"{i}.JPEG", quality=90)
  return root / "deit", root / "jpeg"


def _run(config, workdir, model, folder):
  return subprocess.run([sys.executable, "-m", "jaxprune.main", f"--config={config}",
                         f"--workdir={workdir}", f"--config.model.init_from={model}",
                         f"--config.data.source=folder:{folder}"], cwd=ROOT,
                        env=job_env(SMOKE_DEVICES), capture_output=True, text=True, timeout=900)


def test_spvit_smoke_on_a_converted_224px_deit(deit224, tmp_path):
  model, folder = deit224
  assert load(str(model)).spec.depth == 4 and load(str(model)).spec.image_size == 224
  r = _run("configs/imagenet/spvit_deit.py:small,smoke", tmp_path / "w", model, folder)
  assert r.returncode == 0, r.stderr[-3000:]
  s = json.load(open(tmp_path / "w" / "summary.json"))
  arch = ArchSpec.from_dict(s["arch"])
  assert arch.depth == 4 and arch.image_size == 224 and s["pruned"]["macs"] <= s["dense"]["macs"]
  pruned = load(str(tmp_path / "w" / "pruned"))
  assert pruned.spec == arch
  assert read_preprocessing(str(tmp_path / "w" / "pruned")) == {"mean": list(MEAN),
                                                               "std": list(STD)}


def test_dcvit_smoke_on_a_converted_224px_deit(deit224, tmp_path):
  """About a minute on 2 cores: the block trials and PRACTISE's adaptor phases share one
  compiled step each, and the inversion's image gradient goes through the matmul form of the
  patch embedding (`models.blocks.PatchEmbed`; as a strided convolution, under the suite's
  LLVM -O0 flags, 108 s per inversion step: the job took 8 min)."""
  model, folder = deit224
  r = _run("configs/imagenet/dcvit_deit_base.py:smoke", tmp_path / "w", model, folder)
  assert r.returncode == 0, r.stderr[-3000:]
  s = json.load(open(tmp_path / "w" / "summary.json"))
  assert "dense" in s and s["family"], sorted(s)
