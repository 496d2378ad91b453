"""Few-shot subsets, step-indexed batches and placement of the global batch on the mesh.

Batches are a pure function of (seed, step): the index stream is the concatenation of one seeded
permutation per epoch, and batch `s` is its slice [s·B, (s+1)·B). The iterator position is thus
just the step number, which is what checkpoints store; resuming needs nothing else, and a batch
larger than the (few-shot) training set works too.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import Any, Callable, Iterator

import jax
import numpy as np

from jaxprune.data.sources import Split
from jaxprune.data.transforms import TrainCrop
from jaxprune.errors import UserError


def fewshot_indices(labels: np.ndarray, n: int, seed: int, balanced: bool = True) -> np.ndarray:
  """`n` training indices drawn reproducibly from `seed` (sorted).

  With `balanced`, classes get n // classes each (the first n % classes classes, in a seeded
  order, one more); a class with too few examples is an error naming it.
  """
  labels = np.asarray(labels)
  if not 0 < n <= len(labels):
    raise UserError(f"data.fewshot = {n}: must be between 1 and the {len(labels)} training images")
  rng = np.random.default_rng(seed)
  if not balanced:
    return np.sort(rng.choice(len(labels), n, replace=False))
  classes = np.unique(labels)
  extra = set(rng.permutation(classes)[:n % len(classes)].tolist())
  chosen = []
  for c in classes:
    k = n // len(classes) + (1 if c in extra else 0)
    pool = np.flatnonzero(labels == c)
    if k > len(pool):
      raise UserError(f"data.fewshot = {n} (balanced) needs {k} images of class {c}, "
                      f"which has {len(pool)}")
    chosen.append(rng.choice(pool, k, replace=False))
  return np.sort(np.concatenate(chosen))


@dataclasses.dataclass
class Subset:
  """A view of some indices of a split."""

  split: Split
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def get(self, idx: np.ndarray):
    return self.split.get(self.indices[idx])

  def example(self, i: int):
    return self.split.example(int(self.indices[i]))

  def example_pil(self, i: int):
    fast = getattr(self.split, "example_pil", None)
    return fast(int(self.indices[i])) if fast else None

  @property
  def labels(self) -> np.ndarray:
    return self.split.labels[self.indices]


def _files(split) -> list[str] | None:
  if isinstance(split, Subset):
    base = _files(split.split)
    return None if base is None else [base[int(i)] for i in split.indices]
  return getattr(split, "files", None)


def fingerprint(split) -> dict[str, Any]:
  """What a phase trains on, as its checkpoints record it: the number of images and a digest of
  their labels and (for image files) names. A resume that finds other data (an image deleted
  between a kill and the rerun) cannot repeat the same batches."""
  h = hashlib.sha1(np.asarray(split.labels, np.int64).tobytes())
  files = _files(split)
  if files is not None:
    h.update("\n".join(files).encode())
  return {"images": len(split), "digest": h.hexdigest()[:16]}


ENDLESS = 1 << 40  # a training stream's length: more steps than any run takes


@functools.lru_cache(maxsize=4)  # every batch of an epoch cuts the same order (1.28M: ~20 ms)
def epoch_order(num_examples: int, epoch: int, seed: int, repeats: int = 1) -> np.ndarray:
  """Epoch `epoch`'s example order: a seeded permutation; with `repeats` r > 1 (DeiT's repeated
  augmentation) its first ceil(N/r) examples each r times in a row, N positions in all, so an
  epoch keeps its length and each batch holds r differently augmented copies of its images."""
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  if repeats > 1:
    perm = np.repeat(perm[:-(-num_examples // repeats)], repeats)[:num_examples]
  perm.flags.writeable = False  # shared by the cache
  return perm


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int,
                  repeats: int = 1) -> np.ndarray:
  """Global batch `step`: positions [step·B, (step+1)·B) of the stream of epoch orders."""
  start, end = step * batch_size, (step + 1) * batch_size
  out, pos = [], start
  while pos < end:
    epoch, offset = divmod(pos, num_examples)
    take = min(end - pos, num_examples - offset)
    out.append(epoch_order(num_examples, epoch, seed, repeats)[offset:offset + take])
    pos += take
  return np.concatenate(out)


def process_slice(global_batch: int) -> slice:
  """This process's rows of the global batch."""
  n, i = jax.process_count(), jax.process_index()
  per = global_batch // n
  return slice(i * per, (i + 1) * per)


