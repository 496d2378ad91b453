"""Take a compressed model away: a serialised StableHLO program that runs without jaxprune.

    python -m jaxprune.export MODEL_DIR --format stablehlo --out model.stablehlo [--batch N]

The program is the model's eval forward with its weights as constants and its input
normalisation inside: it takes **uint8 NHWC pixels** `[batch, H, W, C]` (0-255, the size the
model was built for) and returns class logits `[batch, classes]` (the mean of both heads for a
distilled DeiT). Taking pixels rather than normalised floats means a deployment cannot pair the
model with the wrong mean/std. The batch is symbolic unless `--batch` fixes it. It is lowered for
CPU, CUDA and TPU at once (`jax.export`, platforms chosen at call time) and reloads in any
process with JAX and `flatbuffers`, no jaxprune needed:

    from jax import export
    program = export.deserialize(open("model.stablehlo", "rb").read())
    logits = program.call(pixels)   # numpy uint8 [B, H, W, C]

A JSON file beside it (`<out>.json`) records the input, the normalisation and the ArchSpec.
ONNX and Hugging Face exports are not written yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxprune.atomic import replacing, write_json
from jaxprune.errors import UserError

FORMATS = ("stablehlo",)
PLATFORMS = ("cpu", "cuda", "tpu")


def pixels_to_logits(model: nnx.Module, preprocessing: dict[str, Sequence[float]]) -> Callable:
  """`uint8 [B, H, W, C] -> logits`: the model's eval forward after its own normalisation
  (pixels / 255, then (x − mean) / std per channel), weights closed over as constants."""
  graphdef, state = nnx.split(model)
  channels = model.spec.in_channels
  mean = jnp.broadcast_to(jnp.asarray(preprocessing["mean"], jnp.float32), (channels,))
  std = jnp.broadcast_to(jnp.asarray(preprocessing["std"], jnp.float32), (channels,))

  def forward(pixels):
    x = (pixels.astype(jnp.float32) / 255.0 - mean) / std
    return nnx.merge(graphdef, state)(x, train=False)

  return forward


def stablehlo(model: nnx.Module, preprocessing: dict[str, Sequence[float]],
              batch: int | None = None, platforms: Sequence[str] = PLATFORMS) -> bytes:
  """The serialised `jax.export` program of `pixels_to_logits` (symbolic batch when `batch` is
  None), lowered for `platforms`."""
  spec = model.spec
  size = batch if batch else jax.export.symbolic_shape("batch")[0]
  pixels = jax.ShapeDtypeStruct((size, spec.image_size, spec.image_size, spec.in_channels),
                                jnp.uint8)
  try:
    exported = jax.export.export(jax.jit(pixels_to_logits(model, preprocessing)),
                                 platforms=tuple(platforms))(pixels)
    return bytes(exported.serialize())
  except ImportError as e:  # jax's serialisation needs flatbuffers (requirements.txt)
    raise UserError(f"StableHLO export needs the flatbuffers package ({e}); pip install -r "
                    "requirements.txt") from None


def export_model(model_dir: str, fmt: str, out: str, batch: int | None = None,
                 preprocessing: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
  """Writes `model_dir`'s model to `out` in `fmt`; returns what the sidecar JSON records."""
  from jaxprune.export import load, read_preprocessing
  if fmt not in FORMATS:
    raise UserError(f"--format {fmt!r}: allowed are {', '.join(FORMATS)} (onnx and hf are not "
                    "written yet)")
  if batch is not None and batch < 1:
    raise UserError(f"--batch {batch}: must be >= 1 (or left out for any batch)")
  if os.path.isdir(out):
    raise UserError(f"--out {out} is a folder; give the file to write, e.g. model.stablehlo")
  model = load(model_dir)
  pre = preprocessing or read_preprocessing(model_dir)
  if pre is None:
    raise UserError(f"model {model_dir!r} stores no input normalisation; pass --mean and --std "
                    "(per channel, for pixels scaled to [0, 1])")
  data = stablehlo(model, pre, batch)
  spec = model.spec
  info = {"format": fmt, "platforms": list(PLATFORMS),
          "input": {"dtype": "uint8", "layout": "NHWC", "range": [0, 255],
                    "shape": [batch or "batch", spec.image_size, spec.image_size,
                              spec.in_channels]},
          "output": {"logits": [batch or "batch", spec.num_classes]},
          "normalisation": {"mean": list(pre["mean"]), "std": list(pre["std"])},
          "source": os.path.abspath(model_dir), "arch": spec.to_dict()}
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with replacing(out, "wb") as f:
    f.write(data)
  write_json(out + ".json", info, indent=2)
  return info


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxprune.export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("model_dir", help="a saved jaxprune model (arch.json + state/)")
  parser.add_argument("--format", default="stablehlo",
                      help=f"one of: {', '.join(FORMATS)} (default stablehlo)")
  parser.add_argument("--out", required=True, help="the file to write")
  parser.add_argument("--batch", type=int, default=None, help="fixed batch (default: any)")
  parser.add_argument("--mean", type=float, nargs="+", default=None,
                      help="input normalisation when the model stores none (pixels in [0, 1])")
  parser.add_argument("--std", type=float, nargs="+", default=None)
  args = parser.parse_args(argv)
  try:
    if (args.mean is None) != (args.std is None):
      raise UserError("--mean and --std go together: give both or neither")
    pre = {"mean": args.mean, "std": args.std} if args.mean is not None else None
    info = export_model(args.model_dir, args.format, args.out, args.batch, pre)
  except UserError as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 2
  except OSError as e:
    print(f"error: cannot write --out {args.out}: {e.strerror or e}", file=sys.stderr)
    return 2
  shape = "x".join(str(d) for d in info["input"]["shape"])
  print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB, {info['format']} for "
        f"{', '.join(PLATFORMS)}): uint8 pixels {shape} -> logits "
        f"{'x'.join(str(d) for d in info['output']['logits'])}; described in {args.out}.json")
  return 0
