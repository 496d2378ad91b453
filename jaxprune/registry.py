"""The registries that make a new backbone or layer kind one file: model families and the
attention kinds of a transformer block.

A family (`Family`) owns everything that differs between backbones: how its model is built from an
ArchSpec, what its stem costs, which layer kinds and fields its specs allow, where its blocks live
in the model state, and the trainable sets methods ask for (`trainable_upto`). An attention kind
(`AttentionKind`) owns the attention sub-layer of a `block`: its checks, MACs, parameters and
module. Core code (`arch`, `accounting`, `surgery`, the methods) asks the registry and never tests
a family or kind by name.

Families and kinds register themselves where they are defined (`jaxprune.models.vit`,
`jaxprune.models.swin`, `jaxprune.models.blocks`); a lookup imports `jaxprune.models` first, so
`ArchSpec` files of any registered family load without the caller importing the models.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from jaxprune.errors import UserError

_FAMILIES: dict[str, "Family"] = {}
_ATTENTION: dict[str, "AttentionKind"] = {}
_LAYERS: dict[str, type] = {}
_loaded = False


def _load() -> None:
  """Imports the modules that register the built-in families and kinds (once)."""
  global _loaded
  if not _loaded:
    _loaded = True
    importlib.import_module("jaxprune.models")


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family.

  Attributes:
    name: the `ArchSpec.family` value.
    build: `build(spec, rngs, make_block) -> nnx.Module`, the model (`make_block(spec, layer,
      index, rngs, shape)` builds each block; None = the family's own).
    stem: `stem(spec, norm) -> (MACs, params)` of what comes before the first layer (patch
      embedding, tokens, position embedding, patch norm), `norm` MACs per LayerNorm element.
    check: `check(spec)` raises `UserError` for what the family does not allow.
    collection: the attribute of the model (and key of its state) holding its layers.
    layer_kinds: the `LayerSpec` kinds its `layers` may hold.
    windows: blocks may have window / shift (windowed attention).
    final_norm: a LayerNorm before the head (transformers; a ResNet has none).
    block_unit: blocks per compression unit of block-level methods (DC-ViT, PRACTISE): Swin's
      regular + shifted pair is one unit, as in the DC-ViT paper.
    block_compression: its blocks have the attention + MLP that DC-ViT compresses (attention
      removed, MLP narrowed); without it, block-level methods only drop whole blocks, and never
      the first block of a stage (a CNN's, which changes the shape).
    stages: `stages(spec) -> [[block index, ...], ...]`; None = blocks between non-block layers
      (Swin's patch merging; a ViT has one stage).
    narrow_block: `narrow_block(model, index, width, seed) -> model`: a copy with block
      `index`'s inner width cut to `width` seeded random channels (DC-ViT's `structure =
      "narrow"`, on families without block compression); None = not offered.
    token_merging: its blocks may merge tokens (`BlockSpec.merge_r`, ToMe): its stem and head
      do not need the patch grid after the blocks.
    hf_fit: `hf_fit(spec) -> why not | None`: whether a model fits the family's Hugging Face
      config (the `hf` export); None = the family has no Hugging Face export.
    hf_save: `hf_save(model, out) -> (config dict, {name: array})`: the `save_pretrained`
      config and weights (torch layouts) of a model that fits.
    presets: the named variants the family builds (`arch.dense_spec`, `model.variant`).
    preset: `preset(variant, **overrides) -> ArchSpec` (the overrides of `arch.dense_spec`);
      refuses the ones it has no use for.
    summary: one line for help texts.
  """

  name: str
  build: Callable[..., Any]
  stem: Callable[[Any, int], tuple[int, int]]
  check: Callable[[Any], None]
  collection: str
  layer_kinds: tuple[str, ...] = ("block",)
  windows: bool = False
  final_norm: bool = True
  block_unit: int = 1
  block_compression: bool = True
  stages: Callable[[Any], list[list[int]]] | None = None
  narrow_block: Callable[..., Any] | None = None
  token_merging: bool = False
  hf_fit: Callable[[Any], str | None] | None = None
  hf_save: Callable[[Any, str], tuple[dict, dict]] | None = None
  presets: tuple[str, ...] = ()
  preset: Callable[..., Any] | None = None
  summary: str = ""

  def slots(self, spec) -> list[int]:
    """The index of each of `spec.blocks` in the family's layer collection."""
    return [j for j, layer in enumerate(spec.layers) if layer.is_block]

  def trainable_upto(self, spec, last: int):
    """An NNX filter of the weights of blocks 0..`last`, the layers between them (and those
    right after block `last`, before the next block), the stem and the final norm: the trainable
    set of feature mimicking whose last trained block is `last`. Later blocks and the head(s)
    are frozen (they still pass gradients back)."""
    from flax import nnx  # noqa: PLC0415
    slots = self.slots(spec)
    upto = slots[last + 1] if last + 1 < len(slots) else len(spec.layers)
    coll = self.collection

    def keep(path, value) -> bool:
      top = str(path[0])
      if top == coll:
        return int(path[1]) < upto
      return not top.startswith("head")

    return nnx.All(nnx.Param, keep)

  def trainable_blocks(self, spec, blocks):
    """An NNX filter of the weights of `blocks` (indices into `spec.blocks`) only."""
    from flax import nnx  # noqa: PLC0415
    slots, coll = set(self.slots(spec)[b] for b in blocks), self.collection
    return nnx.All(nnx.Param, lambda path, value: str(path[0]) == coll and int(path[1]) in slots)


