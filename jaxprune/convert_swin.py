"""Swin checkpoint import: Hugging Face `SwinForImageClassification` and timm-layout Swin state
dicts → the state of `models.swin.Swin` (used by `jaxprune.convert`).

Every source is first renamed to one canonical layout — the original Swin / timm<0.9 names, with
each stage's patch merging at the end of that stage — then its ArchSpec is read off the shapes
(width, blocks and heads per stage, window from the relative position tables, MLP width) and the
arrays are mapped onto the model by name. Buffers (relative position index, attention masks)
are recomputed, never read.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxprune.arch import ArchSpec, BlockSpec, MergeSpec
from jaxprune.errors import UserError

_HF_LEGACY = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
              "table": "attention.self.relative_position_bias_table",
              "proj": "attention.output.dense", "fc1": "intermediate.dense",
              "fc2": "output.dense"}
_HF_V5 = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
          "table": "attention.relative_position_bias.relative_position_bias_table",
          "proj": "attention.o_proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_BUFFERS = re.compile(r".*(relative_position_index|attn_mask)$")


def is_swin(sd: Mapping[str, Any]) -> bool:
  """Whether a state dict (HF or timm layout) holds a Swin."""
  return any(k.startswith("swin.") or "relative_position_bias_table" in k for k in sd)


def hf_to_canonical(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF Swin names (on-disk, and transformers>=5 in-memory) → canonical timm names."""
  rest = {k: v for k, v in sd.items() if not _BUFFERS.match(k)}
  out = {}

  def take(name):
    if name not in rest:
      raise UserError(f"HF Swin checkpoint is missing key {name!r}")
    return rest.pop(name)

  emb = "swin.embeddings."
  for s in ("weight", "bias"):
    out[f"patch_embed.proj.{s}"] = take(f"{emb}patch_embeddings.projection.{s}")
    out[f"patch_embed.norm.{s}"] = take(f"{emb}norm.{s}")
  if any(k.startswith(emb + "position_embeddings") for k in rest):
    raise UserError("HF Swin with use_absolute_embeddings = True is not supported")
  legacy = any(".attention.self." in k for k in rest)
  names = _HF_LEGACY if legacy else _HF_V5
  blocks = sorted({(int(m.group(1)), int(m.group(2))) for k in rest
                   if (m := re.match(r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.", k))})
  for s, j in blocks:
    src, dst = f"swin.encoder.layers.{s}.blocks.{j}.", f"layers.{s}.blocks.{j}."
    out[dst + "attn.relative_position_bias_table"] = take(src + names["table"])
    for p in ("weight", "bias"):
      out[dst + f"attn.qkv.{p}"] = np.concatenate([take(src + f"{names[n]}.{p}")
                                                   for n in ("q", "k", "v")])
      out[dst + f"attn.proj.{p}"] = take(src + f"{names['proj']}.{p}")
      out[dst + f"mlp.fc1.{p}"] = take(src + f"{names['fc1']}.{p}")
      out[dst + f"mlp.fc2.{p}"] = take(src + f"{names['fc2']}.{p}")
      out[dst + f"norm1.{p}"] = take(src + f"layernorm_before.{p}")
      out[dst + f"norm2.{p}"] = take(src + f"layernorm_after.{p}")
  for s in sorted({s for s, _ in blocks}):
    src = f"swin.encoder.layers.{s}.downsample."
    if src + "reduction.weight" in rest:
      out[f"layers.{s}.downsample.reduction.weight"] = take(src + "reduction.weight")
      for p in ("weight", "bias"):
        out[f"layers.{s}.downsample.norm.{p}"] = take(src + f"norm.{p}")
  for p in ("weight", "bias"):
    out[f"norm.{p}"] = take(f"swin.layernorm.{p}")
    if f"classifier.{p}" in rest:
      out[f"head.{p}"] = take(f"classifier.{p}")
  out.update(rest)  # leftovers surface as unexpected keys
  return out


def timm_to_canonical(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """timm Swin names → canonical: buffers dropped, `head.fc` → `head`, and timm>=0.9's patch
  merging at the start of stage s+1 moved to the end of stage s."""
  out = {k.replace("head.fc.", "head."): v for k, v in sd.items() if not _BUFFERS.match(k)}
  stages = {int(m.group(1)) for k in out if (m := re.match(r"layers\.(\d+)\.", k))}
  if stages and any(k.startswith(f"layers.{max(stages)}.downsample.") for k in out):
    out = {re.sub(r"^layers\.(\d+)\.downsample\.",
                  lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k): v
           for k, v in out.items()}
  return out


def infer_spec(sd: Mapping[str, np.ndarray], *, image_size: int | None,
               ln_eps: float = 1e-5) -> ArchSpec:
  """The dense Swin ArchSpec a canonical state dict describes, at `image_size`."""
  for key in ("patch_embed.proj.weight", "head.weight"):
    if key not in sd:
      raise UserError(f"Swin checkpoint is missing key {key!r}")
  if not image_size:
    raise UserError("the input size of a Swin cannot be read from its weights; pass "
                    "--image-size (image_size=...), or put the model's Hugging Face "
                    "config.json beside the weights")
  width, in_ch, p, _ = sd["patch_embed.proj.weight"].shape
  if image_size % p:
    raise UserError(f"--image-size {image_size} is not divisible by the patch size {p}")
  depths: dict[int, int] = {}
  for k in sd:
    if m := re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k):
      s, j = int(m.group(1)), int(m.group(2))
      depths[s] = max(depths.get(s, 0), j + 1)
  grid, layers, head_dim = image_size // p, [], None
  for s in range(len(depths)):
    for j in range(depths[s]):
      pre = f"layers.{s}.blocks.{j}."
      table = sd[pre + "attn.relative_position_bias_table"]
      heads, stored = table.shape[1], (int(round(table.shape[0]**0.5)) + 1) // 2
      c = sd[pre + "norm1.weight"].shape[0]
      head_dim = head_dim or c // heads
      window = min(stored, grid)
      shift = window // 2 if j % 2 and grid > stored else 0
      layers.append(BlockSpec("msa", heads=heads, mlp=sd[pre + "mlp.fc1.weight"].shape[0],
                              head_dim=c // heads, window=window, shift=shift))
    if f"layers.{s}.downsample.reduction.weight" in sd:
      layers.append(MergeSpec(out_width=sd[f"layers.{s}.downsample.reduction.weight"].shape[0]))
      grid = (grid + 1) // 2
  return ArchSpec(image_size=image_size, patch_size=p, width=width, num_heads=width // head_dim,
                  num_classes=sd["head.weight"].shape[0], in_channels=in_ch,
                  layers=tuple(layers), family="swin", class_token=False, ln_eps=ln_eps)


def crop_table(table: np.ndarray, window: int) -> np.ndarray:
  """The entries of a relative position bias table for offsets up to ±(window - 1): a table
  stored for a larger window, used where the grid clamps the window (as Swin does)."""
  stored = (int(round(table.shape[0]**0.5)) + 1) // 2
  if stored == window:
    return table
  t = table.reshape(2 * stored - 1, 2 * stored - 1, -1)
  lo = stored - window
  return t[lo:lo + 2 * window - 1, lo:lo + 2 * window - 1].reshape((2 * window - 1)**2, -1)


def _linear(sd, name, bias=True):
  out = {"kernel": sd.pop(f"{name}.weight").T}
  if bias:
    out["bias"] = sd.pop(f"{name}.bias")
  return out


def _norm(sd, name):
  return {"scale": sd.pop(f"{name}.weight"), "bias": sd.pop(f"{name}.bias")}


def canonical_to_state(sd: Mapping[str, np.ndarray], spec: ArchSpec) -> dict[str, Any]:
  """Maps a canonical Swin state dict onto the pure-dict state of `Swin(spec)`."""
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
  state: dict[str, Any] = {
      "patch_embed": {"kernel": sd.pop("patch_embed.proj.weight").transpose(2, 3, 1, 0),
                      "bias": sd.pop("patch_embed.proj.bias")},
      "patch_norm": _norm(sd, "patch_embed.norm")}
  layers, stage, j = {}, 0, 0
  for i, layer in enumerate(spec.layers):
    if isinstance(layer, MergeSpec):
      pre = f"layers.{stage}.downsample."
      layers[i] = {"norm": _norm(sd, pre + "norm"),
                   "reduction": _linear(sd, pre + "reduction", bias=False)}
      stage, j = stage + 1, 0
      continue
    pre = f"layers.{stage}.blocks.{j}."
    layers[i] = {"norm1": _norm(sd, pre + "norm1"), "norm2": _norm(sd, pre + "norm2"),
                 "attn": {"qkv": _linear(sd, pre + "attn.qkv"),
                          "proj": _linear(sd, pre + "attn.proj"),
                          "relative_position_bias_table": crop_table(
                              sd.pop(pre + "attn.relative_position_bias_table"), layer.window)},
                 "mlp": {"fc1": _linear(sd, pre + "mlp.fc1"), "fc2": _linear(sd, pre + "mlp.fc2")}}
    j += 1
  state["layers"] = layers
  state["norm"] = _norm(sd, "norm")
  state["head"] = _linear(sd, "head")
  if sd:
    raise UserError(f"checkpoint has {len(sd)} unexpected keys: {sorted(sd)[:10]}")
  return state
