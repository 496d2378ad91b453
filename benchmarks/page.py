"""A benchmark's own docs page: what it prints, under the command, date and machine that made it.

  with page(args.doc, "DC-ViT ablation", "What was compared."):
    print("| variant | ... |")        # printed as usual, and kept for the page

Results tables in docs/ are written this way by the benchmark that makes them, never copied by
hand. An empty `doc` only prints.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import cpu_class  # noqa: E402


def command() -> str:
  """This process's command line as `python benchmarks/<script> ...`; a --data folder (machine-
  specific) is written as /tmp/cifar10, where the benchmarks' docstrings unpack it."""
  args, out, skip = sys.argv[1:], [], False
  for a in args:
    if skip:
      skip = False
      out.append("/tmp/cifar10")
    elif a == "--data":
      skip = True
      out.append(a)
    elif a.startswith("--data="):
      out.append("--data=/tmp/cifar10")
    else:
      out.append(a if a and " " not in a else repr(a))
  script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
  return " ".join(["python", script] + out)


class _Tee(io.TextIOBase):
  def __init__(self, stream):
    self.stream, self.kept = stream, io.StringIO()

  def write(self, text: str) -> int:
    self.kept.write(text)
    return self.stream.write(text)

  def flush(self) -> None:
    self.stream.flush()


@contextlib.contextmanager
def page(doc: str, title: str, intro: str = ""):
  """Everything printed inside the block is also written to `doc` (when given) as a markdown
  page: the title, the command, date and CPU class, `intro`, then the printed text. Nothing is
  written if the block raises (a half page would pass for a result)."""
  tee = _Tee(sys.stdout)
  sys.stdout = tee
  try:
    yield tee
  finally:
    sys.stdout = tee.stream
  if doc:
    head = (f"# {title}\n\nWritten by `{command()}` on {time.strftime('%Y-%m-%d')}, on "
            f"{cpu_class()}.{' ' + intro if intro else ''}\n")
    with open(doc, "w") as f:
      f.write(head + "\n" + tee.kept.getvalue().strip("\n") + "\n")
