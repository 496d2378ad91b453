"""ArchSpec: the JSON description every jaxprune model is built from.

A model is a stem (patch embedding), a sequence of layers and a head. Each layer kind is a
dataclass here that knows, from the `Shape` flowing into it, its output shape, its MACs and its
parameters; accounting, surgery and the methods walk the sequence (`ArchSpec.walk`) instead of
assuming one width and one token count. Families:

  "vit"   ViT/DeiT: class (+distillation) token, learned position embedding, `block` layers at
          one width with global attention, head(s) on the prefix tokens.
  "swin"  Swin: patch embedding + LayerNorm, no prefix tokens and no position embedding, `block`
          layers with (shifted) window attention and relative position bias, `merge` layers
          (patch merging) between stages, average-pooled head.

A dense model is the spec whose blocks are all `msa` at full MLP width. Pruning methods produce
other specs (conv attention, no attention, narrower MLPs, fewer blocks); a pruned model is
rebuilt from its spec alone, with no pruning code and no masks.

File format 2 writes `{"format": 2, "family": ..., "layers": [{"kind": "block", ...}, ...]}`.
Format 1 files (no "format" key, a "blocks" list: every model exported before format 2) still
load, as ViTs.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Iterator, Sequence

from jaxprune import registry
from jaxprune.errors import UserError

FORMAT = 2
# BlockSpec fields an attention kind may use: "hard" ones are refused where the kind does not use
# them, "soft" ones (dimensions that mean nothing without it) are normalised to 0.
HARD_FIELDS = ("heads", "conv_dim")
SOFT_FIELDS = ("head_dim", "window", "shift")


def _padded(grid: int, window: int) -> int:
  """`grid` rounded up to a multiple of `window` (windowed attention zero-pads the grid)."""
  return -(-grid // window) * window


def mlp_macs(tokens, width, hidden, present=None, norm: int = 1):
  """MACs of an MLP sub-layer (fc1, fc2: 2·N·C·H) and its LayerNorm (`norm`·N·C when `present`,
  default: when hidden > 0). The one copy of the formula; works on traced values too (SPViT's
  differentiable budget passes the mask's sum and max)."""
  present = (hidden > 0) if present is None else present
  return 2 * tokens * width * hidden + norm * tokens * width * present


def mlp_params(width: int, hidden: int) -> int:
  """Parameters of an MLP sub-layer with its LayerNorm (0 when hidden = 0)."""
  return 2 * width + 2 * width * hidden + hidden + width if hidden else 0


@dataclasses.dataclass(frozen=True)
class Shape:
  """What flows between layers: patch tokens (plus prefix tokens) at a width. The patches are a
  square `grid` until token merging or pruning (`BlockSpec.merge_r`, `BlockSpec.keep_tokens`)
  removes `merged` of them: after that they are a set with no layout, which layers that need the
  grid (convolutions, windows, patch merging) refuse."""

  grid: int
  width: int
  prefix: int = 0
  merged: int = 0

  @property
  def patches(self) -> int:
    return self.grid**2 - self.merged

  @property
  def tokens(self) -> int:
    return self.patches + self.prefix


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`, at its input width.

  Attributes:
    attn: attention sub-layer kind. `msa`: multi-head self-attention; `conv1`/`conv3`: bottleneck
      convolution (k×k conv width→conv_dim, BatchNorm, ReLU, 1×1 conv_dim→width) on the patch grid;
      `none`: no attention sub-layer at all (SPViT's skip, DC-ViT's compressed block);
      `norm`: the sub-layer is its LayerNorm alone, `x + norm1(x)` — the skip as the SPViT
      reference's fine-tuning code computes it, so its models rebuild exactly (ours is `none`).
    heads: attention heads for `msa`; 0 otherwise.
    mlp: MLP hidden width; 0 = no MLP sub-layer.
    conv_dim: bottleneck width for `conv1`/`conv3`; 0 otherwise.
    mlp_bias: with `mlp` = 0 only: the block still adds a learned vector, the output bias of the
      MLP pruned away (a fully gated MLP computes fc2(0) = b_fc2, which pruning must keep).
    head_dim: width of each head; 0 = the model's `width // num_heads` (ViT files).
      head_dim is set to 0 in a block without `msa`, window and shift in one without attention.
    window: `msa` inside non-overlapping window × window patches (Swin), with a learned relative
      position bias; 0 = global attention (ViT). With `conv1`/`conv3` (Swin only): the
      convolution runs inside each window, zero-padded at window borders, as SPViT's search on
      Swin computes it; 0 = on the whole grid.
    shift: cyclic shift of the windows (Swin's shifted windows, with their attention mask; a
      windowed convolution sees the shifted windows, with no mask); 0 = none.
    merge_r: token merging (ToMe, `jaxprune.models.tome`): tokens merged away between the
      attention and the MLP, by bipartite soft matching on the keys (clipped to half the
      unprotected tokens); `msa` with global attention only. 0 = none.
    keep_tokens: token pruning (ViT-Slim's token masks, `jaxprune.models.slim`): the block
      first keeps only these of its input's patch tokens (increasing indices into them; class
      and distillation tokens always stay), so they are gone for every later block. () = all.
      Blocks without the patch grid in a family that allows token merging, before any merging.
  """

  kind: ClassVar[str] = "block"
  is_block: ClassVar[bool] = True
  attn: str = "msa"
  heads: int = 0
  mlp: int = 0
  conv_dim: int = 0
  mlp_bias: bool = False
  head_dim: int = 0
  window: int = 0
  shift: int = 0
  merge_r: int = 0
  keep_tokens: tuple[int, ...] = ()

  def __post_init__(self):
    if isinstance(self.keep_tokens, list):  # read from JSON
      object.__setattr__(self, "keep_tokens", tuple(self.keep_tokens))

  @property
  def kernel_size(self) -> int:
    return {"conv1": 1, "conv3": 3}.get(self.attn, 0)

  @property
  def needs_grid(self) -> bool:
    """Whether the block reads the patch layout (a convolution or windows), which token
    merging destroys."""
    return bool(self.kernel_size or self.window)

  def pruned(self, shape: Shape) -> Shape:
    """The shape the block computes at: its input `shape` less the patches `keep_tokens` drops."""
    if not self.keep_tokens:
      return shape
    return dataclasses.replace(shape, merged=shape.merged + shape.patches - len(self.keep_tokens))

  def merged(self, shape: Shape) -> int:
    """Tokens this block's merging removes at input `shape` (`merge_r`, clipped)."""
    return max(0, min(self.merge_r, self.pruned(shape).patches // 2)) if self.merge_r else 0

  def out_shape(self, shape: Shape) -> Shape:
    kept = self.pruned(shape)
    if not self.merge_r:
      return kept
    return dataclasses.replace(kept, merged=kept.merged + self.merged(shape))

  def attn_tokens(self, shape: Shape) -> int:
    """Tokens the attention projections run on (a windowed grid is zero-padded to the window)."""
    if self.window:
      return _padded(shape.grid, self.window)**2
    return self.pruned(shape).tokens

  def conv_positions(self, shape: Shape) -> int:
    """Grid positions a convolution in the attention slot runs on (the padded grid in windows)."""
    return _padded(shape.grid, self.window)**2 if self.window else shape.patches

  def macs(self, shape: Shape, head_dim: int, attention_matmuls: bool = True,
           norm: int = 1) -> int:
    """Multiply-adds per image (accounting's conventions) at input `shape`; `norm` MACs per
    LayerNorm element (1 here; thop-style counters count 4). The attention sub-layer's count
    is its kind's (`registry.attention`)."""
    out = self.out_shape(shape)
    shape = self.pruned(shape)  # token pruning: the gather costs no MACs
    attn = registry.attention(self.attn).macs(self, shape, head_dim, attention_matmuls, norm)
    if out != shape:  # ToMe: every even token's key scored against every odd one's, and the r
      n, r = shape.tokens, shape.tokens - out.tokens  # merged (tokens and sizes) added by matmul
      attn += (n + 1) // 2 * (n // 2) * head_dim + r * (n // 2) * (shape.width + 1)
    return attn + mlp_macs(out.tokens, shape.width, self.mlp, norm=norm)

  def params(self, shape: Shape, head_dim: int) -> int:
    """Trainable parameters (BatchNorm running statistics excluded)."""
    attn = registry.attention(self.attn).params(self, shape, head_dim)
    bias = shape.width if self.mlp_bias and not self.mlp else 0
    return attn + mlp_params(shape.width, self.mlp) + bias


@dataclasses.dataclass(frozen=True)
class MergeSpec:
  """Swin patch merging: each 2×2 group of neighbouring tokens concatenated (4·C), LayerNorm,
  linear 4·C → out_width without bias; the grid halves (an odd grid is zero-padded first)."""

  kind: ClassVar[str] = "merge"
  is_block: ClassVar[bool] = False
  out_width: int = 0

  def check(self, where: str, shape: Shape) -> None:
    _int_fields(where, self, ("out_width",), 1)
    if shape.merged:
      raise UserError(f"{where}: patch merging needs the patch grid, which token merging in an "
                      f"earlier block removed")

  def out_shape(self, shape: Shape) -> Shape:
    return Shape((shape.grid + 1) // 2, self.out_width, shape.prefix)

  def macs(self, shape: Shape, head_dim: int = 0, attention_matmuls: bool = True,
           norm: int = 1) -> int:
    n, c4 = self.out_shape(shape).patches, 4 * shape.width
    return norm * n * c4 + n * c4 * self.out_width

  def params(self, shape: Shape, head_dim: int = 0) -> int:
    c4 = 4 * shape.width
    return 2 * c4 + c4 * self.out_width


registry.register_layer(BlockSpec)
registry.register_layer(MergeSpec)
LayerSpec = BlockSpec | MergeSpec


def _int_fields(where: str, obj: Any, names: Sequence[str], minimum: int) -> None:
  for name in names:
    value = getattr(obj, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
      raise UserError(f"{where}.{name} = {value!r}: must be {what}")


def _merging_kinds() -> list[str]:
  return [k for k in registry.attention_kinds() if registry.attention(k).merges]


def _merging_families() -> list[str]:
  return [f for f in registry.families() if registry.family(f).token_merging]


def normalised(layer):
  """The layer without dimensions that mean nothing for its kind (see `ArchSpec`): the soft
  fields (`SOFT_FIELDS`) its attention kind does not use. A 1×1 conv is the same function
  inside (shifted, padded) windows or on the whole grid, so a `conv1` block never keeps them
  (nor pays for their padding, rolls and partitions)."""
  if not isinstance(layer, BlockSpec) or layer.attn not in registry.attention_kinds():
    return layer
  used = registry.attention(layer.attn).fields
  changes = {f: 0 for f in SOFT_FIELDS if f not in used and getattr(layer, f)}
  return dataclasses.replace(layer, **changes) if changes else layer


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """A vision transformer: stem, a sequence of layers, final norm and head(s).

  Attributes:
    image_size: input height = width in pixels.
    patch_size: patch height = width; must divide image_size.
    width: embedding width C (the width of the first layer; `merge` layers change it).
    num_heads: heads at the embedding width; sets the default head_dim = width // num_heads.
    num_classes: classifier outputs.
    layers: `BlockSpec` / `MergeSpec` in order. A block dropped whole is simply absent.
    in_channels: input image channels.
    family: "vit" or "swin" (see the module docstring).
    class_token: prepend a class token (the head reads it); ViT only, where it is required.
    dist_token: prepend a DeiT distillation token after the class token.
    dist_head: a second head on the distillation token; eval logits are the mean of both heads.
    ln_eps: LayerNorm epsilon (1e-6 timm/DeiT; 1e-12 in Hugging Face ViT configs; 1e-5 Swin).
  """

  image_size: int
  patch_size: int
  width: int
  num_heads: int
  num_classes: int
  layers: tuple[LayerSpec, ...]
  in_channels: int = 3
  family: str = "vit"
  class_token: bool = True
  dist_token: bool = False
  dist_head: bool = False
  ln_eps: float = 1e-6

  def __post_init__(self):
    # Dimensions that mean nothing for the block's kind are dropped, so that a block turned into
    # conv or none by any method compares equal to one written directly: head_dim without msa,
    # window/shift without an attention sub-layer.
    object.__setattr__(self, "layers", tuple(normalised(layer) for layer in self.layers))
    self.validate()

  # Derived sizes ---------------------------------------------------------------------------------
  @property
  def blocks(self) -> tuple[BlockSpec, ...]:
    """The transformer blocks, in order (every layer but the `merge` ones)."""
    return tuple(layer for layer in self.layers if layer.is_block)

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def grid(self) -> int:
    """The stem's output grid, ⌈image_size / patch_size⌉ (a patch embedding needs divisibility:
    its family checks it; a strided conv stem pads)."""
    return -(-self.image_size // self.patch_size)

  @property
  def num_patches(self) -> int:
    return self.grid**2

  @property
  def num_prefix(self) -> int:
    return int(self.class_token) + int(self.dist_token)

  @property
  def num_tokens(self) -> int:
    """Tokens after the stem (what the first layer sees)."""
    return self.num_patches + self.num_prefix

  @property
  def depth(self) -> int:
    return len(self.blocks)

  @property
  def stem_shape(self) -> Shape:
    return Shape(self.grid, self.width, self.num_prefix)

  def head_dim_of(self, block: BlockSpec) -> int:
    return block.head_dim or self.head_dim

  def walk(self) -> Iterator[tuple[LayerSpec, Shape]]:
    """Each layer with the shape flowing into it."""
    shape = self.stem_shape
    for layer in self.layers:
      yield layer, shape
      shape = layer.out_shape(shape)

  @property
  def out_shape(self) -> Shape:
    """The shape after the last layer (what the final norm and head see)."""
    shape = self.stem_shape
    for layer in self.layers:
      shape = layer.out_shape(shape)
    return shape

  def block_shapes(self) -> tuple[Shape, ...]:
    """The input shape of every block (in `blocks` order)."""
    return tuple(s for layer, s in self.walk() if layer.is_block)

  # Validation ------------------------------------------------------------------------------------
  def validate(self) -> None:
    """Raises `UserError` naming the field, its value and what is allowed: the generic rules
    here, then the family's own (`registry.Family.check`)."""
    _int_fields("ArchSpec", self, ("image_size", "patch_size", "width", "num_heads",
                                   "num_classes", "in_channels"), 1)
    family = registry.family(self.family)
    if self.width % self.num_heads:
      raise UserError(f"ArchSpec: width {self.width} is not divisible by "
                      f"num_heads {self.num_heads}")
    if self.dist_head and not self.dist_token:
      raise UserError("ArchSpec.dist_head = True needs dist_token = True")
    if not self.ln_eps > 0:
      raise UserError(f"ArchSpec.ln_eps = {self.ln_eps!r}: must be > 0")
    block_index, merging = 0, None
    for i, (layer, shape) in enumerate(self.walk()):
      where = f"ArchSpec.layers[{i}]"
      kind = getattr(layer, "kind", None)
      if kind not in family.layer_kinds:
        homes = [f for f in registry.families() if kind in registry.family(f).layer_kinds]
        raise UserError(f"{where}: {kind or layer!r} layers are only allowed in family "
                        f"{' or '.join(repr(f) for f in homes) or '(none)'}; family "
                        f"{self.family!r} allows {', '.join(family.layer_kinds)}")
      if isinstance(layer, BlockSpec):
        where = f"ArchSpec.blocks[{block_index}]"
        self._validate_block(where, layer, shape, family)
        if layer.keep_tokens and merging is not None:
          raise UserError(f"{where}.keep_tokens: token pruning needs the patch order, which "
                          f"merging in block {merging} (merge_r) removed; merge only from the "
                          f"last block that prunes tokens on")
        if layer.merge_r and merging is None:
          merging = block_index
      else:
        layer.check(where, shape)
      block_index += layer.is_block
    family.check(self)

  def _validate_block(self, where: str, b: BlockSpec, shape: Shape, family) -> None:
    if b.attn not in registry.attention_kinds():
      raise UserError(f"{where}.attn = {b.attn!r}: allowed are "
                      f"{', '.join(registry.attention_kinds())}")
    _int_fields(where, b, ("heads", "mlp", "conv_dim", "head_dim", "window", "shift",
                           "merge_r"), 0)
    kind = registry.attention(b.attn)
    for field in HARD_FIELDS:
      value = getattr(b, field)
      if field in kind.needs and value < 1:
        raise UserError(f"{where}: attn {b.attn!r} needs {field} >= 1, got {value}")
      if field not in kind.fields and value:
        users = [k for k in registry.attention_kinds() if field in registry.attention(k).fields]
        raise UserError(f"{where}: {field} = {value} is only allowed with attn "
                        f"{' or '.join(repr(k) for k in users)}")
    if not isinstance(b.mlp_bias, bool) or (b.mlp_bias and b.mlp):
      raise UserError(f"{where}.mlp_bias = {b.mlp_bias!r}: must be a bool, and True only "
                      f"with mlp = 0 (got mlp = {b.mlp})")
    if "head_dim" in kind.fields and not b.head_dim and shape.width != self.width:
      raise UserError(f"{where}: head_dim is needed at width {shape.width} (the default "
                      f"width // num_heads only holds at width {self.width})")
    if (b.window or b.shift) and not family.windows:
      allowed = [f for f in registry.families() if registry.family(f).windows]
      raise UserError(f"{where}: window/shift are only allowed in family "
                      f"{' or '.join(repr(f) for f in allowed)}")
    if b.shift and not b.shift < b.window:
      raise UserError(f"{where}.shift = {b.shift}: must be < window ({b.window})")
    if b.merge_r and (not kind.merges or b.needs_grid or not family.token_merging):
      raise UserError(f"{where}.merge_r = {b.merge_r}: token merging needs attn "
                      f"{' or '.join(repr(k) for k in _merging_kinds())} with global attention "
                      f"(window 0) in a family that allows it "
                      f"({', '.join(_merging_families())}); "
                      f"this block is {b.attn!r}, window {b.window}, family {self.family!r}")
    keep = b.keep_tokens
    if keep:
      if not isinstance(keep, tuple) or not all(isinstance(k, int) and not isinstance(k, bool)
                                                for k in keep):
        raise UserError(f"{where}.keep_tokens = {keep!r}: must be a list of patch indices")
      if not family.token_merging or b.needs_grid:
        raise UserError(f"{where}.keep_tokens: token pruning needs a block without the patch "
                        f"grid (no convolution, window 0) in a family that allows it "
                        f"({', '.join(_merging_families())}); this block is {b.attn!r}, window "
                        f"{b.window}, family {self.family!r}")
      if list(keep) != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= shape.patches:
        raise UserError(f"{where}.keep_tokens = {list(keep)[:8]}{'...' if len(keep) > 8 else ''}"
                        f": must be increasing indices in [0, {shape.patches}) (the block's "
                        f"input patches)")
    if (shape.merged or keep) and b.needs_grid:
      raise UserError(f"{where}: attn {b.attn!r} (window {b.window}) needs the patch grid, "
                      f"which token merging in an earlier block removed; merge only after the "
                      f"last convolution / windowed block")

  # Editing and serialisation ---------------------------------------------------------------------
  def replace(self, **changes: Any) -> ArchSpec:
    """`dataclasses.replace`, plus `blocks=`: the new blocks take the old ones' places (any
    number of them when the spec has no `merge` layers, one for one otherwise)."""
    if "blocks" in changes:
      blocks = tuple(changes.pop("blocks"))
      if any(not layer.is_block for layer in self.layers):
        if len(blocks) != self.depth:
          raise UserError(f"ArchSpec.replace(blocks=...): {len(blocks)} blocks for a spec with "
                          f"{self.depth} and merge layers; use drop_blocks to remove blocks")
        it = iter(blocks)
        changes["layers"] = tuple(next(it) if layer.is_block else layer
                                  for layer in self.layers)
      else:
        changes["layers"] = blocks
    return dataclasses.replace(self, **changes)

  def replace_block(self, index: int, **changes: Any) -> ArchSpec:
    blocks = list(self.blocks)
    blocks[index] = dataclasses.replace(blocks[index], **changes)
    return self.replace(blocks=tuple(blocks))

  def drop_blocks(self, indices: Sequence[int]) -> ArchSpec:
    """The spec without the given blocks (indices into `blocks`); merge layers stay."""
    drop, out, i = set(indices), [], 0
    for layer in self.layers:
      if layer.is_block:
        i += 1
        if i - 1 in drop:
          continue
      out.append(layer)
    return dataclasses.replace(self, layers=tuple(out))

  def to_dict(self) -> dict[str, Any]:
    d = {"format": FORMAT}
    d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
    d["layers"] = [{"kind": layer.kind, **{k: list(v) if isinstance(v, tuple) else v
                                           for k, v in dataclasses.asdict(layer).items()}}
                   for layer in self.layers]  # as JSON reads it back (tuples as lists)
    return d

  def to_json(self, indent: int | None = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
    """Reads format 2, and format 1 (no "format" key, ViT "blocks") as written before."""
    d = dict(d)
    version = d.pop("format", 1)
    if version == 1:
      if "layers" in d or not isinstance(d.get("blocks"), list):
        raise UserError("ArchSpec: a file without \"format\" must be format 1, with a "
                        "\"blocks\" list")
      d["layers"] = [{"kind": "block", **b} if isinstance(b, dict) else b
                     for b in d.pop("blocks")]
    elif version != FORMAT:
      raise UserError(f"ArchSpec format {version!r}: this jaxprune reads formats 1 and {FORMAT}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise UserError(f"ArchSpec: unknown fields {unknown}; allowed are {sorted(fields)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in d and f.default is dataclasses.MISSING)
    if missing:
      raise UserError(f"ArchSpec: missing fields {missing}")
    if not isinstance(d["layers"], list):
      raise UserError(f"ArchSpec.layers = {d['layers']!r}: must be a list")
    layers, kinds = [], registry.layer_kinds()
    for i, layer in enumerate(d["layers"]):
      if not isinstance(layer, dict) or layer.get("kind") not in kinds:
        raise UserError(f"ArchSpec.layers[{i}]: must be an object with \"kind\" one of "
                        f"{', '.join(kinds)}")
      layer = dict(layer)
      kind = kinds[layer.pop("kind")]
      allowed = {f.name for f in dataclasses.fields(kind)}
      bad = sorted(set(layer) - allowed)
      if bad:
        raise UserError(f"ArchSpec.layers[{i}]: unknown fields {bad} for kind "
                        f"{kind.kind!r}; allowed are {sorted(allowed)}")
      layers.append(kind(**layer))
    return cls(**{**d, "layers": tuple(layers)})

  @classmethod
  def from_json(cls, text: str) -> ArchSpec:
    return cls.from_dict(json.loads(text))


# Presets -----------------------------------------------------------------------------------------
def variants() -> tuple[str, ...]:
  """Every named preset of every registered family (`registry.Family.presets`)."""
  return tuple(v for f in registry.families() for v in registry.family(f).presets)


def dense_spec(variant: str = "deit_tiny", *, image_size: int = 224, patch_size: int | None = None,
               num_classes: int = 1000, in_channels: int = 3, depth: int | None = None,
               width: int | None = None, num_heads: int | None = None,
               mlp_ratio: float | None = None, distilled: bool = False,
               ln_eps: float | None = None, window: int | None = None) -> ArchSpec:
  """A dense spec from a named variant of any family, any field overridable; the family that
  owns the variant builds it (`registry.Family.preset`) and refuses overrides it has no use for.

  Args:
    variant: one of `variants()` (ViT: deit_tiny/small/base, test_micro/test_small; Swin:
      swin_tiny/small/base, swin_test/swin_mini).
    patch_size: default the family's (16 ViT, 4 Swin).
    depth, num_heads, distilled: ViT only (Swin stages: `models.swin.swin_spec`).
    window: Swin only, the attention window (default: the variant's).
    ln_eps: default the family's (1e-6 ViT, 1e-5 Swin).
  """
  for name in registry.families():
    family = registry.family(name)
    if variant in family.presets:
      return family.preset(variant, image_size=image_size, patch_size=patch_size,
                           num_classes=num_classes, in_channels=in_channels, depth=depth,
                           width=width, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           distilled=distilled, ln_eps=ln_eps, window=window)
  raise UserError(f"model variant {variant!r} is unknown; allowed are {', '.join(variants())}")


def swin_spec(*args, **kwargs) -> ArchSpec:
  """`jaxprune.models.swin.swin_spec` (a Swin spec by stages), kept here for old imports."""
  from jaxprune.models.swin import swin_spec as make  # noqa: PLC0415
  return make(*args, **kwargs)
