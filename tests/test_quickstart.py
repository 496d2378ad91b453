"""The README's quick start, end to end on a small model: convert a Hugging Face checkpoint,
compress it with SPViT on the embedded data, export it, run it in onnxruntime."""

import json

import numpy as np
import pytest

from jaxprune import convert, load
from tests.test_configs import run_config


def test_convert_compress_export_run_in_onnxruntime(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  ort = pytest.importorskip("onnxruntime")
  torch.manual_seed(0)
  hf = transformers.ViTForImageClassification(transformers.ViTConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
      image_size=16, patch_size=4, num_channels=1, num_labels=10)).eval()
  hf.save_pretrained(tmp_path / "hf")
  assert convert.main([str(tmp_path / "hf"), "--out", str(tmp_path / "model")]) == 0
  w = tmp_path / "run"
  r = run_config("spvit", w, f"--config.model.init_from={tmp_path / 'model'}",
                 "--config.spvit.target_ratio=0.8", "--config.spvit.tolerance=0.2",
                 "--config.export.formats=('onnx',)")
  assert r.returncode == 0, r.stderr[-3000:]
  summary = json.load(open(w / "summary.json"))
  onnx_path = summary["exports"]["pruned.onnx"]
  session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
  pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 1)).astype(np.uint8)
  got = session.run(None, {"pixels": pixels})[0]
  pruned = load(str(w / "pruned"))
  x = (pixels.astype(np.float32) / 255 - 0.1307) / 0.3081  # mnist5k's, which the run used
  np.testing.assert_allclose(got, np.asarray(pruned(x)), atol=1e-4)
  assert summary["pruned"]["macs"] < summary["dense"]["macs"]
