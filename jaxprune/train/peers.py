"""Multi-process jobs: notice a lost peer within a bounded wait and say so in one line.

When a process of a `jax.distributed` job dies, the others block in their next collective until
Gloo or XLA's coordination service gives up and aborts them (a C++ abort: a Gloo traceback and
"Fatal Python error", minutes later). A daemon thread in every process instead writes a
timestamp to the coordination service's key-value store every `PERIOD` seconds and reads the
others'; a peer silent for `timeout` seconds (or a coordinator that no longer answers) ends this
process at once with one line naming the lost peer and the last checkpoint to resume from.
"""

from __future__ import annotations

import os
import sys
import threading
import time

PERIOD = 2.0
EXIT_CODE = 3
_where: dict[str, str] = {}  # the running phase and its checkpoint folder (`fit` sets them)
_watch: dict[str, object] = {}  # the client and this process's id, once watching


def running(phase: str, directory: str) -> None:
  """Records the phase in progress, for the message a lost peer prints."""
  _where.update(phase=phase, directory=directory)


def _last_checkpoint() -> str:
  directory = _where.get("directory")
  if not directory:
    return "no phase had started"
  try:
    steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit())
  except OSError:
    steps = []
  step = f"step {steps[-1]}" if steps else "none yet"
  return f"the last checkpoint of phase {_where['phase']} is {step} ({directory})"


def _lost(peer: int, why: str) -> None:
  sys.stderr.write(f"error: lost peer process {peer} ({why}); {_last_checkpoint()}; restart "
                   "every process with the same command to resume\n")
  sys.stderr.flush()
  os._exit(EXIT_CODE)


def _try_get(client, key: str) -> str | None:
  try:
    return client.key_value_try_get(key)
  except Exception as e:  # a peer that has not written yet: NOT_FOUND
    if "NOT_FOUND" in str(e):
      return None
    raise


def finished() -> None:
  """Tells the peers this process is ending on purpose (done, or stopped by an error it has
  reported), so that its silence is not taken for a crash."""
  if _watch:
    try:
      _watch["client"].key_value_set(f"jaxprune/done/{_watch['id']}", "1", True)
    except Exception:  # the service is gone already: nothing to tell
      pass


def watch(client, process_id: int, num_processes: int, timeout: float) -> threading.Thread:
  """Starts the heartbeat/watch thread on `client` (jax's distributed runtime client)."""
  _watch.update(client=client, id=process_id, timeout=timeout)

  def loop():
    last_seen = {p: time.monotonic() for p in range(num_processes) if p != process_id}
    values: dict[int, str] = {}
    while True:
      now = time.monotonic()
      try:
        client.key_value_set(f"jaxprune/alive/{process_id}", repr(now), True)
        for p in last_seen:
          v = _try_get(client, f"jaxprune/alive/{p}")
          if v != values.get(p):
            values[p], last_seen[p] = v, now
      except Exception as e:  # the coordination service itself is gone: process 0 died
        if process_id != 0:
          _lost(0, f"the coordinator stopped answering: {type(e).__name__}")
        return
      for p, seen in last_seen.items():
        if now - seen > timeout and _try_get(client, f"jaxprune/done/{p}") is None:
          _lost(p, f"no sign of life for {timeout:g} s")
      time.sleep(PERIOD)

  thread = threading.Thread(target=loop, name="jaxprune-peers", daemon=True)
  thread.start()
  _watch["thread"] = thread
  return thread


def settle() -> None:
  """For the main thread's error handler: a collective (e.g. the barrier of a checkpoint save)
  can fail with an exception as soon as a peer dies, before the watch has called it lost. Waits
  at most the timeout and two periods for the watch to decide — it then ends the process with
  its one line — and returns if it does not, for the caller to report its own error."""
  thread = _watch.get("thread")
  if thread is None:
    return
  deadline = time.monotonic() + _watch["timeout"] + 2 * PERIOD
  while thread.is_alive() and time.monotonic() < deadline:
    time.sleep(0.1)
