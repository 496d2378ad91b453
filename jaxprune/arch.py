"""ArchSpec: the JSON description every jaxprune model is built from.

A dense ViT/DeiT is the spec whose blocks are all `msa` at full MLP width. Pruning methods
produce other specs (conv attention, no attention, narrower MLPs, fewer blocks); a pruned model is
rebuilt from its spec alone, with no pruning code and no masks.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from jaxprune.errors import UserError

ATTN_KINDS = ("msa", "conv1", "conv3", "none")


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One transformer block.

  Attributes:
    attn: attention sub-layer kind. `msa`: multi-head self-attention; `conv1`/`conv3`: bottleneck
      convolution (k×k conv width→conv_dim, BatchNorm, ReLU, 1×1 conv_dim→width) on the patch grid;
      `none`: no attention sub-layer at all (SPViT's skip, DC-ViT's compressed block).
    heads: attention heads for `msa` (each of the model's head_dim); 0 otherwise.
    mlp: MLP hidden width; 0 = no MLP sub-layer.
    conv_dim: bottleneck width for `conv1`/`conv3`; 0 otherwise.
    mlp_bias: with `mlp` = 0 only: the block still adds a learned vector, the output bias of the
      MLP pruned away (a fully gated MLP computes fc2(0) = b_fc2, which pruning must keep).
  """

  attn: str = "msa"
  heads: int = 0
  mlp: int = 0
  conv_dim: int = 0
  mlp_bias: bool = False

  @property
  def kernel_size(self) -> int:
    return {"conv1": 1, "conv3": 3}.get(self.attn, 0)


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """A ViT: embedding, a list of blocks, final norm and head(s).

  Attributes:
    image_size: input height = width in pixels.
    patch_size: patch height = width; must divide image_size.
    width: embedding width C.
    num_heads: heads of the dense model; head_dim = width // num_heads.
    num_classes: classifier outputs.
    blocks: the blocks in order. A block dropped whole is simply absent.
    in_channels: input image channels.
    class_token: prepend a class token (the head reads it).
    dist_token: prepend a DeiT distillation token after the class token.
    dist_head: a second head on the distillation token; eval logits are the mean of both heads.
    ln_eps: LayerNorm epsilon (1e-6 timm/DeiT; 1e-12 in Hugging Face configs).
  """

  image_size: int
  patch_size: int
  width: int
  num_heads: int
  num_classes: int
  blocks: tuple[BlockSpec, ...]
  in_channels: int = 3
  class_token: bool = True
  dist_token: bool = False
  dist_head: bool = False
  ln_eps: float = 1e-6

  def __post_init__(self):
    object.__setattr__(self, "blocks", tuple(
        b if isinstance(b, BlockSpec) else BlockSpec(**b) for b in self.blocks))
    self.validate()

  # Derived sizes ---------------------------------------------------------------------------------
  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid**2

  @property
  def num_prefix(self) -> int:
    return int(self.class_token) + int(self.dist_token)

  @property
  def num_tokens(self) -> int:
    return self.num_patches + self.num_prefix

  @property
  def depth(self) -> int:
    return len(self.blocks)

  # Validation ------------------------------------------------------------------------------------
  def validate(self) -> None:
    """Raises `UserError` naming the field, its value and what is allowed."""
    for name in ("image_size", "patch_size", "width", "num_heads", "num_classes", "in_channels"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"ArchSpec.{name} = {value!r}: must be a positive integer")
    if self.image_size % self.patch_size:
      raise UserError(f"ArchSpec: image_size {self.image_size} is not divisible by "
                      f"patch_size {self.patch_size}")
    if self.width % self.num_heads:
      raise UserError(f"ArchSpec: width {self.width} is not divisible by "
                      f"num_heads {self.num_heads}")
    if not self.class_token:
      raise UserError("ArchSpec.class_token = False: only class-token models are supported")
    if self.dist_head and not self.dist_token:
      raise UserError("ArchSpec.dist_head = True needs dist_token = True")
    if not self.ln_eps > 0:
      raise UserError(f"ArchSpec.ln_eps = {self.ln_eps!r}: must be > 0")
    for i, b in enumerate(self.blocks):
      where = f"ArchSpec.blocks[{i}]"
      if b.attn not in ATTN_KINDS:
        raise UserError(f"{where}.attn = {b.attn!r}: allowed are {', '.join(ATTN_KINDS)}")
      for name in ("heads", "mlp", "conv_dim"):
        value = getattr(b, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
          raise UserError(f"{where}.{name} = {value!r}: must be an integer >= 0")
      if b.attn == "msa" and b.heads < 1:
        raise UserError(f"{where}: attn 'msa' needs heads >= 1, got {b.heads}")
      if b.attn != "msa" and b.heads:
        raise UserError(f"{where}: heads = {b.heads} is only allowed with attn 'msa'")
      if b.attn in ("conv1", "conv3") and b.conv_dim < 1:
        raise UserError(f"{where}: attn {b.attn!r} needs conv_dim >= 1, got {b.conv_dim}")
      if not isinstance(b.mlp_bias, bool) or (b.mlp_bias and b.mlp):
        raise UserError(f"{where}.mlp_bias = {b.mlp_bias!r}: must be a bool, and True only "
                        f"with mlp = 0 (got mlp = {b.mlp})")
      if b.attn not in ("conv1", "conv3") and b.conv_dim:
        raise UserError(f"{where}: conv_dim = {b.conv_dim} is only allowed with attn "
                        "'conv1' or 'conv3'")

  # Editing and serialisation ---------------------------------------------------------------------
  def replace(self, **changes: Any) -> ArchSpec:
    return dataclasses.replace(self, **changes)

  def replace_block(self, index: int, **changes: Any) -> ArchSpec:
    blocks = list(self.blocks)
    blocks[index] = dataclasses.replace(blocks[index], **changes)
    return self.replace(blocks=tuple(blocks))

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["blocks"] = [dataclasses.asdict(b) for b in self.blocks]
    return d

  def to_json(self, indent: int | None = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise UserError(f"ArchSpec: unknown fields {unknown}; allowed are {sorted(fields)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in d and f.default is dataclasses.MISSING)
    if missing:
      raise UserError(f"ArchSpec: missing fields {missing}")
    block_fields = {f.name for f in dataclasses.fields(BlockSpec)}
    blocks = []
    for i, b in enumerate(d["blocks"]):
      bad = sorted(set(b) - block_fields)
      if bad:
        raise UserError(f"ArchSpec.blocks[{i}]: unknown fields {bad}; "
                        f"allowed are {sorted(block_fields)}")
      blocks.append(BlockSpec(**b))
    return cls(**{**d, "blocks": tuple(blocks)})

  @classmethod
  def from_json(cls, text: str) -> ArchSpec:
    return cls.from_dict(json.loads(text))


# Presets -----------------------------------------------------------------------------------------
_VARIANTS = {
    # name: (width, depth, heads, mlp_ratio)
    "deit_tiny": (192, 12, 3, 4),
    "deit_small": (384, 12, 6, 4),
    "deit_base": (768, 12, 12, 4),
    "test_micro": (32, 2, 2, 2),
    "test_small": (64, 4, 2, 2),
}
VARIANTS: Sequence[str] = tuple(_VARIANTS)


def dense_spec(variant: str = "deit_tiny", *, image_size: int = 224, patch_size: int = 16,
               num_classes: int = 1000, in_channels: int = 3, depth: int | None = None,
               width: int | None = None, num_heads: int | None = None,
               mlp_ratio: float | None = None, distilled: bool = False,
               ln_eps: float = 1e-6) -> ArchSpec:
  """A dense ViT/DeiT spec from a named variant, any field overridable.

  Args:
    variant: one of `VARIANTS` (deit_tiny/small/base: 192/384/768 wide, 3/6/12 heads, depth 12,
      MLP x4; test_micro/test_small for tests and CPU runs).
    distilled: DeiT-distilled: distillation token and head.
  """
  if variant not in _VARIANTS:
    raise UserError(f"model variant {variant!r} is unknown; allowed are {', '.join(VARIANTS)}")
  w, dep, h, r = _VARIANTS[variant]
  w, dep, h, r = width or w, depth or dep, num_heads or h, mlp_ratio or r
  mlp = int(round(w * r))
  return ArchSpec(image_size=image_size, patch_size=patch_size, width=w, num_heads=h,
                  num_classes=num_classes, in_channels=in_channels,
                  blocks=tuple(BlockSpec("msa", heads=h, mlp=mlp) for _ in range(dep)),
                  dist_token=distilled, dist_head=distilled, ln_eps=ln_eps)
