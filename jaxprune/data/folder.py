"""`folder:<path>` sources: class-per-folder images, listed once, decoded lazily per batch.

Opening a folder reads a file list and labels only (an ImageNet-sized folder must not be decoded
at start): `<path>/train/<class>/*` and `<path>/test/<class>/*`, class ids in sorted folder-name
order. The listing is cached in an index file next to the data (or under
`~/.cache/jaxprune/` when the folder is read-only) and rebuilt when any split or class folder
changes (their modification times are the index's signature) or when the index itself is damaged
(its line count and checksum are written with it). Every format Pillow opens is listed (other
files are left out with a warning); a class folder only in `test/` is an error; 16-bit grayscale
is scaled to 8 bits.

Channels: 3 if any image of a seeded sample of `CHANNEL_SAMPLE` files (all of them in a smaller
folder) has colour, else 1 (read from headers, no decoding); every image is converted to it.
Unreadable images are found when they are read (an error naming the file), or, with
`data.skip_corrupt`, by decoding every image once when the index is built (the verified index is
cached too) and leaving them out with a warning that counts them.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from absl import logging

from jaxprune.data.transforms import eval_view
from jaxprune.errors import UserError

GRAYSCALE_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "LA")
WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16-bit (or 32-bit int) grayscale


def _image_extensions() -> tuple[str, ...]:
  """Every file extension Pillow can open (torchvision's list is a subset: .tif, .ppm, ...)."""
  from PIL import Image
  Image.init()
  return tuple(sorted(e for e, fmt in Image.registered_extensions().items()
                      if fmt in Image.OPEN))


IMAGE_EXTENSIONS = _image_extensions()
CHANNEL_SAMPLE = 1000
INDEX_NAME = ".jaxprune_index_v1.tsv"
SPLITS = ("train", "test")


def _read_image(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3]."""
  return np.asarray(_read_pil(path))


def _read_pil(path: str):
  """The decoded RGB PIL image (the host transforms crop and resize it without a numpy copy).
  16-bit grayscale is scaled to 8 bits (Pillow's own conversion clips it: 99 % of a typical
  16-bit PNG's pixels became 255)."""
  from PIL import Image
  with Image.open(path) as img:
    if img.mode in WIDE_MODES:
      wide = np.asarray(img).astype(np.int64)
      return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


def _header(path: str) -> tuple[bool, int]:
  """(whether the file is grayscale, its height), from its header alone."""
  from PIL import Image
  with Image.open(path) as img:
    return img.mode in GRAYSCALE_MODES, img.size[1]


def _try(fn, *args):
  try:
    return fn(*args), None
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
    return None, f"{type(e).__name__}: {e}"


def _classes(root: str) -> list[str]:
  train = os.path.join(root, "train")
  classes = sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))
  if not classes:
    raise UserError(f"data.source 'folder:{root}': no class folders in {train}")
  return classes


def _signature(root: str, classes: list[str]) -> dict[str, int]:
  """Modification times of the split and class folders: adding, removing or renaming an image
  changes its class folder's."""
  sig = {}
  for split in SPLITS:
    for d in ["", *classes]:
      path = os.path.join(root, split, d)
      if os.path.isdir(path):
        sig[os.path.join(split, d)] = os.stat(path).st_mtime_ns
  return sig