def to_global(local: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """Assembles per-process rows into one global array sharded on the mesh."""
  return jax.make_array_from_process_local_data(sharding, local)


def prefetched(batch: Callable[[int], Any], start: int, stop: int, threads: int = 0,
               workers: int = 0) -> Iterator[Any]:
  """`batch(start), batch(start + 1), ...` in order, made ahead of use by a Grain pipeline:
  `threads` batches in flight per process (0 = made on demand, for in-memory data) and
  `workers` processes (0 = in this one) each making whole batches."""
  import grain
  ds = grain.MapDataset.range(start, stop).map(batch)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                            prefetch_buffer_size=max(threads, 1)))
  if workers:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # library use: Grain's workers read its flags' defaults
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=max(threads, 1)))
  return iter(it)


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Picklable (for Grain workers): this process's rows of global batch `step`."""

  split: Any
  batch_size: int
  seed: int
  rows: slice
  host: TrainCrop | None = None  # host-side crop/flip (sources decoded per batch)
  repeats: int = 1

  def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    idx = batch_indices(len(self.split), self.batch_size, step, self.seed, self.repeats)
    if self.host is None:
      return self.split.get(idx[self.rows])
    images, labels = [], []
    fast = getattr(self.split, "example_pil", None)  # decoded PIL image, no numpy copy
    for row in range(self.batch_size)[self.rows]:
      example = fast(int(idx[row])) if fast else None
      image, label = example if example is not None else self.split.example(int(idx[row]))
      images.append(self.host(image, np.random.default_rng([self.seed, step, row])))
      labels.append(label)
    return np.stack(images), np.asarray(labels, np.int32)


class TrainBatches:
  """Step-indexed training batches for this process, placed on the mesh as global arrays.

  `batches(step)` is a pure function of (seed, step). Consecutive steps come from a Grain
  pipeline that decodes ahead (see `prefetched`); asking for any other step restarts it there.
  """

  def __init__(self, split: Split, batch_size: int, seed: int, sharding: jax.sharding.Sharding,
               threads: int = 0, workers: int = 0, host: TrainCrop | None = None,
               repeats: int = 1):
    self.split, self.batch_size, self.seed, self.sharding = split, batch_size, seed, sharding
    self.threads, self.workers, self.host, self.repeats = threads, workers, host, repeats
    self._it, self._next = None, None

  @property
  def steps_per_epoch(self) -> int:
    return max(1, len(self.split) // self.batch_size)

  def __call__(self, step: int) -> dict[str, jax.Array]:
    if self._it is None or step != self._next:
      self.close()
      rows = _Rows(self.split, self.batch_size, self.seed, process_slice(self.batch_size),
                   self.host, self.repeats)
      self._it = prefetched(rows, step, step + ENDLESS, self.threads, self.workers)
    try:
      images, labels = next(self._it)
    except RuntimeError as e:  # Grain: "Worker process was terminated unexpectedly ..."
      if not self.workers or "terminated unexpectedly" not in str(e):
        raise
      self._it = None  # its workers are gone: closing it would only raise again
      code = re.search(r"exit code (-?\d+)", str(e))
      raise UserError(f"a data worker process died while making batch {step} (exit code "
                      f"{code.group(1) if code else '?'}: killed, or out of memory); rerun the "
                      "same command to resume from the last checkpoint, with fewer "
                      "data.workers if memory is short (0 loads in this process)") from None
    self._next = step + 1
    return {"image": to_global(images, self.sharding), "label": to_global(labels, self.sharding)}

  def close(self) -> None:
    """Stops the pipeline's threads and worker processes (a later call restarts it)."""
    if self._it is not None:
      self._it.close()
      self._it, self._next = None, None


@dataclasses.dataclass(frozen=True)
class _EvalRows:
  split: Any
  batch_size: int
  rows: slice

  def __call__(self, b: int):
    idx = np.arange(b * self.batch_size, (b + 1) * self.batch_size)
    mask = idx < len(self.split)
    images, labels = self.split.get(np.where(mask, idx, 0)[self.rows])
    return images, labels, mask[self.rows]


def eval_batches(split: Split, batch_size: int, sharding: jax.sharding.Sharding,
                 threads: int = 0, workers: int = 0):
  """The whole split in order, last batch padded; yields dicts with a `mask` of real rows."""
  rows = _EvalRows(split, batch_size, process_slice(batch_size))
  it = prefetched(rows, 0, -(-len(split) // batch_size), threads, workers)
  try:
    for images, labels, mask in it:
      yield {"image": to_global(images, sharding), "label": to_global(labels, sharding),
             "mask": to_global(mask, sharding)}
  finally:  # also when the caller stops early: Grain's threads and worker processes end here
    it.close()
