"""python -m jaxprune.main --config=configs/<name>.py[:runlocal] --workdir=DIR [--config.a.b=v]

Rerunning the same command resumes from the last checkpoint. User errors print one line naming
the field, the value and what is allowed, and exit with status 2.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default runs/<method>).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Replace a workdir holding a run of a different config.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator", os.environ.get("JAX_COORDINATOR_ADDRESS", ""),
    "host:port of process 0 for a multi-process job (or set JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", int(os.environ.get("JAX_NUM_PROCESSES", 1)),
                                      "Processes in a multi-process job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", 0)),
                                   "This process's index in a multi-process job.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() with auto-detection "
                                 "(TPU pods, SLURM, ...).")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  del argv
  import jax
  from absl import logging

  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)

  from jaxprune import methods
  from jaxprune.errors import UserError
  from jaxprune.train.checkpoint import prepare_workdir

  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  config = _CONFIG.value
  if config is None:
    _fail("--config is required, e.g. --config=configs/pretrain.py")
  try:
    method = methods.get(config.method)
    workdir = _WORKDIR.value or os.path.join("runs", config.method)
    prepare_workdir(workdir, config, overwrite=_OVERWRITE.value)
    method.run(config, workdir)
  except UserError as e:
    _fail(str(e))


def run() -> None:
  try:
    app.run(main)
  except (FileNotFoundError, AttributeError, KeyError, ValueError, TypeError) as e:
    # Raised by config_flags while parsing --config / --config.* before main() runs.
    _fail(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
  run()
