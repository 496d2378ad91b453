"""Why does PRACTISE beat DC-ViT on small models? Single compressions of one dense model, side by side.

Each variant starts from the dense model of a DC-ViT run (`RUN/dense`) and the run's config
(few-shot set, mimicking recipe), applies one compression and fine-tunes it by feature mimicking,
then reports MACs, training-image feature MSE and test accuracy:

  drop B,B [steps=N]                      PRACTISE-style: drop whole blocks, one fine-tune of N
  compress B,B,B width=W [steps=N]        DC-ViT-style progressive: blocks in the given order,
                                          N steps after each (trainable set as in DC-ViT)
  common options: lr=X (mimic peak lr), seed=S, select=random|activation (MLP units kept:
  DC-ViT's seeded random subset, or the W with the largest mean |GELU| x |fc2 row| on the
  few-shot images: the reference code's "GELU_sample" idea)

  python benchmarks/dcvit_ablation.py --run runs/dcvit \
      "drop 4,5 steps=300" "compress 2,3,4 width=96 steps=100" \
      "compress 2,3,4 width=128 steps=100" "compress 5,4,3 width=96 steps=100"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.page import ROOT, page  # noqa: E402
from jaxprune import accounting  # noqa: E402
from jaxprune.data import normalise  # noqa: E402
from jaxprune.export import load  # noqa: E402
from jaxprune.methods import common  # noqa: E402
from jaxprune.methods.mimicking import mimic, trainable_upto  # noqa: E402
from jaxprune.models.blocks import gelu  # noqa: E402
from jaxprune.methods.dcvit.structure import compress_block  # noqa: E402
from jaxprune.surgery import drop_blocks  # noqa: E402
from jaxprune.train.logging import MetricWriter  # noqa: E402


def parse(variant: str) -> dict:
  kind, blocks, *opts = variant.split()
  if kind not in ("drop", "compress"):
    raise SystemExit(f"variant {variant!r}: kind must be drop or compress")
  v = {"kind": kind, "blocks": [int(b) for b in blocks.split(",")], "steps": 100, "lr": None,
       "seed": None, "width": None, "select": "random", "name": variant}
  for o in opts:
    k, _, val = o.partition("=")
    if k not in v or k in ("kind", "blocks", "name"):
      raise SystemExit(f"variant {variant!r}: unknown option {k!r}")
    v[k] = val if k == "select" else (float(val) if k == "lr" else int(val))
  if kind == "compress" and v["width"] is None:
    raise SystemExit(f"variant {variant!r}: compress needs width=W")
  return v


def activation_compress(model, index: int, width: int, seed: int, x):
  """compress_block, but keeping the `width` MLP units with the largest mean |GELU| x |fc2 row|
  on `x`, measured on the input the compressed block will see (attention removed)."""
  h = model.embed(x)
  for blk in model.blocks[:index]:
    h = blk(h)
  mlp = model.blocks[index].mlp
  act = gelu(mlp.fc1(model.blocks[index].norm2(h)))
  score = jnp.mean(jnp.abs(act), axis=(0, 1)) * jnp.linalg.norm(mlp.fc2.kernel[...], axis=1)
  keep = np.sort(np.argsort(-np.asarray(score))[:width])
  new = compress_block(model, index, width, seed)
  dst = new.blocks[index].mlp
  dst.fc1.kernel[...] = mlp.fc1.kernel[...][:, keep]
  dst.fc1.bias[...] = mlp.fc1.bias[...][keep]
  dst.fc2.kernel[...] = mlp.fc2.kernel[...][keep]
  return new


def run_variant(base: ml_collections.ConfigDict, dense, v: dict) -> dict:
  config = ml_collections.ConfigDict(base.to_dict())
  if v["lr"] is not None:
    config.mimic.optim.lr = v["lr"]
  if v["seed"] is not None:
    config.seed = v["seed"]
  mcfg = common.phase_config(config, "mimic")
  s = common.setup(mcfg)
  images, _ = s.train.get(np.arange(len(s.train)))
  x = normalise(jnp.asarray(images).astype(jnp.float32) / 255.0, config.data.mean,
                config.data.std)
  t0 = time.time()
  with tempfile.TemporaryDirectory() as wd:
    writer = MetricWriter(wd)
    if v["kind"] == "drop":
      student = drop_blocks(dense, v["blocks"])
      model, info = mimic(config, wd, "drop", student, dense,  # all but the head, as PRACTISE
                          trainable_upto(student.spec, student.spec.depth - 1), v["steps"],
                          writer, s)
    else:
      model, done = dense, []
      for j, b in enumerate(v["blocks"]):
        done.append(b)
        model = (activation_compress(model, b, v["width"], config.seed, x)
                 if v["select"] == "activation" else
                 compress_block(model, b, v["width"], config.seed))
        model, info = mimic(config, wd, f"step{j}", model, dense,
                            trainable_upto(dense.spec, max(done) + 1), v["steps"], writer, s)
    writer.close()
  return {"variant": v["name"], "macs_ratio": accounting.macs(model.spec) /
          accounting.macs(dense.spec), "feature_mse": info["feature_mse"],
          "accuracy": common.evaluate_model(mcfg, model, s)["accuracy"],
          "seconds": time.time() - t0}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--run", required=True, help="a finished DC-ViT workdir (dense/, config.json)")
  parser.add_argument("variants", nargs="+")
  parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "dcvit_ablation.md"),
                      help="the page the table is written to ('' : print only)")
  args = parser.parse_args()
  with open(os.path.join(args.run, "config.json")) as f:
    base = ml_collections.ConfigDict(json.load(f))
  dense = load(os.path.join(args.run, "dense") if os.path.isdir(os.path.join(args.run, "dense"))
               else base.model.init_from)
  variants = [parse(v) for v in args.variants]
  rows = []
  for v in variants:
    rows.append(run_variant(base, dense, v))
    print(json.dumps(rows[-1]), flush=True)
  with page(args.doc, "DC-ViT vs PRACTISE: single compressions side by side",
            f"Each variant compresses the dense model of the DC-ViT run `{args.run}` once and "
            "recovers it by feature mimicking on that run's few-shot set and recipe; feature MSE "
            "on the training images."):
    print("| variant | MACs ratio | feature MSE (train) | test accuracy |\n|---|---:|---:|---:|")
    for r in rows:
      print(f"| {r['variant']} | {r['macs_ratio']:.3f} | {r['feature_mse']:.4f} | "
            f"{100 * r['accuracy']:.2f} % |")


if __name__ == "__main__":
  main()
