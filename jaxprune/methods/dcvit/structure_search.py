"""Structure search (`dcvit.structure = "search"`): per MACs target, how many units to drop whole
and how DC-ViT's rule spreads the rest, chosen from shared single-unit trials.

DC-ViT fixes the structure from the target (k compressed units, one MLP width) and PRACTISE only
drops whole blocks; this search lets each target pick either or a mix:

  trials (each: one unit changed alone, recovered by feature mimicking for `dcvit.trial_steps`,
  scored by KL(original ‖ candidate) on the metric set (`dcvit.metric_set`: the synthetic
  set, or the real few-shot images); shared by every target):
    drop(u)         every unit PRACTISE may drop, the last block included
    compress(u, w)  DC-ViT's candidate units at w = H (attention removed only) and w = H/2
  for a target removing R MACs, the candidate structures n = 0, 1, 2, ...:
    drop the n units of lowest drop KL, remove the rest R' by DC-ViT's rule over the candidate
    units left (k' units at MLP width h'); n = 0 is DC-ViT's own structure, R' <= 0 is pure
    block dropping, kept only when it lands within `DROP_SLACK` × dense MACs of the target (a
    family whose members fall back to the same few drop points would not be dense)
  score = Σ drop KL + Σ compress KL, the compress KL at h' read off the line through drop
  (width 0), H/2 and H; lowest score wins (ties: fewer operations)
  the winner's compressed units are ranked by exact trials at h' (DC-ViT's own trials), and
  the model is built (by DC-ViT's own progression when n = 0 won, see `dcvit.search_to`)
  one operation per step in ascending-KL order, each step fine-tuned as
  DC-ViT does (the last step longer when there are fewer steps than DC-ViT's rule takes at
  this target, so every structure gets the same fine-tuning).

The trials grow with the units (3 per candidate, 1 per other unit, plus h' trials of the winning
mixes), not with the structures compared.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jaxprune import accounting
from jaxprune.errors import UserError
from jaxprune.methods.mimicking import mimic, trainable_upto
from jaxprune.methods.dcvit.structure import compress_block, rule, unit_costs
from jaxprune.surgery import drop_blocks

DROP_SLACK = 0.02  # pure block dropping may land this far (× dense MACs) below a target


@dataclasses.dataclass(frozen=True)
class Candidate:
  dropped: tuple[tuple[int, ...], ...]     # units dropped whole
  compressed: tuple[tuple[int, ...], ...]  # units compressed (attention removed, MLP `hidden`)
  hidden: int
  score: float

  def describe(self) -> dict[str, Any]:
    return {"dropped": [list(u) for u in self.dropped],
            "compressed": [list(u) for u in self.compressed], "mlp_width": self.hidden,
            "score": self.score}


def grid_widths(h: int, width_multiple: int) -> tuple[int, int]:
  """The compress-trial widths of the search: H/2 (rounded down to the multiple) and H."""
  return max(width_multiple, h // 2 // width_multiple * width_multiple), h


def interpolated_kl(trials, unit, hidden: int, h: int, width_multiple: int) -> float:
  """Compress KL of `unit` at `hidden`, linear in width through drop (0), H/2 and H."""
  half, full = grid_widths(h, width_multiple)
  xs = [0, half, full]
  ys = [trials.drop(unit)["score"], trials.metric(unit, half)["score"],
        trials.metric(unit, full)["score"]]
  return float(np.interp(hidden, xs, ys))


def candidates_for(spec, target: float, candidates, drop_units, trials,
                   width_multiple: int) -> list[Candidate]:
  """Every structure n = 0, 1, ... described in the module docstring, scored."""
  dense = accounting.macs(spec)
  removal = dense * (1 - target)
  m_attn, m_mlp, h = unit_costs(spec, candidates[0])
  drops_ranked = sorted(drop_units, key=lambda u: (trials.drop(u)["score"], u))
  out = []
  for n in range(len(drop_units)):
    dropped = tuple(drops_ranked[:n])
    gone = {b for u in dropped for b in u}
    rest = removal - (dense - accounting.macs(spec.drop_blocks(gone)))
    drop_kl = sum(trials.drop(u)["score"] for u in dropped)
    if rest < 1:  # under one MAC left: the rounding of a target at a drop point (PRACTISE's)
      if -rest <= DROP_SLACK * dense:
        out.append(Candidate(dropped, (), h, drop_kl))
      break  # more drops only add KL
    pool = [u for u in candidates if not gone & set(u)]
    if not pool or rest > len(pool) * (m_attn + m_mlp):
      continue  # not reachable with n drops: try more
    k, _, hidden = rule(rest, m_attn, m_mlp, h, len(pool), width_multiple)
    kls = sorted((interpolated_kl(trials, u, hidden, h, width_multiple), u) for u in pool)
    out.append(Candidate(dropped, tuple(u for _, u in kls[:k]), hidden,
                         drop_kl + sum(kl for kl, _ in kls[:k])))
  return out


def choose(spec, target: float, candidates, drop_units, trials, width_multiple: int
           ) -> tuple[Candidate, list[Candidate]]:
  """The winning structure, its compressed units re-ranked by exact trials at its width; and
  every candidate scored."""
  scored = candidates_for(spec, target, candidates, drop_units, trials, width_multiple)
  if not scored:
    raise UserError(f"structure search: no structure reaches {target:.3f} x dense MACs (DC-ViT's "
                    f"rule cannot, and dropping whole units lands more than {DROP_SLACK} x dense "
                    "below it): choose another dcvit.targets value")
  best = min(scored, key=lambda c: (c.score, len(c.dropped) + len(c.compressed)))
  if best.compressed:  # DC-ViT's own ranking at the chosen width, among the units left
    gone = {b for u in best.dropped for b in u}
    pool = [u for u in candidates if not gone & set(u)]
    exact = sorted((trials.metric(u, best.hidden)["score"], u) for u in pool)
    best = dataclasses.replace(best, compressed=tuple(u for _, u in
                                                      exact[:len(best.compressed)]))
  return best, scored


def build(config, workdir: str, dense, choice: Candidate, steps_owed: int, tag: str, trials,
          writer):
  """The chosen structure, one operation per progressive step in ascending trial KL, each
  fine-tuned by feature mimicking with DC-ViT's trainable set (embeddings up to the block after
  every changed unit); the last step takes the `steps_owed` − (steps taken) extra steps."""
  ops = [(trials.drop(u)["score"], "drop", u) for u in choice.dropped]
  ops += [(trials.metric(u, choice.hidden)["score"], "compress", u) for u in choice.compressed]
  ops.sort(key=lambda o: (o[0], o[2]))
  model, dropped, done = dense, set(), []

  def now(b):  # block b's index in the current model
    return b - sum(1 for d in dropped if d < b)

  for j, (_, op, unit) in enumerate(ops):
    if op == "drop":
      model = drop_blocks(model, [now(b) for b in unit])
      dropped |= set(unit)
    else:
      for b in unit:
        model = compress_block(model, now(b), choice.hidden, config.seed)
    done.append((op, unit))
    # Last trainable block: the one after each changed unit (where a dropped unit's successor
    # now sits, or after a compressed unit).
    last = max(now(max(u) + 1) if o == "drop" else now(max(u)) + 1 for o, u in done)
    steps = config.dcvit.finetune_steps * (max(steps_owed - len(ops), 0) + 1
                                           if j == len(ops) - 1 else 1)
    model, _ = mimic(config, workdir, f"{tag}_step{j}", model, dense,
                     trainable_upto(model.spec, last), steps, writer,
                     meta={"dropped": sorted(dropped),
                           "compressed": [b for o, u in done if o == "compress" for b in u]})
  return model
