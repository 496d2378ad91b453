"""Each notebook in colabs/ runs headless (its code cells in order, in one namespace) and is
committed with its outputs stripped."""

import glob
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_headless_with_outputs_stripped(path, monkeypatch):
  nb = json.load(open(path))
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)
  monkeypatch.chdir(os.path.dirname(path))
  namespace = {"__name__": "__main__"}
  for i, cell in enumerate(code):
    exec(compile("".join(cell["source"]), f"{os.path.basename(path)} cell {i}", "exec"), namespace)
