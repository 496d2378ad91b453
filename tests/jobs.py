"""The environment of the jobs the tests start as subprocesses (and of the tests themselves).

XLA's CPU backend at LLVM optimisation level 0 and without its fusion emitters: the suite's
programs are tiny and run a few steps each, so compiling dominates. On a 4-block Swin train step
(8 fake devices) level 0 took the compile from 12.1 s to 5.5 s (a step 0.062 → 0.066 s); the
emitters off took it on to 2.4-3.3 s (the step unchanged), and the depth-3 DC-ViT search job from
80 s to 60 s. Benchmarks and real runs keep XLA's defaults (they do not import the tests).
"""

import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
# Smoke runs (configs, the 224 px job) shard over 2 fake devices, not 8: the sharded code paths
# are the same, and the method jobs with tests of their own run on 8. A 4-block Swin SPViT job
# took 55 s instead of 72 s (user 64 s instead of 82 s).
SMOKE_DEVICES = 2


def xla_flags(devices: int) -> str:
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def job_env(devices: int = 8, **extra: str) -> dict[str, str]:
  """os.environ for a `python -m jaxprune.main` job on `devices` fake CPU devices."""
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(devices), **extra)
