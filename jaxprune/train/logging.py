"""Metrics to `metrics.jsonl` and TensorBoard event files, plus the progress line.

Only process 0 writes. The progress display is the one place jaxprune prints to the terminal
during long work: `step 120/1000 | loss 0.512 | 9.8 steps/s | ETA 1m32s`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np


class MetricWriter:
  """Appends `{"phase", "step", ...}` rows to `workdir/metrics.jsonl` and TensorBoard."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
      except ImportError:  # TensorBoard files are optional; the jsonl mirror is not
        self._tb = None

  def write(self, phase: str, step: int, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"phase": phase, "step": int(step)}
    for k, v in metrics.items():
      v = np.asarray(v)
      row[k] = v.item() if v.size == 1 else v.tolist()
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("phase", "step") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{phase}/{k}", v, int(step))

  def truncate(self, phase: str, step: int) -> None:
    """Drops `phase`'s rows (and its `phase/...` rows) after `step`: a resumed phase replays
    those steps and logs them again."""
    if self.enabled:
      truncate_jsonl(self.path, lambda r: not (r.get("phase") == phase or str(
          r.get("phase", "")).startswith(phase + "/")) or r.get("step", 0) <= step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def truncate_jsonl(path: str, keep: Callable[[dict[str, Any]], bool]) -> None:
  """Rewrites the JSON-lines file `path` (atomically) with only the rows `keep` accepts; a
  torn last line (the process was killed mid-write) is dropped too."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  kept = []
  for line in lines:
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if keep(row):
      kept.append(line if line.endswith("\n") else line + "\n")
  if len(kept) != len(lines):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The rows of `workdir/metrics.jsonl` (for notebooks and tests)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  m, s = divmod(seconds, 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
  """Prints `phase step/total | metrics | steps/s | ETA` lines on process 0."""

  def __init__(self, phase: str, total: int, start: int = 0, stream=None):
    self.phase, self.total = phase, total
    self.stream = stream or sys.stdout
    self.enabled = jax.process_index() == 0
    self._t0, self._s0 = time.perf_counter(), start

  def update(self, step: int, metrics: Mapping[str, Any], label: str = "") -> None:
    if not self.enabled:
      return
    elapsed = time.perf_counter() - self._t0
    rate = (step - self._s0) / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    shown = " | ".join(f"{k} {float(v):.4g}" for k, v in metrics.items() if np.size(v) == 1)
    print(f"[{self.phase}] step {step}/{self.total} | {label}{shown} | {rate:.2f} steps/s | "
          f"ETA {_fmt_time(eta) if eta == eta else '?'}", file=self.stream, flush=True)
