"""Time to the first batch on an ImageNet-sized folder: 1000 classes x 1281 images = 1.281M files.

The folder is real (a class-per-folder tree of JPEG files), made cheaply from one 500x375 JPEG per
class hard-linked 1281 times, outside the repository (`--folder`, reused if there). Measured, each
in a fresh process: the first opening (lists every class folder, reads a sample of headers,
writes the index next to the data) + the first batch of 64 (224 px DeiT train view, 8 decode
threads), then a second opening that reads the cached index + its first batch.

  python benchmarks/open_large_source.py [--classes 1000 --per-class 1281]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIRST_BATCH = """
import sys, time
t0 = time.perf_counter()
from jaxprune.data import TrainBatches, load_source
from jaxprune.data.transforms import TrainCrop
from jaxprune.train.mesh import data_sharding, make_mesh
t1 = time.perf_counter()
ds = load_source("folder:" + sys.argv[1], 224, None, False, 0.875)
t2 = time.perf_counter()
batches = TrainBatches(ds.train, 64, 0, data_sharding(make_mesh()), threads=8,
                       host=TrainCrop(224, 0.08, True, 0.875))
batches(0)["image"].block_until_ready()
t3 = time.perf_counter()
print(f"RESULT {len(ds.train)} {t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2:.2f}")
"""


def make_folder(path: str, classes: int, per_class: int) -> None:
  from PIL import Image
  import numpy as np
  marker = os.path.join(path, f".made-{classes}x{per_class}")
  if os.path.exists(marker):
    return
  os.makedirs(os.path.join(path, "sources"), exist_ok=True)
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  for c in range(classes):  # one JPEG per class (a file takes at most 65k links)
    source = os.path.join(path, "sources", f"{c}.jpg")
    if not os.path.exists(source):
      small = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
      Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(source, quality=90)
    for split, n in (("train", per_class), ("test", max(1, per_class // 25))):
      d = os.path.join(path, split, f"n{c:08d}")
      os.makedirs(d, exist_ok=True)
      for i in range(n):
        target = os.path.join(d, f"{c:04d}_{i:05d}.JPEG")
        if not os.path.exists(target):
          os.link(source, target)
  open(marker, "w").close()
  print(f"made {path} in {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--folder", default="/tmp/jaxprune_bench/imagenet_sized")
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--per-class", type=int, default=1281)
  args = parser.parse_args()
  make_folder(args.folder, args.classes, args.per_class)
  index = os.path.join(args.folder, ".jaxprune_index_v1.tsv")
  if os.path.exists(index):
    os.remove(index)
  print("| opening | images | import s | open s | first batch s | total s |")
  print("|---|---|---|---|---|---|")
  for name in ("first (builds the index)", "second (cached index)"):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", FIRST_BATCH, args.folder], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    wall = time.perf_counter() - t0
    n, imp, opened, batch = out.split("RESULT ")[1].split()
    print(f"| {name} | {n} | {imp} | {opened} | {batch} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
  main()
