"""Take a compressed model away: StableHLO or ONNX files that run without jaxprune.

    python -m jaxprune.export MODEL_DIR --format stablehlo|onnx --out FILE [--batch N]

Both hold the model's eval forward with its weights as constants and its input normalisation
inside: they take **uint8 NHWC pixels** `[batch, H, W, C]` (0-255, the size the model was built
for) and return class logits `[batch, classes]` (the mean of both heads for a distilled DeiT).
Taking pixels rather than normalised floats means a deployment cannot pair the model with the
wrong mean/std. The batch is symbolic unless `--batch` fixes it.

- `stablehlo`: a serialised `jax.export` program lowered for CPU, CUDA and TPU at once (the
  platform is chosen at call time); it reloads in any process with JAX and `flatbuffers`:
  `jax.export.deserialize(open(FILE, "rb").read()).call(pixels)`.
- `onnx`: converted by `jax2onnx` and checked with `onnx.checker`; the normalisation, the input
  description and the ArchSpec are also in its metadata. Runs in onnxruntime:
  `onnxruntime.InferenceSession(FILE).run(None, {"pixels": pixels})`. Needs the optional
  packages of requirements-onnx.txt (`jax2onnx` itself installed with `--no-deps`: see there).

A JSON file beside either (`<out>.json`) records the input, the normalisation and the ArchSpec.
A Hugging Face export is not written yet.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxprune.atomic import replacing, write_json
from jaxprune.errors import UserError

FORMATS = ("stablehlo", "onnx")
ONNX_INSTALL = ("pip install -r requirements-onnx.txt && pip install --no-deps "
                "jax2onnx==0.17.1")
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


def onnx_model(model: nnx.Module, preprocessing: dict[str, Sequence[float]],
               batch: int | None = None) -> bytes:
  """The ONNX model (serialised) of `pixels_to_logits`, input named `pixels` (batch symbolic
  as `batch` when None), checked by `onnx.checker`, normalisation and ArchSpec in its
  metadata."""
  import logging
  try:
    import onnx
    from jax2onnx import to_onnx
  except ImportError as e:
    raise UserError(f"ONNX export needs onnx and jax2onnx ({e}); install them with: "
                    f"{ONNX_INSTALL}") from None
  spec = model.spec
  shape = (batch or "batch", spec.image_size, spec.image_size, spec.in_channels)
  # jax2onnx logs its optional plugins' import failures, onnx-ir every untyped constant: noise
  quiet = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
  levels = [q.level for q in quiet]
  for q in quiet:
    q.setLevel(logging.CRITICAL)
  try:
    with warnings.catch_warnings():  # its NNX plugins read Variable.value (deprecated by Flax)
      warnings.filterwarnings("ignore", category=DeprecationWarning, module="jax2onnx")
      proto = to_onnx(pixels_to_logits(model, preprocessing),
                      [jax.ShapeDtypeStruct(shape, jnp.uint8)], input_names=["pixels"],
                      output_names=["logits"], model_name="jaxprune")
  except Exception as e:  # a primitive jax2onnx cannot convert, named in its message
    raise UserError(f"ONNX export failed in jax2onnx ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:300]}); the stablehlo format has no such "
                    "limit") from None
  finally:
    for q, level in zip(quiet, levels):
      q.setLevel(level)
  for key, value in {"input": "uint8 NHWC pixels 0-255", "normalisation": json.dumps(
      {"mean": list(preprocessing["mean"]), "std": list(preprocessing["std"])}),
                     "arch": spec.to_json()}.items():
    proto.metadata_props.add(key=key, value=value)
  onnx.checker.check_model(proto)
  return proto.SerializeToString()


def export_model(model_dir: str, fmt: str, out: str, batch: int | None = None,
                 preprocessing: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
  """Writes `model_dir`'s model to `out` in `fmt`; returns what the sidecar JSON records."""
  from jaxprune.export import load, read_preprocessing
  if fmt not in FORMATS:
    raise UserError(f"--format {fmt!r}: allowed are {', '.join(FORMATS)} (hf is not written "
                    "yet)")
  if batch is not None and batch < 1:
    raise UserError(f"--batch {batch}: must be >= 1 (or left out for any batch)")
  if os.path.isdir(out):
    raise UserError(f"--out {out} is a folder; give the file to write, e.g. model.stablehlo")
  model = load(model_dir)
  pre = preprocessing or read_preprocessing(model_dir)
  if pre is None:
    raise UserError(f"model {model_dir!r} stores no input normalisation; pass --mean and --std "
                    "(per channel, for pixels scaled to [0, 1])")
  data = stablehlo(model, pre, batch) if fmt == "stablehlo" else onnx_model(model, pre, batch)
  spec = model.spec
  info = {"format": fmt,
          "platforms": list(PLATFORMS) if fmt == "stablehlo" else ["onnxruntime"],
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
        f"{', '.join(info['platforms'])}): uint8 pixels {shape} -> logits "
        f"{'x'.join(str(d) for d in info['output']['logits'])}; described in {args.out}.json")
  return 0
