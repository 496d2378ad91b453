"""Take a compressed model away: StableHLO or ONNX files that run without jaxprune.

    python -m jaxprune.export MODEL_DIR --format stablehlo|onnx|hf --out FILE [--batch N]

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

- `hf`: where the architecture fits a Hugging Face ViT/DeiT config (every block attention with
  the model's heads and one MLP width: a dense model, PRACTISE's dropped blocks, uniformly
  narrowed MLPs), a `save_pretrained` folder that `transformers` loads with the same logits
  (float pixel_values; the normalisation in its preprocessor_config.json); any other model is
  refused in one line naming the first block that does not fit.
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

from jaxprune import registry
from jaxprune.atomic import replacing, write_json
from jaxprune.errors import UserError

FORMATS = ("stablehlo", "onnx", "hf")
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


def hf_fit(spec) -> str | None:
  """Why `spec` does not fit a Hugging Face ViT/DeiT config (one line), or None when it does:
  a ViT whose blocks are all attention with the model's heads and one MLP width (a dense model,
  PRACTISE's dropped blocks, uniformly narrowed MLPs)."""
  family = registry.family(spec.family)
  if family.hf_fit is None:
    fits = [f for f in registry.families() if registry.family(f).hf_fit]
    return f"family {spec.family!r}: the hf export writes {', '.join(fits)} models"
  return family.hf_fit(spec)


def hf_folder(model: nnx.Module, preprocessing: dict[str, Sequence[float]], out: str) -> None:
  """Writes `out/` as `save_pretrained` would: config.json and model.safetensors (the family's
  `hf_save`: transformers' on-disk names and layouts), preprocessor_config.json with the
  normalisation."""
  import numpy as np
  from safetensors.numpy import save_file
  spec = model.spec
  why = hf_fit(spec)
  if why:
    raise UserError(f"--format hf: {why}; use --format stablehlo or onnx for this model")
  config, w = registry.family(spec.family).hf_save(model)
  config.update({"image_size": spec.image_size, "num_channels": spec.in_channels,
                 "id2label": {str(i): f"LABEL_{i}" for i in range(spec.num_classes)},
                 "label2id": {f"LABEL_{i}": i for i in range(spec.num_classes)}})
  processor = {"image_processor_type": "ViTImageProcessor", "do_resize": True,
               "size": {"height": spec.image_size, "width": spec.image_size},
               "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "image_mean": list(preprocessing["mean"]), "image_std": list(preprocessing["std"])}
  os.makedirs(out, exist_ok=True)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in w.items()},
            os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
  write_json(os.path.join(out, "config.json"), config, indent=2)
  write_json(os.path.join(out, "preprocessor_config.json"), processor, indent=2)


