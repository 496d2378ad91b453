"""The CPU class a benchmark ran on, printed beside its figures: jaxprune's speed against
PyTorch depends on it (docs/speed.md), so a ratio is quoted with the class that gave it."""

from __future__ import annotations

import os
import platform

# The instruction-set features that change which kernels XLA and PyTorch pick, best first.
_CLASSES = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))


def cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def cpu_flags() -> set[str]:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def cpu_class() -> str:
  """E.g. 'AMD EPYC, AVX-512 (avx512_bf16), 2 cores'."""
  flags = cpu_flags()
  best = next((name for flag, name in _CLASSES if flag in flags), "no AVX2")
  extra = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "avx512_vnni"))
  detail = f" ({', '.join(extra)})" if extra else ""
  return f"{cpu_name()}, {best}{detail}, {os.cpu_count()} cores"
