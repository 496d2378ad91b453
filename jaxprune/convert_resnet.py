"""ResNet import: Hugging Face `ResNetForImageClassification` and the torchvision / timm layout.

Both are renamed to one canonical layout (torchvision's names: `conv1`, `bn1`, `layer<s>.<i>.conv<j>`,
`layer<s>.<i>.downsample.{0,1}`, `fc`), from which the ArchSpec is read (block kind, widths,
shortcuts) and the state filled. Strides are not in the weights: every stage but the first starts
at stride 2 (torchvision and timm), and Hugging Face's first stage too when its config says
`downsample_in_first_stage`.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from jaxprune.arch import ArchSpec
from jaxprune.errors import UserError
from jaxprune.models.resnet import BasicSpec, BottleneckSpec

_HF_BLOCK = re.compile(r"^resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)$")
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.")


def is_resnet(sd: Mapping[str, Any]) -> bool:
  return any(k.startswith("resnet.embedder.") or k.startswith("layer1.0.conv1.") for k in sd)


def hf_to_canonical(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Hugging Face ResNet names → torchvision's."""
  out = {}
  for key, value in sd.items():
    if key.endswith("num_batches_tracked"):
      continue
    if key.startswith("resnet.embedder.embedder."):
      rest = key[len("resnet.embedder.embedder."):]
      out[rest.replace("convolution.", "conv1.").replace("normalization.", "bn1.")] = value
    elif key.startswith("classifier.1."):
      out["fc." + key[len("classifier.1."):]] = value
    elif m := _HF_BLOCK.match(key):
      stage, block, rest = int(m[1]), int(m[2]), m[3]
      pre = f"layer{stage + 1}.{block}."
      if rest.startswith("shortcut."):
        rest = rest[len("shortcut."):].replace("convolution.", "downsample.0.").replace(
            "normalization.", "downsample.1.")
      elif lm := re.match(r"^layer\.(\d+)\.(convolution|normalization)\.(.*)$", rest):
        j = int(lm[1]) + 1
        rest = f"conv{j}.{lm[3]}" if lm[2] == "convolution" else f"bn{j}.{lm[3]}"
      else:
        raise UserError(f"Hugging Face ResNet key {key!r} is not understood")
      out[pre + rest] = value
    else:
      raise UserError(f"Hugging Face ResNet key {key!r} is not understood")
  return out


