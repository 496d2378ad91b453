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
_WORKDIR = flags.DEFINE_string("workdir", None,
                                "Run directory (default runs/<method> in the current folder).")
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
_COMPILE_CACHE = flags.DEFINE_bool(
    "compile_cache", True, "Keep compiled XLA programs in ~/.cache/jaxprune/xla (or "
    "$JAX_COMPILATION_CACHE_DIR) so reruns and resumes skip compiling; --nocompile_cache: off.")
_PEER_TIMEOUT = flags.DEFINE_float("peer_timeout", 60.0,
                                   "Multi-process jobs: seconds without a sign of life from a "
                                   "peer process before this one stops, naming it.")


def _fail(message: str) -> None:
  print("error: " + " ".join(str(message).split()), file=sys.stderr)
  sys.exit(2)


def main(argv) -> None:
  del argv
  from absl import logging

  from jaxprune.train import peers
  if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    _run()
  finally:  # done or stopped by a reported error: the peers must not take it for a crash
    peers.finished()


def _run() -> None:
  import jax

  from jaxprune.errors import UserError
  from jaxprune.train.loop import Interrupted
  try:
    if _PEER_TIMEOUT.value <= 0:
      raise UserError(f"--peer_timeout = {_PEER_TIMEOUT.value}: must be > 0 seconds")
    # XLA's own heartbeat gives up (aborting) later than our watch names the lost peer.
    beats = {"heartbeat_timeout_seconds": int(_PEER_TIMEOUT.value) + 60}
    if _COORDINATOR.value:
      jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                 **beats)
    elif _DISTRIBUTED.value:
      jax.distributed.initialize(**beats)
    check_platform()  # after jax.distributed: it starts the backends
    if _COMPILE_CACHE.value:
      use_compile_cache()
    if jax.process_count() > 1:
      from jax._src import distributed

      from jaxprune.train import peers
      peers.watch(distributed.global_state.client, jax.process_index(), jax.process_count(),
                  _PEER_TIMEOUT.value)
    execute(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value)
  except UserError as e:
    _fail(str(e))
  except Interrupted as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(130)
  except KeyboardInterrupt:  # outside a training phase's loop (which raises Interrupted)
    print("error: interrupted between training steps (finished phases and checkpoints are "
          "kept); rerun the same command to resume", file=sys.stderr)
    sys.exit(130)
  except Exception:
    if jax.process_count() > 1:  # a lost peer can fail a collective before the watch names it
      from jaxprune.train import peers
      peers.settle()
    raise


def use_compile_cache() -> None:
  """JAX's persistent compilation cache, in the user's cache folder unless
  JAX_COMPILATION_CACHE_DIR names another: a rerun or a resume of the same job finds its
  programs compiled."""
  import jax

  from jaxprune.data.sources import USER_CACHE
  if jax.config.jax_compilation_cache_dir:  # set by the environment (e.g. the test suite)
    return
  path = os.path.join(USER_CACHE, "xla")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:  # a read-only home: run without the cache
    return
  jax.config.update("jax_compilation_cache_dir", path)


def check_platform() -> None:
  """The backends JAX was asked for (`JAX_PLATFORMS`) start, or one line says which did not."""
  import jax

  from jaxprune.errors import UserError
  asked = os.environ.get("JAX_PLATFORMS", "")
  try:
    jax.devices()
  except (RuntimeError, AssertionError) as e:  # no plugin / no device: jax asserts or raises
    reason = " ".join(str(e).split())[:200] or "no such device or plugin on this machine"
    raise UserError(f"JAX_PLATFORMS={asked!r}: the backend did not start ({reason}); unset "
                    "JAX_PLATFORMS to use what this machine has") from None


def execute(config, workdir: str | None, overwrite: bool = False):
  """Validates the whole config, then prepares the workdir, then runs the method.

  Nothing is written or deleted before the config has passed every up-front check and the data
  source has opened.
  """
  import jax

  from jaxprune import methods
  from jaxprune.train.workdir import prepare_workdir
  from jaxprune.validate import validate

  from jaxprune.methods.common import open_data, resolve_normalisation
  method = methods.get(config.method)
  validate(config, jax.device_count())
  open_data(config)  # a source that does not open fails here, before the workdir is touched
  where = resolve_normalisation(config)
  if where != "config" and jax.process_index() == 0:
    print(f"[data] normalisation from {where}: mean {tuple(config.data.mean)}, std "
          f"{tuple(config.data.std)}", flush=True)
  workdir = workdir or os.path.join("runs", config.method)
  prepare_workdir(workdir, config, overwrite=overwrite)
  return method.run(config, workdir)


def _clean(e: BaseException) -> str:
  """An exception message as one readable line; an embedded traceback is cut to its last line."""
  lines = [l.strip() for l in str(e).replace("\\n", "\n").splitlines() if l.strip()]
  if any(l.startswith("Traceback") for l in lines):
    head = lines[0].split("Error whilst")[0].rstrip(": ")
    lines = [head + ":", lines[-1]] if head else lines[-1:]
  text = " ".join(lines).replace("\\'", "'")
  if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1]
  return text


OWN_FLAGS = ("config", "workdir", "overwrite", "coordinator", "num_processes", "process_id",
             "distributed", "peer_timeout", "compile_cache")


def usage() -> str:
  """What `--help` prints: the command, our flags, the shipped configs."""
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  folder = next((d for d in (os.path.join(here, "configs"), "configs") if os.path.isdir(d)), "")
  configs = sorted(os.path.relpath(os.path.join(root, f), folder)[:-3]
                   for root, _, files in os.walk(folder) for f in files
                   if f.endswith(".py") and f not in ("__init__.py", "common.py", "recipe.py"))
  lines = ["usage: python -m jaxprune.main --config=configs/<name>.py[:runlocal] [--workdir=DIR] "
           "[--overwrite] [--config.<field>=<value> ...]", "",
           "Runs a method on a config; rerunning the same command resumes it. Without "
           "--workdir the run goes to runs/<method> in the current folder.", "", "flags:"]
  for name in OWN_FLAGS:
    flag = flags.FLAGS[name]
    lines.append(f"  --{name:<15} {flag.help}")
  lines += ["", f"configs ({folder or 'configs/'}; ':runlocal' shrinks any of them for a quick "
            "run, the imagenet/ ones take ':smoke'):", "  " + ", ".join(configs)]
  return "\n".join(lines)


def run() -> None:
  """Parses flags and the config up front so that any mistake in them is one clean line."""
  if any(a in ("-h", "--help", "-help", "--helpfull", "-?") for a in sys.argv[1:]):
    print(usage())
    sys.exit(0)
  try:
    argv = flags.FLAGS(sys.argv)
  except (AttributeError, KeyError) as e:  # --config.a.b names a field the config lacks
    _fail(f"unknown config field in the --config.* overrides: {_clean(e)}")
  except (flags.Error, ValueError, TypeError) as e:
    _fail(_clean(e).replace("flag --config", "--config"))
  if _CONFIG.value is None:
    _fail("--config is required, e.g. --config=configs/pretrain.py")
  try:
    _ = _CONFIG.value.method  # ml_collections defers config-file errors to the first access
  except (OSError, AttributeError, KeyError, ValueError, TypeError) as e:
    _fail(_clean(e))
  app.run(main, argv=argv)


if __name__ == "__main__":
  run()
