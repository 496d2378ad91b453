"""benchmarks/page.py: a benchmark's printed results become its docs page, with the command."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import page  # noqa: E402


def test_printed_text_becomes_the_page(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", [os.path.join(page.ROOT, "benchmarks", "dcvit_rank.py"),
                                    "--data", "/home/me/cifar", "--widths", "96,72", "--x=a b"])
  doc = tmp_path / "rank.md"
  with page.page(str(doc), "Rank quality", "One seed."):
    print("| a | b |\n|---|---|")
    print("| 1 | 2 |")
  text = doc.read_text()
  assert text.startswith("# Rank quality\n\nWritten by `python benchmarks/dcvit_rank.py --data "
                         "/tmp/cifar10 --widths 96,72 '--x=a b'` on ")
  assert "cores. One seed.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n" in text
  assert capsys.readouterr().out == "| a | b |\n|---|---|\n| 1 | 2 |\n"  # still printed
  assert sys.stdout is not None and not isinstance(sys.stdout, page._Tee)


def test_no_page_when_the_benchmark_fails_or_none_is_asked(tmp_path):
  doc = tmp_path / "x.md"
  with pytest.raises(RuntimeError):
    with page.page(str(doc), "X"):
      print("| half |")
      raise RuntimeError("trial failed")
  assert not doc.exists() and not isinstance(sys.stdout, page._Tee)
  with page.page("", "X"):
    print("only printed")
  assert not doc.exists()