def vit_hf_save(model: nnx.Module) -> tuple[dict, dict]:
  """The Hugging Face ViT / DeiT config and weights of a ViT that fits (`hf_fit`)."""
  import numpy as np
  spec = model.spec
  st = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
  deit = spec.dist_token
  pfx = "deit." if deit else "vit."
  t = lambda a: np.ascontiguousarray(a.T)  # noqa: E731  flax [in, out] -> torch [out, in]
  w = {f"{pfx}embeddings.cls_token": st["cls_token"],
       f"{pfx}embeddings.position_embeddings": st["pos_embed"],
       f"{pfx}embeddings.patch_embeddings.projection.weight":
           np.ascontiguousarray(st["patch_embed"]["kernel"].transpose(3, 2, 0, 1)),
       f"{pfx}embeddings.patch_embeddings.projection.bias": st["patch_embed"]["bias"],
       f"{pfx}layernorm.weight": st["norm"]["scale"], f"{pfx}layernorm.bias": st["norm"]["bias"]}
  if deit:
    w[f"{pfx}embeddings.distillation_token"] = st["dist_token"]
  c = spec.width
  for i in range(spec.depth):
    b, dst = st["blocks"][i], f"{pfx}encoder.layer.{i}."
    qkv_w, qkv_b = t(b["attn"]["qkv"]["kernel"]), b["attn"]["qkv"]["bias"]
    for j, name in enumerate(("query", "key", "value")):
      w[f"{dst}attention.attention.{name}.weight"] = qkv_w[j * c:(j + 1) * c]
      w[f"{dst}attention.attention.{name}.bias"] = qkv_b[j * c:(j + 1) * c]
    for ours, hf in ((("attn", "proj"), "attention.output.dense"),
                     (("mlp", "fc1"), "intermediate.dense"), (("mlp", "fc2"), "output.dense")):
      layer = b[ours[0]][ours[1]]
      w[f"{dst}{hf}.weight"], w[f"{dst}{hf}.bias"] = t(layer["kernel"]), layer["bias"]
    for ours, hf in (("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
      w[f"{dst}{hf}.weight"], w[f"{dst}{hf}.bias"] = b[ours]["scale"], b[ours]["bias"]
  heads = [("head", "cls_classifier" if spec.dist_head else "classifier")]
  if spec.dist_head:
    heads.append(("head_dist", "distillation_classifier"))
  for ours, hf in heads:
    w[f"{hf}.weight"], w[f"{hf}.bias"] = t(st[ours]["kernel"]), st[ours]["bias"]
  arch = ("DeiTForImageClassificationWithTeacher" if spec.dist_head else
          "DeiTForImageClassification" if deit else "ViTForImageClassification")
  config = {"architectures": [arch], "model_type": "deit" if deit else "vit",
            "hidden_size": c, "num_hidden_layers": spec.depth,
            "num_attention_heads": spec.num_heads, "intermediate_size": spec.blocks[0].mlp,
            "hidden_act": "gelu", "layer_norm_eps": spec.ln_eps,
            "patch_size": spec.patch_size, "qkv_bias": True,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
  return config, w


def export_model(model_dir: str, fmt: str, out: str, batch: int | None = None,
                 preprocessing: dict[str, Sequence[float]] | None = None) -> dict[str, Any]:
  """Writes `model_dir`'s model to `out` in `fmt`; returns what the sidecar JSON records."""
  from jaxprune.export import load, read_preprocessing
  if fmt not in FORMATS:
    raise UserError(f"--format {fmt!r}: allowed are {', '.join(FORMATS)}")
  if batch is not None and batch < 1:
    raise UserError(f"--batch {batch}: must be >= 1 (or left out for any batch)")
  if fmt == "hf":
    if os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):
      raise UserError(f"--out {out} exists and is not an empty folder; the hf format writes a "
                      "folder (config.json, model.safetensors, preprocessor_config.json)")
  elif os.path.isdir(out):
    raise UserError(f"--out {out} is a folder; give the file to write, e.g. model.stablehlo")
  model = load(model_dir)
  pre = preprocessing or read_preprocessing(model_dir)
  if pre is None:
    raise UserError(f"model {model_dir!r} stores no input normalisation; pass --mean and --std "
                    "(per channel, for pixels scaled to [0, 1])")
  spec = model.spec
  if fmt == "hf":
    hf_folder(model, pre, out)
    return {"format": fmt, "platforms": ["transformers"], "arch": spec.to_dict(),
            "input": {"shape": ["batch", spec.in_channels, spec.image_size, spec.image_size],
                      "dtype": "float32 pixel_values (preprocessor_config.json normalises)"},
            "output": {"logits": ["batch", spec.num_classes]}}
  data = stablehlo(model, pre, batch) if fmt == "stablehlo" else onnx_model(model, pre, batch)
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
  if info["format"] == "hf":
    print(f"wrote {args.out}/ (config.json, model.safetensors, preprocessor_config.json): "
          "transformers.AutoModelForImageClassification.from_pretrained loads it")
    return 0
  shape = "x".join(str(d) for d in info["input"]["shape"])
  print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB, {info['format']} for "
        f"{', '.join(info['platforms'])}): uint8 pixels {shape} -> logits "
        f"{'x'.join(str(d) for d in info['output']['logits'])}; described in {args.out}.json")
  return 0