@dataclasses.dataclass(frozen=True)
class AttentionKind:
  """The attention sub-layer of a transformer block (`BlockSpec.attn`).

  Attributes:
    name: the `BlockSpec.attn` value.
    macs: `macs(block, shape, head_dim, attention_matmuls, norm) -> int` with its LayerNorm.
    params: `params(block, shape, head_dim) -> int` with its LayerNorm.
    build: `build(spec, block, shape, rngs) -> (norm1, attn)` modules (either may be None);
      `attn(y, train=...)` maps the normalised tokens to the residual branch.
    fields: the `BlockSpec` fields it uses among heads, conv_dim, head_dim, window, shift
      (others are normalised away or refused).
    needs: fields that must be >= 1.
    merges: a block of this kind may merge tokens (`BlockSpec.merge_r`, ToMe): its module
      offers `attend(x, size) -> (output, keys averaged over heads)`.
    summary: one line for docs and errors.
  """

  name: str
  macs: Callable[..., int]
  params: Callable[..., int]
  build: Callable[..., tuple[Any, Any]]
  fields: tuple[str, ...] = ()
  needs: tuple[str, ...] = ()
  merges: bool = False
  summary: str = ""


def register_family(family: Family) -> Family:
  _FAMILIES[family.name] = family
  return family


def register_attention(kind: AttentionKind) -> AttentionKind:
  _ATTENTION[kind.name] = kind
  return kind


def register_layer(cls: type) -> type:
  """Registers a `LayerSpec` dataclass under its `kind` (the JSON "kind" of a layer)."""
  _LAYERS[cls.kind] = cls
  return cls


def family(name: str) -> Family:
  _load()
  if name not in _FAMILIES:
    raise UserError(f"ArchSpec.family = {name!r}: allowed are {', '.join(families())}")
  return _FAMILIES[name]


def families() -> tuple[str, ...]:
  _load()
  return tuple(_FAMILIES)


def attention(name: str) -> AttentionKind:
  _load()
  if name not in _ATTENTION:
    raise UserError(f"attention kind {name!r}: allowed are {', '.join(attention_kinds())}")
  return _ATTENTION[name]


def attention_kinds() -> tuple[str, ...]:
  _load()
  return tuple(_ATTENTION)


def layer_kinds() -> dict[str, type]:
  _load()
  return dict(_LAYERS)
