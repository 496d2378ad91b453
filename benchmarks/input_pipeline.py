"""Input pipeline throughput: the DeiT 224 px train transform from a JPEG folder, jaxprune's
Grain pipeline vs torchvision's `DataLoader` with the same transforms and worker counts.

Both decode with PIL and do RandomResizedCrop(224, scale 0.08-1, bicubic) + horizontal flip,
delivering uint8 [B, 224, 224, 3] batches of 64 (jaxprune normalises on the device; torchvision
uses PILToTensor, so neither side converts to float on the host). Runs alternate between the
two loaders (the machine is shared); each run builds a fresh loader and reports images/s over
`--batches` batches after its first; the table gives the median of `--repeats` runs and the
ratio. jaxprune's loader decodes with `--threads` threads per process (its default for
folders); torchvision's workers decode one image at a time each (0 workers: in the main
process).

The images: `--images` JPEGs (quality 90) of 500x375, ImageNet's typical size, made from
CIFAR-10 test images upsampled (bicubic) into a folder outside the repository, reused if there.

torchvision is a benchmark-only extra, installed beside the venv (not into it):
  pip install --no-deps --target .bench_extras -r benchmarks/requirements.txt
The PyPI wheel is built for CUDA torch; with the CPU torch of requirements-test.txt its C ops
(nms, ...) cannot register, so this script skips their fake-kernel registration on import (and
inside the venv it would break `transformers`, which imports torchvision when it finds it). Only
its pure-Python PIL transforms and torch's DataLoader are used here.

  python benchmarks/input_pipeline.py --cifar ../shared/data/cifar10-jpg.tar.gz
"""

from __future__ import annotations

import argparse
import os
import statistics
import tarfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, BATCH = 224, 64


def make_folder(out: str, cifar_tar: str, n: int, classes: int = 10) -> str:
  """`n` 500x375 JPEGs in `out/{train,test}/<class>/` from the CIFAR-10 archive's test images."""
  from PIL import Image
  marker = os.path.join(out, f".made-{n}")
  if os.path.exists(marker):
    return out
  with tarfile.open(cifar_tar) as tar:
    members = [m for m in tar.getmembers() if m.isfile() and "/test/" in f"/{m.name}"
               and m.name.lower().endswith((".jpg", ".jpeg", ".png"))][:n]
    for i, m in enumerate(members):
      image = Image.open(tar.extractfile(m)).convert("RGB").resize((500, 375), Image.BICUBIC)
      for split in ("train", "test") if i < classes else ("train",):
        d = os.path.join(out, split, f"c{i % classes}")
        os.makedirs(d, exist_ok=True)
        image.save(os.path.join(d, f"{i}.jpg"), quality=90)
  open(marker, "w").close()
  return out


def jaxprune_loader(folder: str, workers: int, threads: int):
  from jaxprune.data import TrainBatches, load_source
  from jaxprune.data.transforms import TrainCrop
  from jaxprune.train.mesh import data_sharding, make_mesh
  ds = load_source(f"folder:{folder}", SIZE, None, False, 0.875)
  batches = TrainBatches(ds.train, BATCH, 0, data_sharding(make_mesh()), threads=threads,
                         workers=workers, host=TrainCrop(SIZE, 0.08, True, 0.875))
  step = iter(range(1 << 30))
  return lambda: batches(next(step))["image"].block_until_ready()


def torchvision_loader(folder: str, workers: int):
  import sys
  sys.path.append(os.path.join(ROOT, ".bench_extras"))
  import torch
  register = torch.library.register_fake
  torch.library.register_fake = lambda *a, **k: (lambda f: f)  # CUDA wheel's C ops: skipped
  try:
    from torchvision import datasets, transforms
  finally:
    torch.library.register_fake = register
  transform = transforms.Compose([
      transforms.RandomResizedCrop(SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
      transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
  data = datasets.ImageFolder(os.path.join(folder, "train"), transform)
  loader = torch.utils.data.DataLoader(data, BATCH, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=workers > 0,
                                       prefetch_factor=2 if workers else None)
  state = {"it": iter(loader)}

  def next_batch():
    try:
      return next(state["it"])
    except StopIteration:
      state["it"] = iter(loader)
      return next(state["it"])
  return next_batch


def images_per_s(make_loader, batches: int) -> float:
  """A fresh loader per run: its first batch (workers started) is not timed, the next `batches`
  are, back to back, then the loader is dropped. (Loaders kept alive between runs would fill
  their prefetch buffers while the other one is timed.)"""
  import gc
  next_batch = make_loader()
  next_batch()
  t0 = time.perf_counter()
  for _ in range(batches):
    next_batch()
  rate = batches * BATCH / (time.perf_counter() - t0)
  del next_batch
  gc.collect()
  return rate


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cifar", default=os.path.join(ROOT, "..", "shared", "data",
                                                      "cifar10-jpg.tar.gz"))
  parser.add_argument("--folder", default="/tmp/jaxprune_bench/jpeg500")
  parser.add_argument("--images", type=int, default=2000)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--threads", type=int, default=8, help="jaxprune's decode threads per process")
  parser.add_argument("--batches", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  folder = make_folder(args.folder, args.cifar, args.images)
  print(f"{os.cpu_count()} CPUs; {args.images} JPEGs 500x375 in {folder}; batch {BATCH}; "
        f"{args.batches} batches per run, median of {args.repeats}", flush=True)
  rows = []
  for workers in [int(w) for w in args.workers.split(",")]:
    # jaxprune: worker processes each with `threads` threads; with 0 workers, threads in this
    # process (torchvision's 0 workers decodes in the main process, serially)
    a, b = [], []
    for _ in range(args.repeats):  # runs alternate between the two loaders
      a.append(images_per_s(lambda: jaxprune_loader(folder, workers, args.threads), args.batches))
      b.append(images_per_s(lambda: torchvision_loader(folder, workers), args.batches))
    rows.append((workers, statistics.median(a), statistics.median(b)))
    print(f"workers {workers}: jaxprune {rows[-1][1]:.0f} img/s, torchvision {rows[-1][2]:.0f} "
          f"img/s", flush=True)
  print("\n| workers | jaxprune (Grain) img/s | torchvision DataLoader img/s | ratio |")
  print("|---|---|---|---|")
  for w, a, b in rows:
    print(f"| {w} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")


if __name__ == "__main__":
  main()
