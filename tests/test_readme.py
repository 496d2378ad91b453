"""The Python snippets of the README and of docs/ run as written."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snippets(pages=("README.md", *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))))):
  out = []
  for page in pages:
    with open(os.path.join(ROOT, page)) as f:
      out += [(os.path.relpath(os.path.join(ROOT, page), ROOT), code)
              for code in re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)]
  return out


def test_readme_has_snippets():
  assert _snippets(("README.md",)) and len(_snippets()) >= 3


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs(index):
  page, code = _snippets()[index]
  exec(compile(code, f"{page} snippet {index}", "exec"), {})


def test_ci_runs_exactly_the_readme_test_command():
  with open(os.path.join(ROOT, "README.md")) as f:
    lines = f.read().splitlines()
  test_cmd = lines[lines.index("# 2. Run the test suite (adds CPU torch + transformers for the "
                               "checkpoint-parity tests)") + 1]
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    assert test_cmd in f.read().splitlines()