def canonical(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The torchvision / timm layout as it is (its BatchNorm step counters dropped)."""
  return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def infer_spec(sd: Mapping[str, np.ndarray], *, image_size: int | None,
               first_stage_stride: int = 1) -> ArchSpec:
  """The ArchSpec of a canonical ResNet state dict."""
  try:
    stem = sd["conv1.weight"]
    fc = sd["fc.weight"]
  except KeyError as e:
    raise UserError(f"ResNet checkpoint is missing key {e.args[0]!r}") from None
  blocks = sorted({(int(m[1]), int(m[2])) for k in sd if (m := _BLOCK.match(k))})
  bottleneck = "layer1.0.conv3.weight" in sd
  make = BottleneckSpec if bottleneck else BasicSpec
  layers = []
  for stage, i in blocks:
    pre = f"layer{stage}.{i}."
    last = sd[pre + ("conv3.weight" if bottleneck else "conv2.weight")]
    stride = (first_stage_stride if stage == 1 else 2) if i == 0 else 1
    layers.append(make(planes=int(sd[pre + "conv1.weight"].shape[0]),
                       out_width=int(last.shape[0]), stride=stride,
                       shortcut=pre + "downsample.0.weight" in sd))
  kernel = stem.shape[-1]
  if kernel not in (7, 3):
    raise UserError(f"ResNet stem conv of kernel {kernel}: jaxprune reads 7x7 (ImageNet) or 3x3 "
                    "(CIFAR) stems")
  patch = 4 if kernel == 7 else 1
  return ArchSpec(image_size=image_size or (224 if patch == 4 else 32), patch_size=patch,
                  width=int(stem.shape[0]), num_heads=1, num_classes=int(fc.shape[0]),
                  in_channels=int(stem.shape[1]), layers=tuple(layers), family="resnet",
                  class_token=False)


def _conv(w: np.ndarray) -> dict[str, np.ndarray]:
  return {"kernel": np.transpose(w, (2, 3, 1, 0))}  # torch OIHW → flax HWIO


def _conv_bn(sd, conv: str, bn: str) -> dict[str, Any]:
  return {"conv": _conv(sd[conv + ".weight"]),
          "bn": {"scale": sd[bn + ".weight"], "bias": sd[bn + ".bias"],
                 "mean": sd[bn + ".running_mean"], "var": sd[bn + ".running_var"]}}


def canonical_to_state(sd: Mapping[str, np.ndarray], spec: ArchSpec) -> dict[str, Any]:
  """The pure-dict state of `spec`'s `ResNet` from a canonical state dict."""
  layers, j = {}, 0
  for stage, i in sorted({(int(m[1]), int(m[2])) for k in sd if (m := _BLOCK.match(k))}):
    pre = f"layer{stage}.{i}."
    b = {f"conv{n}": _conv_bn(sd, f"{pre}conv{n}", f"{pre}bn{n}")
         for n in (1, 2, 3) if f"{pre}conv{n}.weight" in sd}
    if pre + "downsample.0.weight" in sd:
      b["shortcut"] = _conv_bn(sd, pre + "downsample.0", pre + "downsample.1")
    layers[j] = b
    j += 1
  return {"stem": _conv_bn(sd, "conv1", "bn1"), "layers": layers,
          "head": {"kernel": np.ascontiguousarray(sd["fc.weight"].T), "bias": sd["fc.bias"]}}


def from_checkpoint(sd: Mapping[str, np.ndarray], fmt: str, *, image_size: int | None,
                    hf_config: Mapping[str, Any] | None) -> tuple[ArchSpec, dict[str, Any]]:
  """(spec, state) of a ResNet state dict in layout `fmt` ("hf" or "timm")."""
  hf_config = hf_config or {}
  first_stride = 1
  if fmt == "hf":
    act = hf_config.get("hidden_act", "relu")
    if act != "relu":
      raise UserError(f"HF ResNet config hidden_act = {act!r}: only 'relu' is supported")
    if hf_config.get("downsample_in_bottleneck"):
      raise UserError("HF ResNet config downsample_in_bottleneck = True (stride on the first 1x1 "
                      "conv) is not supported: jaxprune's bottleneck strides its 3x3 conv")
    first_stride = 2 if hf_config.get("downsample_in_first_stage") else 1
    sd = hf_to_canonical(sd)
  elif fmt == "timm":
    sd = canonical(sd)
  else:
    raise UserError(f"--format {fmt!r}: ResNet checkpoints are read in the hf or timm "
                    "(torchvision) layouts")
  spec = infer_spec(sd, image_size=image_size, first_stage_stride=first_stride)
  try:
    return spec, canonical_to_state(sd, spec)
  except KeyError as e:
    raise UserError(f"ResNet checkpoint is missing key {e.args[0]!r}") from None


# Export: the Hugging Face layout --------------------------------------------------------------------
def _stages(spec: ArchSpec) -> list[list[int]]:
  from jaxprune.methods.dcvit.structure import stages  # noqa: PLC0415
  return stages(spec)


def hf_fit(spec: ArchSpec) -> str | None:
  """Why `spec` does not fit a Hugging Face `ResNetConfig` (one line), or None: the 7x7 stem,
  one block kind, per stage one output width (planes = width / 4 in bottlenecks), stride 2 at
  every stage's start but the first, and shortcuts exactly where the shape changes. Dropped
  blocks fit (a stage just gets shallower); narrowed ones do not."""
  if spec.patch_size != 4:
    return "the CIFAR stem (patch_size 1): Hugging Face ResNets have the 7x7 / max-pool stem"
  kinds = {b.kind for b in spec.blocks}
  if len(kinds) != 1:
    return f"block kinds {sorted(kinds)}: a Hugging Face ResNet has one"
  expansion = 4 if "bottleneck" in kinds else 1
  cin = spec.width
  for s, stage in enumerate(_stages(spec)):
    for j, i in enumerate(stage):
      b = spec.blocks[i]
      stride = b.stride if j == 0 else 1
      if (b.out_width != spec.blocks[stage[0]].out_width or b.planes * expansion != b.out_width
          or (j and b.stride != 1) or (s and j == 0 and b.stride != 2)
          or b.shortcut != (cin != b.out_width or stride != 1)):
        return (f"block {i} (planes {b.planes}, out {b.out_width}, stride {b.stride}, shortcut "
                f"{b.shortcut}) does not fit a Hugging Face ResNet config")
      cin = b.out_width
  return None


def hf_save(model) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """The Hugging Face `ResNetForImageClassification` config and weights of `model` (fits)."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415
  spec = model.spec
  st = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))

  def conv_bn(dst: str, src: dict) -> dict[str, np.ndarray]:
    bn = src["bn"]
    return {f"{dst}convolution.weight": np.ascontiguousarray(
                src["conv"]["kernel"].transpose(3, 2, 0, 1)),  # flax HWIO → torch OIHW
            f"{dst}normalization.weight": bn["scale"], f"{dst}normalization.bias": bn["bias"],
            f"{dst}normalization.running_mean": bn["mean"],
            f"{dst}normalization.running_var": bn["var"]}

  w = conv_bn("resnet.embedder.embedder.", st["stem"])
  stages = _stages(spec)
  for s, stage in enumerate(stages):
    for j, i in enumerate(stage):
      b, pre = st["layers"][i], f"resnet.encoder.stages.{s}.layers.{j}."
      for n in (1, 2, 3):
        if f"conv{n}" in b:
          w.update(conv_bn(f"{pre}layer.{n - 1}.", b[f"conv{n}"]))
      if "shortcut" in b:
        w.update(conv_bn(f"{pre}shortcut.", b["shortcut"]))
  w["classifier.1.weight"] = np.ascontiguousarray(st["head"]["kernel"].T)
  w["classifier.1.bias"] = st["head"]["bias"]
  config = {"architectures": ["ResNetForImageClassification"], "model_type": "resnet",
            "embedding_size": spec.width, "layer_type": spec.blocks[0].kind,
            "hidden_sizes": [spec.blocks[stage[0]].out_width for stage in stages],
            "depths": [len(stage) for stage in stages], "hidden_act": "relu",
            "downsample_in_first_stage": spec.blocks[0].stride == 2,
            "downsample_in_bottleneck": False}
  return config, w
