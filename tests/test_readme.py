"""The README's Python snippets run as written."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snippets():
  with open(os.path.join(ROOT, "README.md")) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_snippets():
  assert len(_snippets()) >= 2


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs(index):
  exec(compile(_snippets()[index], f"README.md snippet {index}", "exec"), {})


def test_ci_runs_exactly_the_readme_test_command():
  with open(os.path.join(ROOT, "README.md")) as f:
    lines = f.read().splitlines()
  test_cmd = lines[lines.index("# 2. Run the test suite (adds CPU torch + transformers for the "
                               "checkpoint-parity tests)") + 1]
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    assert test_cmd in f.read().splitlines()
