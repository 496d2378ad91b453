"""Checkpoint import: Hugging Face, timm and big_vision/vit_jax ViT/DeiT weights, Hugging Face /
timm Swin weights (`convert_swin`) and Hugging Face / torchvision / timm ResNets
(`convert_resnet`) → jaxprune.

No untrusted code is executed: `.safetensors` and `.npz` are read as arrays, `.pth` through
`torch.load(weights_only=True)` (only when torch is installed). Every format is first renamed to
the timm layout (torch shapes), then mapped onto the model by name; missing or unexpected keys
raise an error that lists them.

    python -m jaxprune.convert SRC --format hf|timm|big_vision|auto --out DIR

writes `DIR/arch.json` + an orbax checkpoint; `jaxprune.load(DIR)` returns the ready model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import convert_resnet, convert_swin
from jaxprune.arch import ArchSpec, BlockSpec
from jaxprune.errors import UserError
from jaxprune.models import build_model

FORMATS = ("auto", "hf", "timm", "big_vision")


# Reading files -----------------------------------------------------------------------------------
def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Arrays by name from a `.safetensors`, `.npz` or `.pth`/`.pt`/`.bin` file (or an HF folder)."""
  if os.path.isdir(path):
    for name in ("model.safetensors", "pytorch_model.bin"):
      if os.path.exists(os.path.join(path, name)):
        return read_state_dict(os.path.join(path, name))
    raise UserError(f"checkpoint folder {path!r} holds neither model.safetensors nor "
                    "pytorch_model.bin")
  if not os.path.exists(path):
    raise UserError(f"checkpoint {path!r} does not exist")
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".safetensors", ".npz", ".pth", ".pt", ".bin"):
    raise UserError(f"checkpoint {path!r}: unknown file type {ext!r}; allowed are .safetensors, "
                    ".npz, .pth/.pt/.bin")
  try:
    return _read_file(path, ext)
  except UserError:
    raise
  except Exception as e:  # every reader raises its own types for a damaged or hostile file
    first = (str(e).strip().splitlines() or [""])[0][:200]
    why = ("torch refused it with weights_only=True: it holds code or objects other than "
           "tensors, which jaxprune never executes" if type(e).__name__ == "UnpicklingError"
           else f"{type(e).__name__}: {first}")
    raise UserError(f"checkpoint {path!r} cannot be read ({why}); the file is truncated, "
                    "corrupt or not a weights file") from None


def _read_file(path: str, ext: str) -> dict[str, np.ndarray]:
  if ext == ".safetensors":
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if ext == ".npz":
    with np.load(path, allow_pickle=False) as z:  # object arrays raise: they would need pickle
      return {k: z[k] for k in z.files}
  try:
    import torch
  except ImportError as e:
    raise UserError(f"reading {path!r} needs torch (pip install torch==2.13.0); or convert it "
                    "to .safetensors first") from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  for wrapper in ("model", "state_dict", "model_ema"):
    if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
      sd = sd[wrapper]
      break
  if not isinstance(sd, Mapping):
    raise UserError(f"checkpoint {path!r} holds a {type(sd).__name__}, not a state dict")
  return {k: v.detach().float().numpy() for k, v in sd.items() if hasattr(v, "detach")}


def detect_format(sd: Mapping[str, Any]) -> str:
  keys = list(sd)
  if any(k.startswith(("vit.", "deit.", "swin.", "resnet.")) for k in keys):
    return "hf"
  if any(k.startswith("Transformer/") for k in keys):
    return "big_vision"
  if any(k.startswith(("blocks.", "layers.", "layer1.")) for k in keys):
    return "timm"
  raise UserError(f"cannot tell the checkpoint format from its keys (first: {keys[:5]}); pass "
                  f"--format, one of {', '.join(FORMATS[1:])}")


