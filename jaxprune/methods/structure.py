"""DC-ViT's structure from a MACs target: how many blocks to compress, and by how much.

With R = MACs to remove, M_attn = one block's attention sub-layer (with its LayerNorm) and
M_mlp = one block's MLP matmuls: k = ceil(R / (M_attn + M_mlp)) blocks, each with its MLP cut by
rd = ((R − k·M_attn) / k) / M_mlp, i.e. hidden width int(H·(1 − rd)) rounded down to a multiple
of `width_multiple` (CPU-friendly; the MACs then land at or just below the target). A compressed
block keeps its MLP LayerNorm, so matching "n blocks dropped" needs k = n + 1, as in DC-ViT.
Any R from M_attn up to what the candidate blocks hold is reachable: the family is dense.
"""

from __future__ import annotations

import dataclasses
import math

from jaxprune import accounting
from jaxprune.arch import ArchSpec, BlockSpec
from jaxprune.errors import UserError


@dataclasses.dataclass(frozen=True)
class Structure:
  target_macs: int
  k: int          # blocks to compress
  rd: float       # fraction of MLP MACs removed in each
  hidden: int     # MLP width kept in each compressed block


def block_costs(spec: ArchSpec) -> tuple[int, int, int]:
  """(M_attn, M_mlp, H) of the dense blocks (all alike in a dense ViT)."""
  b = spec.blocks[0]
  m_attn = accounting.count(spec.replace(blocks=(BlockSpec("msa", heads=b.heads),))).block_macs[0]
  m_mlp = 2 * spec.num_tokens * spec.width * b.mlp
  return m_attn, m_mlp, b.mlp


def structure_for(spec: ArchSpec, target_ratio: float, num_candidates: int,
                  width_multiple: int = 8) -> Structure:
  """k and rd for a target of `target_ratio` × dense MACs; errors name the reachable range."""
  dense = accounting.macs(spec)
  m_attn, m_mlp, h = block_costs(spec)
  lo = (dense - num_candidates * (m_attn + m_mlp)) / dense
  hi = (dense - m_attn) / dense
  r = dense * (1 - target_ratio)
  if not lo <= target_ratio <= hi:
    raise UserError(f"MACs target {target_ratio:.3f} x dense is unreachable by compressing "
                    f"{num_candidates} candidate blocks: reachable are {lo:.3f} to {hi:.3f} "
                    "x dense MACs")
  k = min(math.ceil(r / (m_attn + m_mlp) - 1e-9), num_candidates)
  rd = min(max(((r - k * m_attn) / k) / m_mlp, 0.0), 1.0)
  hidden = int(h * (1 - rd)) // width_multiple * width_multiple
  return Structure(int(dense * target_ratio), k, rd, hidden)


def compressed_spec(spec: ArchSpec, blocks, hidden: int) -> ArchSpec:
  for i in blocks:
    spec = spec.replace_block(i, attn="none", heads=0, conv_dim=0, mlp=hidden)
  return spec
