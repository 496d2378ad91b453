"""Test set-up: 8 fake CPU devices (set before jax is imported), no hub access, one XLA
compilation cache for the whole session."""

import os
import shutil
import tempfile

from tests.jobs import xla_flags  # noqa: E402

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent XLA compilation cache for the session: the xdist workers and the jobs the tests
# start as subprocesses inherit it through the environment (set here, in the controller, before
# the workers start). The end-to-end jobs compile many identical programs (the same small dense
# model, eval and latency steps); with the cache a repeated DC-ViT runlocal job took 41 s instead
# of 117 s.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxprune-tests-xla-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def pytest_sessionfinish(session):
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):  # the controller, last out
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_addoption(parser):
  parser.addoption("--slow", action="store_true",
                   help="also run the tests marked slow (minutes each; not in CI)")


def pytest_collection_modifyitems(config, items):
  if config.getoption("--slow"):
    return
  import pytest
  skip = pytest.mark.skip(reason="slow: run with --slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
