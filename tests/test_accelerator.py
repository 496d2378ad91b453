"""benchmarks/accelerator.py runs end to end at tiny size on the CPU (its full size is for GPUs)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import accelerator  # noqa: E402


def test_accelerator_report_at_tiny_size(tmp_path):
  out = tmp_path / "acc.md"
  report = accelerator.main(["--size", "tiny", "--steps", "2", "--iters", "2", "--out", str(out)])
  assert out.read_text() == report
  for row in ("| dense | float32 |", "| dense | bfloat16 |", "| SPViT search | float32 |",
              "| SPViT search | bfloat16 |", "| SPViT-pruned (representative) |",
              "images·steps/s", "Logits vs the CPU: n/a"):
    assert row in report, row
  assert accelerator.peak("NVIDIA H200", "bfloat16") == 989.0
  assert accelerator.peak("Some CPU", "float32") is None