# Renaming to the timm layout -----------------------------------------------------------------------
_HF_LEGACY = {"q": "attention.attention.query", "k": "attention.attention.key",
              "v": "attention.attention.value", "attn.proj": "attention.output.dense",
              "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
              "norm1": "layernorm_before", "norm2": "layernorm_after"}
_HF_V5 = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
          "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
          "norm1": "layernorm_before", "norm2": "layernorm_after"}


def hf_to_timm(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Hugging Face ViT/DeiT(WithTeacher) names → timm names (q, k, v fused into qkv)."""
  pfx = "deit." if any(k.startswith("deit.") for k in sd) else "vit."
  out, rest = {}, dict(sd)

  def take(name):
    if name not in rest:
      raise UserError(f"HF checkpoint is missing key {name!r}")
    return rest.pop(name)

  emb = pfx + "embeddings."
  out["cls_token"] = take(emb + "cls_token")
  if emb + "distillation_token" in rest:
    out["dist_token"] = take(emb + "distillation_token")
  out["pos_embed"] = take(emb + "position_embeddings")
  for s in ("weight", "bias"):
    out[f"patch_embed.proj.{s}"] = take(f"{emb}patch_embeddings.projection.{s}")
  # On-disk names (all transformers releases) and transformers>=5 in-memory names.
  legacy = any(k.startswith(pfx + "encoder.layer.") for k in rest)
  layer_re = re.escape(pfx) + (r"encoder\.layer\.(\d+)\." if legacy else r"layers\.(\d+)\.")
  names = _HF_LEGACY if legacy else _HF_V5
  layers = sorted({int(m.group(1)) for k in rest if (m := re.match(layer_re, k))})
  for i in layers:
    src = f"{pfx}encoder.layer.{i}." if legacy else f"{pfx}layers.{i}."
    dst = f"blocks.{i}."
    for s in ("weight", "bias"):
      out[dst + f"attn.qkv.{s}"] = np.concatenate(
          [take(src + f"{names[n]}.{s}") for n in ("q", "k", "v")])
      for ours in ("attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2"):
        out[dst + f"{ours}.{s}"] = take(src + f"{names[ours]}.{s}")
  for s in ("weight", "bias"):
    out[f"norm.{s}"] = take(f"{pfx}layernorm.{s}")
    for hf_name, timm_name in (("classifier", "head"), ("cls_classifier", "head"),
                               ("distillation_classifier", "head_dist")):
      if f"{hf_name}.{s}" in rest:
        out[f"{timm_name}.{s}"] = take(f"{hf_name}.{s}")
  out.update(rest)  # leftovers surface as unexpected keys
  return out


def big_vision_to_timm(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """big_vision / vit_jax `.npz` names and layouts → timm names and torch layouts."""
  out, rest = {}, dict(sd)

  def take(name):
    if name not in rest:
      raise UserError(f"big_vision checkpoint is missing key {name!r}")
    return np.asarray(rest.pop(name))

  out["patch_embed.proj.weight"] = take("embedding/kernel").transpose(3, 2, 0, 1)
  out["patch_embed.proj.bias"] = take("embedding/bias")
  out["cls_token"] = take("cls")
  out["pos_embed"] = take("Transformer/posembed_input/pos_embedding")
  blocks = sorted({int(m.group(1)) for k in rest
                   if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
  for i in blocks:
    src, dst = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
    names = {k[len(src):].split("/")[0] for k in rest if k.startswith(src)}
    ln = sorted(n for n in names if n.startswith("LayerNorm_"))
    attn = next(n for n in names if n.startswith("MultiHeadDotProductAttention"))
    mlp = next(n for n in names if n.startswith("MlpBlock"))
    for j, norm in enumerate(ln):
      out[dst + f"norm{j + 1}.weight"] = take(src + f"{norm}/scale")
      out[dst + f"norm{j + 1}.bias"] = take(src + f"{norm}/bias")
    a = src + attn + "/"
    qkv_w = [take(a + f"{n}/kernel") for n in ("query", "key", "value")]  # [C, h, d]
    qkv_b = [take(a + f"{n}/bias") for n in ("query", "key", "value")]    # [h, d]
    out[dst + "attn.qkv.weight"] = np.concatenate([w.reshape(w.shape[0], -1).T for w in qkv_w])
    out[dst + "attn.qkv.bias"] = np.concatenate([b.reshape(-1) for b in qkv_b])
    wo = take(a + "out/kernel")  # [h, d, C]
    out[dst + "attn.proj.weight"] = wo.reshape(-1, wo.shape[-1]).T
    out[dst + "attn.proj.bias"] = take(a + "out/bias")
    for j in (0, 1):
      out[dst + f"mlp.fc{j + 1}.weight"] = take(src + f"{mlp}/Dense_{j}/kernel").T
      out[dst + f"mlp.fc{j + 1}.bias"] = take(src + f"{mlp}/Dense_{j}/bias")
    out[f"_heads.{i}"] = np.asarray(qkv_w[0].shape[1])  # consumed by spec inference
  out["norm.weight"] = take("Transformer/encoder_norm/scale")
  out["norm.bias"] = take("Transformer/encoder_norm/bias")
  out["head.weight"] = take("head/kernel").T
  out["head.bias"] = take("head/bias")
  out.update(rest)
  return out


# timm layout → spec and model ----------------------------------------------------------------------
def infer_spec(sd: Mapping[str, np.ndarray], *, num_heads: int | None = None,
               ln_eps: float = 1e-6) -> ArchSpec:
  """The dense ArchSpec a timm-layout state dict describes (its own image size)."""
  for key in ("patch_embed.proj.weight", "pos_embed", "head.weight"):
    if key not in sd:
      raise UserError(f"checkpoint is missing key {key!r}")
  width, in_ch, p, _ = sd["patch_embed.proj.weight"].shape
  dist = "dist_token" in sd
  prefix = 1 + int(dist)
  grid = int(round((sd["pos_embed"].shape[1] - prefix)**0.5))
  depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
  if num_heads is None and "_heads.0" in sd:
    num_heads = int(sd["_heads.0"])  # big_vision kernels carry the head count
  if num_heads is None:
    raise UserError(f"the number of attention heads cannot be read from these weights (width "
                    f"{width}); pass --num-heads (num_heads=...), or put the model's Hugging "
                    "Face config.json beside the weights")
  if num_heads < 1 or width % num_heads:
    raise UserError(f"--num-heads {num_heads}: must be >= 1 and divide the width {width}")
  mlp = sd["blocks.0.mlp.fc1.weight"].shape[0] if depth else 0
  return ArchSpec(image_size=grid * p, patch_size=p, width=width, num_heads=num_heads,
                  num_classes=sd["head.weight"].shape[0], in_channels=in_ch,
                  layers=tuple(BlockSpec("msa", heads=num_heads, mlp=mlp) for _ in range(depth)),
                  dist_token=dist, dist_head="head_dist.weight" in sd, ln_eps=ln_eps)


def resize_pos_embed(pos: np.ndarray, num_prefix: int, new_grid: int) -> np.ndarray:
  """Bilinear resize of the patch part of a position embedding [1, N, C] to `new_grid`²."""
  prefix, grid_part = pos[:, :num_prefix], pos[:, num_prefix:]
  old = int(round(grid_part.shape[1]**0.5))
  if old == new_grid:
    return pos
  g = grid_part.reshape(old, old, -1)
  g = jax.image.resize(jnp.asarray(g), (new_grid, new_grid, g.shape[-1]), method="bilinear")
  return np.concatenate([prefix, np.asarray(g).reshape(1, new_grid**2, -1)], axis=1)


def _linear(sd, name):
  return {"kernel": sd.pop(f"{name}.weight").T, "bias": sd.pop(f"{name}.bias")}


def _norm(sd, name):
  return {"scale": sd.pop(f"{name}.weight"), "bias": sd.pop(f"{name}.bias")}


def timm_to_state(sd: Mapping[str, np.ndarray], spec: ArchSpec) -> dict[str, Any]:
  """Maps a timm-layout state dict onto the pure-dict state of `ViT(spec)`."""
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items() if not k.startswith("_heads.")}
  expected = set(nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build_model(spec)))))
  try:
    state = {
        "patch_embed": {"kernel": sd.pop("patch_embed.proj.weight").transpose(2, 3, 1, 0),
                        "bias": sd.pop("patch_embed.proj.bias")},
        "cls_token": sd.pop("cls_token"),
        "pos_embed": resize_pos_embed(sd.pop("pos_embed"), spec.num_prefix, spec.grid),
        "blocks": {i: {"norm1": _norm(sd, f"blocks.{i}.norm1"),
                       "attn": {"qkv": _linear(sd, f"blocks.{i}.attn.qkv"),
                                "proj": _linear(sd, f"blocks.{i}.attn.proj")},
                       "norm2": _norm(sd, f"blocks.{i}.norm2"),
                       "mlp": {"fc1": _linear(sd, f"blocks.{i}.mlp.fc1"),
                               "fc2": _linear(sd, f"blocks.{i}.mlp.fc2")}}
                   for i in range(spec.depth)},
        "norm": _norm(sd, "norm"),
        "head": _linear(sd, "head"),
    }
    if spec.dist_token:
      state["dist_token"] = sd.pop("dist_token")
    if spec.dist_head:
      state["head_dist"] = _linear(sd, "head_dist")
  except KeyError as e:
    raise UserError(f"checkpoint is missing key {e.args[0]!r}") from None
  if sd:
    raise UserError(f"checkpoint has {len(sd)} unexpected keys: {sorted(sd)}")
  if set(state) != expected:
    raise UserError(f"state does not match the model: missing {sorted(expected - set(state))}, "
                    f"unexpected {sorted(set(state) - expected)}")
  return state


def import_checkpoint(path_or_sd: str | Mapping[str, np.ndarray], fmt: str = "auto", *,
                      num_heads: int | None = None, image_size: int | None = None,
                      ln_eps: float | None = None, hf_config: Mapping[str, Any] | None = None
                      ) -> nnx.Module:
  """A jaxprune `ViT` (or `Swin`, `ResNet`) holding the weights of a ViT/DeiT (or Swin, ResNet)
  checkpoint.

  Args:
    path_or_sd: a file (`.safetensors`, `.npz`, `.pth`), an HF model folder, or a state dict.
    fmt: `hf`, `timm`, `big_vision`, or `auto` (guess from the key names).
    num_heads: attention heads; read from the HF config or the big_vision kernels when not given
      (the weights alone do not determine it: an error asks for it otherwise).
    image_size: resize position embeddings (bilinear) to this input size; for a Swin, the input
      size (required unless an HF config gives it).
    ln_eps: LayerNorm epsilon; default 1e-12 for HF (its config's default), 1e-6 otherwise.
    hf_config: an HF `config.json` dict; read from the model folder when not given.
  """
  if fmt not in FORMATS:
    raise UserError(f"--format {fmt!r} is unknown; allowed are {', '.join(FORMATS)}")
  if isinstance(path_or_sd, str):
    cfg_path = os.path.join(path_or_sd if os.path.isdir(path_or_sd)
                            else os.path.dirname(path_or_sd), "config.json")
    if hf_config is None and os.path.exists(cfg_path):
      try:
        with open(cfg_path) as f:
          hf_config = json.load(f)
      except (OSError, ValueError) as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e})") from None
    sd = read_state_dict(path_or_sd)
  else:
    sd = dict(path_or_sd)
  fmt = detect_format(sd) if fmt == "auto" else fmt
  if convert_resnet.is_resnet(sd):
    return _fill(*convert_resnet.from_checkpoint(sd, fmt, image_size=image_size,
                                                 hf_config=hf_config))
  if convert_swin.is_swin(sd):
    return _import_swin(sd, fmt, image_size=image_size, ln_eps=ln_eps, hf_config=hf_config)
  if fmt == "hf":
    sd = hf_to_timm(sd)
    hf_config = hf_config or {}
    act = hf_config.get("hidden_act", "gelu")
    if act != "gelu":
      raise UserError(f"HF config hidden_act = {act!r}: only exact 'gelu' is supported")
    num_heads = num_heads or hf_config.get("num_attention_heads")
    ln_eps = ln_eps if ln_eps is not None else hf_config.get("layer_norm_eps", 1e-12)
  elif fmt == "big_vision":
    sd = big_vision_to_timm(sd)
  spec = infer_spec(sd, num_heads=num_heads, ln_eps=1e-6 if ln_eps is None else ln_eps)
  if image_size is not None and image_size != spec.image_size:
    spec = spec.replace(image_size=image_size)
  return _fill(spec, timm_to_state(sd, spec))


def _import_swin(sd: dict[str, np.ndarray], fmt: str, *, image_size: int | None,
                 ln_eps: float | None, hf_config: Mapping[str, Any] | None) -> nnx.Module:
  """`import_checkpoint` for a Swin state dict (HF or timm layout)."""
  hf_config = hf_config or {}
  if fmt == "big_vision":
    raise UserError("big_vision checkpoints hold ViTs, but these weights are a Swin")
  if fmt == "hf":
    act = hf_config.get("hidden_act", "gelu")
    if act != "gelu":
      raise UserError(f"HF config hidden_act = {act!r}: only exact 'gelu' is supported")
    if hf_config.get("use_absolute_embeddings"):
      raise UserError("HF Swin config use_absolute_embeddings = True is not supported")
    sd = convert_swin.hf_to_canonical(sd)
  else:
    sd = convert_swin.timm_to_canonical(sd)
  spec = convert_swin.infer_spec(
      sd, image_size=image_size or hf_config.get("image_size"),
      ln_eps=ln_eps if ln_eps is not None else hf_config.get("layer_norm_eps", 1e-5))
  try:
    state = convert_swin.canonical_to_state(sd, spec)
  except KeyError as e:
    raise UserError(f"Swin checkpoint is missing key {e.args[0]!r}") from None
  return _fill(spec, state)


def _fill(spec: ArchSpec, state: dict[str, Any]) -> nnx.Module:
  """The model of `spec` holding `state` (a pure dict), after checking every shape."""
  model = nnx.eval_shape(lambda: build_model(spec))
  graphdef, abstract = nnx.split(model)
  want = jax.tree.map(lambda x: tuple(x.shape), nnx.to_pure_dict(abstract))
  got = jax.tree.map(lambda x: tuple(x.shape), state)
  bad = [f"{jax.tree_util.keystr(k)}: checkpoint {g}, model {w}" for (k, w), g in
         zip(jax.tree_util.tree_leaves_with_path(want, is_leaf=lambda x: isinstance(x, tuple)),
             jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, tuple))) if w != g]
  if bad:
    raise UserError(f"checkpoint shapes do not match the inferred ArchSpec: {bad}")
  nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, state))
  return nnx.merge(graphdef, abstract)


def hf_preprocessing(path: str) -> dict[str, list[float]] | None:
  """The normalisation in an HF model folder's `preprocessor_config.json` (`image_mean`,
  `image_std`; identity when `do_normalize` is false), or None when the folder has none."""
  folder = path if os.path.isdir(path) else os.path.dirname(path)
  cfg_path = os.path.join(folder, "preprocessor_config.json")
  if not os.path.exists(cfg_path):
    return None
  try:
    with open(cfg_path) as f:
      cfg = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{cfg_path} is not valid JSON ({e})") from None
  if cfg.get("do_normalize") is False:
    n = len(cfg.get("image_mean") or [0, 0, 0])
    return {"mean": [0.0] * n, "std": [1.0] * n}
  if "image_mean" not in cfg or "image_std" not in cfg:
    return None
  return {"mean": [float(v) for v in cfg["image_mean"]],
          "std": [float(v) for v in cfg["image_std"]]}


def is_saved_model(folder: str) -> bool:
  """True for a folder `save_model` wrote: an `arch.json` with an `arch` and an orbax `state/`
  holding nothing else."""
  from jaxprune.export import ARCH_FILE, STATE_DIR
  try:
    with open(os.path.join(folder, ARCH_FILE)) as f:
      has_arch = "arch" in json.load(f)
    state = set(os.listdir(os.path.join(folder, STATE_DIR)))
  except (OSError, ValueError, TypeError):
    return False
  return has_arch and "_CHECKPOINT_METADATA" in state and all(
      n.startswith(("_", "d", "ocdbt", "manifest", "array_metadatas", "commit_success"))
      for n in state)


def check_out(out: str, overwrite: bool) -> None:
  """`--out` must be a new or empty folder, or (with `--overwrite`) one holding only a jaxprune
  model (`arch.json`, `state/`): a folder with anything else is the user's, never written into."""
  from jaxprune.export import ARCH_FILE, STATE_DIR
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out} is a file; choose a folder to write the model into")
  entries = sorted(os.listdir(out)) if os.path.isdir(out) else []
  foreign = [e for e in entries if e not in (ARCH_FILE, STATE_DIR)]
  if not foreign and entries and not is_saved_model(out):
    foreign = entries  # names jaxprune uses, contents it did not write
  if foreign:
    raise UserError(f"--out {out} holds files jaxprune did not write ({', '.join(foreign[:3])}"
                    f"{', ...' if len(foreign) > 3 else ''}); nothing was written: choose a new "
                    "or empty folder")
  if entries and not overwrite:
    raise UserError(f"--out {out} already holds a model; pass --overwrite to replace it, or "
                    "choose a new folder")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxprune.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="checkpoint file or Hugging Face model folder")
  parser.add_argument("--format", default="auto", choices=FORMATS)
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--num-heads", type=int, default=None)
  parser.add_argument("--image-size", type=int, default=None,
                      help="resize position embeddings for this input size")
  parser.add_argument("--mean", type=float, nargs="+", default=None,
                      help="input normalisation stored with the model (per channel, pixels in "
                      "[0, 1]); default: an HF folder's preprocessor_config.json")
  parser.add_argument("--std", type=float, nargs="+", default=None)
  parser.add_argument("--overwrite", action="store_true",
                      help="replace the jaxprune model already in --out (never other files)")
  args = parser.parse_args(argv)
  from jaxprune.accounting import count
  from jaxprune.export import save_model
  try:
    check_out(args.out, args.overwrite)
    if (args.mean is None) != (args.std is None):
      raise UserError("--mean and --std go together: give both or neither")
    model = import_checkpoint(args.src, args.format, num_heads=args.num_heads,
                              image_size=args.image_size)
    pre = ({"mean": args.mean, "std": args.std} if args.mean is not None
           else hf_preprocessing(args.src) if os.path.exists(args.src) else None)
    save_model(args.out, model, extra={"source": os.path.abspath(args.src),
                                       "format": args.format}, preprocessing=pre)
  except UserError as e:
    print("error: " + " ".join(str(e).split()), file=sys.stderr)
    return 2
  except OSError as e:  # --out under a file, unwritable...
    print(f"error: cannot write --out {args.out}: {e.strerror or e}", file=sys.stderr)
    return 2
  c = count(model.spec)
  print(f"wrote {args.out}: depth {model.spec.depth}, width {model.spec.width}, "
        f"{c.params / 1e6:.2f}M params, {c.macs / 1e9:.3f} GMACs at {model.spec.image_size}px; "
        + (f"normalisation mean {pre['mean']}, std {pre['std']}" if pre else
           "no normalisation stored (give --mean/--std, or set data.mean/std when using it)"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
