"""DC-ViT's structure from a MACs target: how many blocks to compress, and by how much.

With R = MACs to remove, M_attn = one block's attention sub-layer (with its LayerNorm) and
M_mlp = one block's MLP matmuls: k = ceil(R / (M_attn + M_mlp)) blocks, each with its MLP cut by
rd = ((R − k·M_attn) / k) / M_mlp, i.e. hidden width int(H·(1 − rd)) rounded down to a multiple
of `width_multiple` (CPU-friendly; the MACs then land at or just below the target). A compressed
block keeps its MLP LayerNorm, so matching "n blocks dropped" needs k = n + 1, as in DC-ViT.
Any R from M_attn up to what the candidate blocks hold is reachable: the family is dense.
`dcvit.macs_convention = "reference"` counts every MAC here as the reference's thop counter
does (no attention matmuls, 4 per LayerNorm element), which reproduces the structures its
`flops2structure` derives; targets then mean ratios of MACs counted that way (the MACs jaxprune
prints stay the full count).

Units: on Swin the paper compresses (and PRACTISE drops) pairs of consecutive blocks — a regular
and a shifted-window block — so a candidate is a *unit* of `group` consecutive blocks of one
stage, and the rule above counts units, each costing `group` blocks. Candidates come from the
stage with the most blocks (all of one cost: Swin-T/S/B's third stage; a ViT's only stage) and
never include the model's first or last block; patch merging is never a candidate.
"""

from __future__ import annotations

import dataclasses
import math


from jaxprune import accounting, registry
from jaxprune.arch import ArchSpec, mlp_macs
from jaxprune.errors import UserError
from jaxprune.surgery import edit_block, random_units


@dataclasses.dataclass(frozen=True)
class Structure:
  target_macs: int
  k: int          # units (blocks, or pairs on Swin) to compress
  rd: float       # fraction of MLP MACs removed in each
  hidden: int     # MLP width kept in each compressed block


def stages(spec: ArchSpec) -> list[list[int]]:
  """Block indices per stage: the family's (`Family.stages`), by default the blocks between
  non-block layers (patch merging; a ViT has one stage)."""
  family = registry.family(spec.family)
  if family.stages is not None:
    return family.stages(spec)
  out, current, i = [], [], 0
  for layer in spec.layers:
    if layer.is_block:
      current.append(i)
      i += 1
    elif current:
      out.append(current)
      current = []
  return out + [current] if current else out


def units(spec: ArchSpec, group: int, stage_blocks: list[int] | None = None
          ) -> list[tuple[int, ...]]:
  """Consecutive `group`-block units of each stage (or of `stage_blocks`), from each stage's
  start; a stage's leftover blocks (fewer than `group`) form a last, smaller unit."""
  chosen = [stage_blocks] if stage_blocks is not None else stages(spec)
  return [tuple(s[i:i + group]) for s in chosen for i in range(0, len(s), group)]


def group_of(config, spec: ArchSpec) -> int:
  """Blocks per unit: `dcvit.group`, or the family's (`Family.block_unit`: 1 on ViT, 2 on Swin,
  as the paper)."""
  return config.dcvit.get("group", 0) or registry.family(spec.family).block_unit


def candidate_units(spec: ArchSpec, group: int) -> list[tuple[int, ...]]:
  """DC-ViT's candidates: full `group`-block units of the longest stage (the later one on a
  tie), none holding the model's first or last block. In a family without block compression
  (a CNN): every block of every stage but the stage's first (`layerX.i`, i >= 1, the paper's
  CNN candidates: the first block carries the stride and the shortcut)."""
  if not registry.family(spec.family).block_compression:
    return [u for s in stages(spec) for u in units(spec, group, s[1:]) if len(u) == group]
  longest = max(reversed(stages(spec)), key=len)
  last = spec.depth - 1
  return [u for u in units(spec, group, longest)
          if len(u) == group and 0 not in u and last not in u]