def _list(root: str, classes: list[str]) -> dict[str, tuple[list[str], list[int]]]:
  test = os.path.join(root, "test")
  orphans = sorted(set(d for d in os.listdir(test) if os.path.isdir(os.path.join(test, d)))
                   - set(classes)) if os.path.isdir(test) else []
  if orphans:
    raise UserError(f"data.source 'folder:{root}': class folder {os.path.join(test, orphans[0])} "
                    f"has no counterpart in {os.path.join(root, 'train')} (its images would never "
                    "be evaluated); every test class needs training images")
  out, ignored = {}, []
  for split in SPLITS:
    files, labels = [], []
    for c, name in enumerate(classes):
      d = os.path.join(root, split, name)
      names = sorted(os.listdir(d)) if os.path.isdir(d) else []
      chosen = [os.path.join(split, name, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
      ignored += [os.path.join(d, n) for n in names if not n.lower().endswith(IMAGE_EXTENSIONS)
                  and not n.startswith(".") and os.path.isfile(os.path.join(d, n))]
      if split == "train" and not chosen:
        raise UserError(f"data.source 'folder:{root}': class folder {d} has no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}); every class needs training images")
      files += chosen
      labels += [c] * len(chosen)
    if not files:
      raise UserError(f"data.source 'folder:{root}': no images in {root}/{split}")
    out[split] = (files, labels)
  if ignored:
    print(f"[data] warning: {len(ignored)} files in folder:{root} are not images Pillow reads "
          f"and were left out, e.g. {ignored[0]}", flush=True)
  return out


def _index_paths(root: str) -> list[str]:
  from jaxprune.data.sources import USER_CACHE
  cache = os.path.join(USER_CACHE, "folder-" + hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:16]
                       + ".tsv")
  return [os.path.join(root, INDEX_NAME), cache]


def _read_index(root: str, header: dict) -> dict | None:
  """The cached listing, if one matches `header` and is whole: its line count and checksum
  (written with it) must match, so an index cut short — mid-line or at a line boundary — is
  rebuilt instead of naming files that do not exist or silently losing images."""
  for path in _index_paths(root):
    try:
      with open(path, encoding="utf-8") as f:
        stored = json.loads(f.readline())
        if {k: stored.get(k) for k in header} != header:
          continue
        body = f.readlines()
      if (len(body) != stored.get("lines")
          or hashlib.sha1("".join(body).encode()).hexdigest() != stored.get("sha1")):
        print(f"[data] the cached folder index {path} is damaged (cut short or edited); "
              "rebuilding it", flush=True)
        continue
      splits = {s: ([], []) for s in SPLITS}
      for line in body:
        split, label, rel = line.rstrip("\n").split("\t", 2)
        splits[split][0].append(rel)
        splits[split][1].append(int(label))
      return dict(stored, splits=splits)
    except (OSError, ValueError, KeyError):
      continue
  return None


def _write_index(root: str, info: dict) -> None:
  body = [f"{split}\t{label}\t{rel}\n" for split, (files, labels) in info["splits"].items()
          for rel, label in zip(files, labels)]
  head = {k: v for k, v in info.items() if k != "splits"}
  head.update(lines=len(body), sha1=hashlib.sha1("".join(body).encode()).hexdigest())
  lines = [json.dumps(head) + "\n"] + body
  for path in _index_paths(root):
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = f"{path}.tmp{os.getpid()}"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
      os.replace(tmp, path)
      return
    except OSError:
      continue
  logging.warning("could not cache the folder index of %s (read-only everywhere)", root)


def _build_index(root: str, classes: list[str], header: dict, skip_corrupt: bool) -> dict:
  listed = _list(root, classes)
  every = [os.path.join(root, f) for files, _ in listed.values() for f in files]
  print(f"[data] indexing folder:{root}: {len(every)} images, {len(classes)} classes"
        + (" (decoding each once: data.skip_corrupt)" if skip_corrupt else ""), flush=True)
  skipped = []
  if skip_corrupt:
    with ThreadPoolExecutor(8) as pool:
      bad = {f for f, (_, err) in zip(every, pool.map(lambda f: _try(_read_image, f), every)) if err}
    for split, (files, labels) in listed.items():
      keep = [i for i, f in enumerate(files) if os.path.join(root, f) not in bad]
      skipped += [files[i] for i in range(len(files)) if os.path.join(root, files[i]) in bad]
      listed[split] = ([files[i] for i in keep], [labels[i] for i in keep])
      if not keep:
        raise UserError(f"data.source 'folder:{root}': no readable images in {root}/{split}")
    counts = np.bincount(listed["train"][1], minlength=len(classes))
    if not counts.all():
      raise UserError(f"data.source 'folder:{root}': class {classes[int(np.argmin(counts))]!r} "
                      "has no readable training images left after skipping unreadable ones")
    every = [os.path.join(root, f) for files, _ in listed.values() for f in files]
  rng = np.random.default_rng(0)
  sample = (every if len(every) <= CHANNEL_SAMPLE
            else [every[i] for i in np.sort(rng.choice(len(every), CHANNEL_SAMPLE, replace=False))])
  with ThreadPoolExecutor(8) as pool:
    heads = list(pool.map(lambda f: _try(_header, f), [every[0], *sample]))
  if heads[0][1] is not None:
    raise UserError(f"data.source 'folder:{root}': cannot read image {every[0]} ({heads[0][1]}); "
                    "fix or remove it, or set data.skip_corrupt=True to skip unreadable images")
  readable = [h for h, err in heads[1:] if err is None]
  return dict(header, gray=bool(readable) and all(g for g, _ in readable),
              height=heads[0][0][1], skipped=skipped, splits=listed)


class FolderSplit:
  """Random access to one split of a folder, decoded on demand: `get` gives `size` squares in
  the eval view (`transforms.eval_view` with `eval_crop`), `example` the full-size image."""

  def __init__(self, root: str, files: list[str], labels: list[int], size: int, channels: int,
               eval_crop: float = 0.0):
    self.root, self.files, self.size, self.channels = root, files, size, channels
    self.eval_crop = eval_crop
    self._labels = np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.files)

  @property
  def labels(self) -> np.ndarray:
    return self._labels

  def _decode(self, i: int):
    path = os.path.join(self.root, self.files[i])
    out, err = _try(_read_pil, path)
    if err is not None:
      raise UserError(f"data.source 'folder:{self.root}': cannot read image {path} ({err}); fix "
                      "or remove it, or set data.skip_corrupt=True to skip unreadable images")
    return out

  def example(self, i: int) -> tuple[np.ndarray, int]:
    """(uint8 [H, W, channels] at the file's own size, label)."""
    return np.asarray(self._decode(i))[..., :self.channels], int(self._labels[i])

  def example_pil(self, i: int):
    """(RGB PIL image, label) for 3-channel folders (the transforms' fast path), else None."""
    return (self._decode(i), int(self._labels[i])) if self.channels == 3 else None

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indices = np.asarray(indices)
    images = np.empty((len(indices), self.size, self.size, self.channels), np.uint8)
    for k, i in enumerate(indices):
      pil = self.example_pil(int(i))
      image = pil[0] if pil is not None else self.example(int(i))[0]
      images[k] = eval_view(image, self.size, self.eval_crop)
    return images, self._labels[indices]


