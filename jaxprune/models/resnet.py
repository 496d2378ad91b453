"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, arXiv:1512.03385)
as a jaxprune family: its layer kinds, model, presets and accounting, registered in one file.

Family "resnet": a stem (`patch_size` 4: 7×7/2 conv, BatchNorm, ReLU, 3×3/2 max-pool, as
torchvision and Hugging Face; `patch_size` 1: one 3×3/1 conv, BatchNorm, ReLU — the CIFAR stem
of the small variants), residual blocks, global average pooling and a linear head (no final
norm). Layer kinds:

  "basic"       3×3 conv (stride) → BN → ReLU → 3×3 conv → BN, + shortcut, ReLU (ResNet-18/34)
  "bottleneck"  1×1 conv → BN → ReLU → 3×3 conv (stride) → BN → ReLU → 1×1 conv → BN,
                + shortcut, ReLU (ResNet-50; stride on the 3×3, torchvision's "v1.5")

`planes` is the width inside the block, `out_width` its output (basic: = planes, bottleneck:
4 × planes in the presets; any value is allowed, so a block can be narrowed), `stride` 1 or 2,
`shortcut` a 1×1 conv (stride) + BN on the residual path (required where the shape changes).
Convolutions pad symmetrically (k // 2), as PyTorch does, so imported weights give the same
logits. BatchNorm statistics live in their own collection (`nnx.BatchStat`: the `rest` of
`split_model`). MACs count each conv as k²·C_in·C_out per output position; BatchNorm, ReLU,
pooling and the residual add count nothing (BatchNorm folds into the conv at deployment).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec, Shape
from jaxprune.errors import UserError
from jaxprune.models.blocks import (PooledClassifier, apply_layers, block_maker, branch_drops,
                                    check_images, drop_path, linear)

_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's


def _out_grid(grid: int, stride: int) -> int:
  """Output size of a k×k conv with padding k // 2 (odd k) at `stride`: ⌈grid / stride⌉."""
  return -(-grid // stride)


@dataclasses.dataclass(frozen=True)
class ResBlockSpec:
  """A residual block (see the module docstring); `kind` says which."""

  kind: ClassVar[str] = ""
  is_block: ClassVar[bool] = True
  planes: int = 0
  out_width: int = 0
  stride: int = 1
  shortcut: bool = False

  def out_shape(self, shape: Shape) -> Shape:
    return Shape(_out_grid(shape.grid, self.stride), self.out_width, shape.prefix)

  def check(self, where: str, shape: Shape) -> None:
    for name in ("planes", "out_width"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{where}.{name} = {value!r}: must be a positive integer")
    if self.stride not in (1, 2):
      raise UserError(f"{where}.stride = {self.stride!r}: allowed are 1, 2")
    if not isinstance(self.shortcut, bool):
      raise UserError(f"{where}.shortcut = {self.shortcut!r}: must be a bool")
    if not self.shortcut and (self.stride != 1 or shape.width != self.out_width):
      raise UserError(f"{where}: a block from width {shape.width} to {self.out_width} at stride "
                      f"{self.stride} needs shortcut = True (a 1x1 conv on the residual path)")

  def _shortcut_macs(self, shape: Shape) -> int:
    g = _out_grid(shape.grid, self.stride)
    return shape.width * self.out_width * g * g if self.shortcut else 0

  def _shortcut_params(self, shape: Shape) -> int:
    return shape.width * self.out_width + 2 * self.out_width if self.shortcut else 0


@dataclasses.dataclass(frozen=True)
class BasicSpec(ResBlockSpec):
  kind: ClassVar[str] = "basic"

  def macs(self, shape: Shape, head_dim: int = 0, attention_matmuls: bool = True,
           norm: int = 1) -> int:
    g = _out_grid(shape.grid, self.stride)
    return (9 * shape.width * self.planes + 9 * self.planes * self.out_width) * g * g + \
        self._shortcut_macs(shape)

  def params(self, shape: Shape, head_dim: int = 0) -> int:
    return (9 * shape.width * self.planes + 2 * self.planes + 9 * self.planes * self.out_width
            + 2 * self.out_width + self._shortcut_params(shape))


@dataclasses.dataclass(frozen=True)
class BottleneckSpec(ResBlockSpec):
  kind: ClassVar[str] = "bottleneck"

  def macs(self, shape: Shape, head_dim: int = 0, attention_matmuls: bool = True,
           norm: int = 1) -> int:
    g, p = _out_grid(shape.grid, self.stride), self.planes
    return (shape.width * p * shape.grid**2 + 9 * p * p * g * g + p * self.out_width * g * g
            + self._shortcut_macs(shape))

  def params(self, shape: Shape, head_dim: int = 0) -> int:
    p = self.planes
    return (shape.width * p + 2 * p + 9 * p * p + 2 * p + p * self.out_width + 2 * self.out_width
            + self._shortcut_params(shape))


registry.register_layer(BasicSpec)
registry.register_layer(BottleneckSpec)


# Modules ------------------------------------------------------------------------------------------
class ConvAdaptor(nnx.Module):
  """PRACTISE's adaptor on a CNN: a 1×1 conv without bias, initialised to the identity."""

  def __init__(self, channels: int):
    self.practise_adaptor = nnx.Param(jnp.eye(channels, dtype=jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x @ self.practise_adaptor[...].astype(x.dtype)


class ConvBN(nnx.Module):
  """k×k conv without bias (PyTorch's symmetric k // 2 padding) and BatchNorm.

  The conv and the eval-mode BatchNorm are written with `lax` and arithmetic rather than through
  `nnx.Conv.__call__` / `nnx.BatchNorm.__call__` (whose parameters they use): the ONNX converter
  rewrites those modules into NCHW nodes whose layouts break at the residual add; plain ops
  export as they are. Training uses `nnx.BatchNorm` (batch statistics, running averages)."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, rngs: nnx.Rngs):
    pad = kernel // 2
    self.stride, self.pad = stride, pad
    # > 0 while inverting the model (`synth.invert`): the eval forward records this weight
    # times DeepInversion's BatchNorm-statistics distance of the batch (`bn_stat_loss`).
    self.stat_weight = 0.0
    self.adaptor_pre = self.adaptor_post = None  # PRACTISE's (`add_adaptor`)
    self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride),
                         padding=((pad, pad), (pad, pad)), use_bias=False,
                         kernel_init=_conv_init, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, momentum=0.9, epsilon=1e-5, rngs=rngs)

  def add_adaptor(self, where: str) -> None:
    """Inserts PRACTISE's identity 1×1 conv adaptor before the conv (`"pre"`, on its input) or
    between the conv and its BatchNorm (`"post"`), as the reference's forward hooks do."""
    if where == "pre":
      self.adaptor_pre = nnx.data(ConvAdaptor(self.conv.in_features))
    elif where == "post":
      self.adaptor_post = nnx.data(ConvAdaptor(self.conv.out_features))
    else:
      raise ValueError(f"ConvBN.add_adaptor: where = {where!r}; allowed are pre, post")

  def cut(self, in_keep=None, out_keep=None) -> "ConvBN":
    """A new ConvBN of the input channels `in_keep` and output channels `out_keep` (indices, in
    order; None = all): the kernel's slices and the BatchNorm's entries of the kept outputs."""
    if self.adaptor_pre is not None or self.adaptor_post is not None:
      raise ValueError("ConvBN.cut: remove PRACTISE's adaptors first")
    kernel = self.conv.kernel[...]
    if in_keep is not None:
      kernel = kernel[:, :, np.asarray(in_keep, np.int64)]
    out_idx = np.arange(kernel.shape[-1]) if out_keep is None else np.asarray(out_keep, np.int64)
    kernel = kernel[..., out_idx]
    k, cin, cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    out = nnx.eval_shape(lambda: ConvBN(cin, cout, k, self.stride, rngs=nnx.Rngs(0)))
    out.conv.kernel.set_value(kernel)
    for name in ("scale", "bias", "mean", "var"):
      getattr(out.bn, name).set_value(getattr(self.bn, name)[...][out_idx])
    return out

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = x.astype(self.conv.dtype or x.dtype)  # bfloat16 under `set_compute_dtype`
    if self.adaptor_pre is not None:
      x = self.adaptor_pre(x)
    kernel = self.conv.kernel[...].astype(x.dtype)
    y = jax.lax.conv_general_dilated(x, kernel, (self.stride,) * 2, ((self.pad, self.pad),) * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.adaptor_post is not None:
      y = self.adaptor_post(y)
    if train:
      return self.bn(y, use_running_average=False)
    bn = self.bn
    if self.stat_weight:  # ‖μ_batch − μ_running‖₂ + ‖σ²_batch − σ²_running‖₂
      mu, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
      self.bn_stat_loss = nnx.Intermediate(self.stat_weight * (  # read by `nnx.pop`
          jnp.linalg.norm(mu - bn.mean[...]) + jnp.linalg.norm(var - bn.var[...])))
    scale = bn.scale[...] * jax.lax.rsqrt(bn.var[...] + bn.epsilon)
    return y * scale.astype(y.dtype) + (bn.bias[...] - bn.mean[...] * scale).astype(y.dtype)


class ResBlock(nnx.Module):
  """A basic or bottleneck residual block (`BasicSpec` / `BottleneckSpec`) on NHWC maps."""

  def __init__(self, block: ResBlockSpec, shape: Shape, *, rngs: nnx.Rngs):
    cin, p, out, s = shape.width, block.planes, block.out_width, block.stride
    if block.kind == "basic":
      self.conv1 = ConvBN(cin, p, 3, s, rngs=rngs)
      self.conv2 = ConvBN(p, out, 3, rngs=rngs)
      self.conv3 = None
    else:
      self.conv1 = ConvBN(cin, p, 1, rngs=rngs)
      self.conv2 = ConvBN(p, p, 3, s, rngs=rngs)
      self.conv3 = ConvBN(p, out, 1, rngs=rngs)
    self.shortcut = ConvBN(cin, out, 1, s, rngs=rngs) if block.shortcut else None

  def narrowed(self, keep) -> "ResBlock":
    """A copy with the inner width (`planes`) cut to the channels `keep` (indices, in order):
    conv1's outputs, the inner conv's inputs (and a bottleneck's 3×3 outputs), conv3's inputs;
    the output width and the shortcut unchanged. DC-ViT's `structure = "narrow"` on CNNs."""
    out = nnx.clone(self)
    out.conv1 = self.conv1.cut(out_keep=keep)
    if self.conv3 is None:
      out.conv2 = self.conv2.cut(in_keep=keep)
    else:
      out.conv2 = self.conv2.cut(in_keep=keep, out_keep=keep)
      out.conv3 = self.conv3.cut(in_keep=keep)
    return out

  def layer_spec(self, template: ResBlockSpec) -> ResBlockSpec:
    """The block's spec as its modules now are (`surgery.read_spec`): `template` with the inner
    width of conv1."""
    return dataclasses.replace(template, planes=self.conv1.conv.out_features)

  @property
  def last_conv(self) -> ConvBN:
    """The conv whose BatchNorm ends the residual branch (conv2 basic, conv3 bottleneck)."""
    return self.conv2 if self.conv3 is None else self.conv3

  def __call__(self, x: jax.Array, train: bool = False,
               drop: tuple[float, jax.Array] | None = None) -> jax.Array:
    """`drop` = (rate, key): stochastic depth on the residual branch (training only)."""
    y = self.conv2(jax.nn.relu(self.conv1(x, train)), train)
    if self.conv3 is not None:
      y = self.conv3(jax.nn.relu(y), train)
    identity = x if self.shortcut is None else self.shortcut(x, train)
    return jax.nn.relu(identity + drop_path(y, branch_drops(drop)[0]))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """3×3 max-pool at stride 2 with one pixel of padding (-inf), as PyTorch's MaxPool2d(3, 2, 1)."""
  return nnx.max_pool(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf),
                      window_shape=(3, 3), strides=(2, 2), padding="VALID")


class ResNet(PooledClassifier):
  """Called on float NHWC images (already normalised) it returns class logits `[batch, classes]`.

  `features` returns the last stage's map as tokens [B, H·W, C] (before pooling: what feature
  mimicking matches); `logits` pools them and applies the head.
  """

  def __init__(self, spec: ArchSpec, *, rngs: nnx.Rngs, make_block=None):
    """`make_block(spec, block_spec, index, rngs, shape)` builds each block (default: `ResBlock`)."""
    self.spec = spec
    make_block = block_maker(lambda spec, b, i, rngs, shape: ResBlock(b, shape, rngs=rngs),
                             make_block)
    k, s = (7, 2) if spec.patch_size == 4 else (3, 1)
    self.stem = ConvBN(spec.in_channels, spec.width, k, s, rngs=rngs)
    self.layers = nnx.List([make_block(spec, b, i, rngs, shape)
                            for i, (b, shape) in enumerate(spec.walk())])
    self.head = linear(spec.out_shape.width, spec.num_classes, rngs)

  @property
  def blocks(self) -> list[nnx.Module]:
    return list(self.layers)

  def bn_layers(self) -> list[ConvBN]:
    """Every conv + BatchNorm in forward order (the stem first): what model inversion's
    BatchNorm-statistics prior reads (`synth.invert`)."""
    out = [self.stem]
    for block in self.layers:
      out += [m for m in (getattr(block, name, None) for name in
                          ("conv1", "conv2", "conv3", "shortcut")) if isinstance(m, ConvBN)]
    return out

  def embed(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Images [B, H, W, C_in] → the stem's map [B, H / patch, W / patch, width]."""
    check_images(images, self.spec, "ResNet")
    x = jax.nn.relu(self.stem(images, train))
    return max_pool_3x3_s2(x) if self.spec.patch_size == 4 else x

  def features(self, images: jax.Array, train: bool = False, **block_kwargs) -> jax.Array:
    x = apply_layers(self.layers, self.embed(images, train), train, **block_kwargs)
    return x.reshape(x.shape[0], -1, x.shape[-1])



# Family: accounting, checks, presets ----------------------------------------------------------------
def _stem(spec: ArchSpec, norm: int = 1) -> tuple[int, int]:
  """(MACs, params) of the stem conv and its BatchNorm."""
  k, s = (7, 2) if spec.patch_size == 4 else (3, 1)
  g = _out_grid(spec.image_size, s)
  return k * k * spec.in_channels * spec.width * g * g, \
      k * k * spec.in_channels * spec.width + 2 * spec.width


def _check(spec: ArchSpec) -> None:
  if spec.patch_size not in (1, 4):
    raise UserError(f"ArchSpec.patch_size = {spec.patch_size}: a ResNet stem is 4 (7x7/2 conv "
                    "+ 3x3/2 max-pool) or 1 (one 3x3 conv, the CIFAR stem)")
  if spec.class_token or spec.dist_token:
    raise UserError("ArchSpec: ResNet models have no class or distillation token "
                    "(class_token and dist_token must be False)")


RESNET_VARIANTS = {
    # name: (block kind, blocks per stage, stem width, stem patch)
    "resnet18": ("basic", (2, 2, 2, 2), 64, 4),
    "resnet34": ("basic", (3, 4, 6, 3), 64, 4),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64, 4),
    "resnet_test": ("basic", (1, 2), 8, 1),      # tests (CIFAR stem)
    "resnet_mini": ("basic", (2, 2, 2), 16, 1),  # CPU runs (CIFAR stem, 3 stages)
    "resnet_small": ("basic", (3, 3, 3), 16, 1),  # CIFAR studies (ResNet-20's layout, 1x1
                                                  # conv shortcuts): 6 candidate blocks
}


def resnet_spec(variant: str = "resnet18", *, image_size: int = 224,
                patch_size: int | None = None, num_classes: int = 1000, in_channels: int = 3,
                width: int | None = None, depths: tuple[int, ...] | None = None,
                **unused: Any) -> ArchSpec:
  """A dense ResNet spec: stage s has planes `width`·2^s (out ×4 for bottlenecks), its first block
  strided (except stage 0) and with a shortcut where the shape changes. `unused` are
  `dense_spec`'s transformer fields: set, they are an error."""
  if variant not in RESNET_VARIANTS:
    raise UserError(f"ResNet variant {variant!r} is unknown; allowed are "
                    f"{', '.join(RESNET_VARIANTS)}")
  for name, value in unused.items():
    if value:
      raise UserError(f"model.{name} = {value!r} does not apply to ResNet variant {variant!r}")
  kind, d0, w0, p0 = RESNET_VARIANTS[variant]
  depths, w = tuple(depths or d0), width or w0
  make, expansion = (BasicSpec, 1) if kind == "basic" else (BottleneckSpec, 4)
  layers, cin = [], w
  for s, depth in enumerate(depths):
    planes = w * 2**s
    out = planes * expansion
    for i in range(depth):
      stride = 2 if s and not i else 1
      layers.append(make(planes=planes, out_width=out, stride=stride,
                         shortcut=i == 0 and (stride != 1 or cin != out)))
      cin = out
  return ArchSpec(image_size=image_size, patch_size=patch_size or p0, width=w, num_heads=1,
                  num_classes=num_classes, in_channels=in_channels, layers=tuple(layers),
                  family="resnet", class_token=False)


def narrow_block(model, index: int, width: int, seed: int):
  """A copy of `model` with block `index`'s inner width cut to `width` channels, a seeded
  uniformly random subset (as DC-ViT's compressed MLPs keep random units)."""
  from jaxprune.surgery import edit_block, random_units  # noqa: PLC0415  (surgery builds models)
  b = model.spec.blocks[index]
  if not 1 <= width <= b.planes:
    raise ValueError(f"narrow_block: width {width} is outside 1..{b.planes} for block {index}")
  keep = random_units(b.planes, width, seed, index)
  return edit_block(model, index, lambda block: block.narrowed(keep),
                    model.spec.replace_block(index, planes=width))


def _stages(spec: ArchSpec) -> list[list[int]]:
  """Block indices per stage: a stage starts at the first block and at each strided block."""
  out: list[list[int]] = []
  for i, b in enumerate(spec.blocks):
    if not out or b.stride != 1:
      out.append([])
    out[-1].append(i)
  return out


registry.register_family(registry.Family(
    "resnet", block_compression=False, stages=_stages, narrow_block=narrow_block,
    presets=tuple(RESNET_VARIANTS), preset=resnet_spec,
    build=lambda spec, rngs, make_block=None: ResNet(spec, rngs=rngs, make_block=make_block),
    stem=_stem, check=_check, collection="layers", layer_kinds=("basic", "bottleneck"),
    final_norm=False,
    hf_fit=lambda spec: importlib.import_module("jaxprune.convert_resnet").hf_fit(spec),
    hf_save=lambda model: importlib.import_module("jaxprune.convert_resnet").hf_save(model),
    summary="ResNet: basic / bottleneck residual blocks with BatchNorm"))