def block_costs(spec: ArchSpec, block: int = 0, convention: str = "full"
                ) -> tuple[int, int, int]:
  """(M_attn, M_mlp, H) of dense block `block`, at the shape it sits at, counted in
  `accounting.CONVENTIONS[convention]`."""
  b, shape = spec.blocks[block], spec.block_shapes()[block]
  attn_only = dataclasses.replace(b, mlp=0, mlp_bias=False)
  m_attn = attn_only.macs(shape, spec.head_dim_of(b), **accounting.CONVENTIONS[convention])
  m_mlp = mlp_macs(shape.tokens, shape.width, b.mlp, norm=0)
  return m_attn, m_mlp, b.mlp


def unit_costs(spec: ArchSpec, unit: tuple[int, ...], convention: str = "full"
               ) -> tuple[int, int, int]:
  """(M_attn, M_mlp, H) of a unit: its blocks' sums, H of its first block."""
  costs = [block_costs(spec, b, convention) for b in unit]
  return sum(c[0] for c in costs), sum(c[1] for c in costs), costs[0][2]


def rule(removal: float, m_attn: int, m_mlp: int, h: int, num_candidates: int,
         width_multiple: int = 8) -> tuple[int, float, int]:
  """DC-ViT's rule for removing `removal` MACs by compressing units of cost (m_attn, m_mlp):
  (k, rd, hidden). The caller checks that the removal is reachable."""
  k = min(max(math.ceil(removal / (m_attn + m_mlp) - 1e-9), 1), num_candidates)
  rd = min(max(((removal - k * m_attn) / k) / m_mlp, 0.0), 1.0)
  return k, rd, int(h * (1 - rd)) // width_multiple * width_multiple


def structure_for(spec: ArchSpec, target_ratio: float, num_candidates: int,
                  width_multiple: int = 8, unit: tuple[int, ...] = (0,),
                  convention: str = "full") -> Structure:
  """k (units) and rd for a target of `target_ratio` × dense MACs, each candidate unit costing
  what `unit` costs, every MAC counted in `accounting.CONVENTIONS[convention]` ("reference":
  the thop counter of DC-ViT's `flops2structure`, which reproduces the paper's structures);
  errors name the reachable range."""
  dense = accounting.macs(spec, **accounting.CONVENTIONS[convention])
  m_attn, m_mlp, h = unit_costs(spec, unit, convention)
  lo = (dense - num_candidates * (m_attn + m_mlp)) / dense
  hi = (dense - m_attn) / dense
  if not lo <= target_ratio <= hi:
    raise UserError(f"MACs target {target_ratio:.3f} x dense is unreachable by compressing "
                    f"{num_candidates} candidate units of {len(unit)} block(s): reachable are "
                    f"{lo:.3f} to {hi:.3f} x dense MACs")
  k, rd, hidden = rule(dense * (1 - target_ratio), m_attn, m_mlp, h, num_candidates,
                       width_multiple)
  return Structure(int(dense * target_ratio), k, rd, hidden)


def compress_block(model, index: int, hidden: int, seed: int):
  """DC-ViT's compressed block at `index`, on a copy of `model`: attention and its LayerNorm
  removed, MLP cut to a seeded uniformly random subset of `hidden` units (`Mlp.narrowed`: fc1
  columns and biases, fc2 rows; fc2 bias kept): `y = x + fc2(gelu(fc1(LN2(x))))`; with `hidden`
  = 0, `y = x + b_fc2`. The spec is read back from the edited model."""
  b = model.spec.blocks[index]
  if not 0 <= hidden <= b.mlp:
    raise ValueError(f"hidden {hidden} is outside 0..{b.mlp} for block {index}")
  keep = random_units(b.mlp, hidden, seed, index)

  def edit(block):
    block.without_attention()
    if hidden:
      block.mlp = block.mlp.narrowed(keep)
    else:  # no unit kept: fc2(0) = its bias, kept as the block's learned vector
      block.without_mlp()
    return block

  return edit_block(model, index, edit, compressed_spec(model.spec, (index,), hidden))


def compressed_spec(spec: ArchSpec, blocks, hidden: int) -> ArchSpec:
  """`spec` with `blocks` compressed as `compress_block` does."""
  for i in blocks:
    spec = spec.replace_block(i, attn="none", heads=0, conv_dim=0, mlp=hidden,
                              mlp_bias=hidden == 0)
  return spec