def load_folder(path: str, image_size: int | None = None, skip_corrupt: bool = False,
                eval_crop: float = 0.0):
  """The folder's train and test splits (see the module docstring); images are `image_size`
  squares (default: the height of the first training image)."""
  from jaxprune.data.sources import Dataset
  classes = _classes(path)
  header = {"classes": classes, "signature": _signature(path, classes),
            "verified": bool(skip_corrupt), "extensions": len(IMAGE_EXTENSIONS)}
  info = _read_index(path, header)
  if info is None:
    info = _build_index(path, classes, header, skip_corrupt)
    _write_index(path, info)
  if info["skipped"]:
    logging.warning("skipped %d unreadable images in %s, e.g. %s", len(info["skipped"]), path,
                    info["skipped"][0])
    print(f"[data] warning: skipped {len(info['skipped'])} unreadable images in {path} "
          f"(data.skip_corrupt), e.g. {os.path.join(path, info['skipped'][0])}", flush=True)
  size, channels = image_size or info["height"], 1 if info["gray"] else 3
  splits = {s: FolderSplit(path, *info["splits"][s], size, channels, eval_crop) for s in SPLITS}
  return Dataset(splits["train"], splits["test"], num_classes=len(classes),
                 image_shape=(size, size, channels), name=f"folder:{path}")
