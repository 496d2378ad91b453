"""Writes that are all or nothing: a temporary file in the same folder, then a rename.

Every file jaxprune later reads back to skip finished work (exports, stage caches, configs) is
written this way, so a process killed mid-write leaves the old file or none, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, IO, Iterator


@contextlib.contextmanager
def replacing(path: str, mode: str = "w") -> Iterator[IO]:
  """`with replacing(path) as f: ...` writes `f` to `path` only if the block completes."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  with replacing(path) as f:
    f.write(text)


def write_json(path: str, obj: Any, **kwargs) -> None:
  with replacing(path) as f:
    json.dump(obj, f, **kwargs)
