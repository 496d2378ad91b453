"""DC-ViT: dense few-shot compression into a family of models covering a range of MACs.

Phases (each resumable; finished work is found on disk and reused):
  1. dense      the pretrained model (`model.init_from`, or pre-trained here)
  2. synthetic  the metric set: the dense model inverted from noise (`synth.py`)
  3. per target ratio: structure (k units, MLP width) → unit trials: each candidate unit (a
     block; a pair of consecutive blocks on Swin; never the first or last block) compressed
     alone and recovered by feature mimicking on the few-shot images → metric
     KL(original ‖ candidate) on the synthetic set → rank ascending → progressive compression
     of the top-k, each step fine-tuned from the previous one. Trials are shared across
     targets whose (unit, width) coincide.
  4. PRACTISE at matched MACs (`methods/practise.py`), evaluation, latency, table, plot.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxprune import accounting, synth
from jaxprune.atomic import write_json
from jaxprune.errors import UserError
from jaxprune.methods import common, practise, pretrain
from jaxprune.methods.cache import cached_json, cached_model
from jaxprune.methods.mimicking import freeze_after, mimic
from jaxprune.methods.structure import (block_costs, candidate_units, group_of, stages,
                                        structure_for)
from jaxprune.surgery import compress_block
from jaxprune.train.logging import MetricWriter
from jaxprune.train.mesh import make_mesh
from jaxprune.validate import planned_spec


def kl_metric(teacher, student, images: np.ndarray, batch: int = 256) -> float:
  """Mean KL(teacher ‖ student) of the class logits over `images` (normalised inputs)."""
  total = 0.0
  for i in range(0, len(images), batch):
    x = jnp.asarray(images[i:i + batch])
    t = jax.nn.log_softmax(teacher(x))
    s = jax.nn.log_softmax(student(x))
    total += float(jnp.sum(optax.kl_divergence(s, jnp.exp(t))))
  return total / len(images)


def synthetic_set(config, workdir: str, dense) -> dict[str, Any]:
  """The synthetic metric set, made once and reused (`workdir/synthetic/synthetic.npz`)."""
  out = os.path.join(workdir, "synthetic")
  path = os.path.join(out, "synthetic.npz")
  if os.path.exists(path):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  c = config.synthetic
  labels = synth.labels_for(c.num_images, dense.spec.num_classes)
  result = synth.invert(dense, labels, synth.InversionConfig(
      steps=c.steps, lr=c.lr, warmup_steps=c.warmup_steps, tv_weight=c.tv_weight,
      tv_exponent=c.tv_exponent, l2_weight=c.l2_weight, jitter=c.jitter),
      make_mesh(), seed=config.seed, mean=config.data.mean, std=config.data.std)
  agree = float(np.mean(np.asarray(dense(jnp.asarray(result["images"]))).argmax(-1) == labels))
  result.update(teacher_agreement=agree)
  if jax.process_index() == 0:
    synth.save(out, result)
    write_json(os.path.join(out, "report.json"),
               {"images": len(labels), "steps": c.steps, "seconds": result["seconds"],
                "images_per_s": result["images_per_s"], "first_loss":
                float(result["loss_curve"][0]), "best_loss": result["best_loss"],
                "teacher_agreement": agree}, indent=2)
    print(f"[synthetic] {len(labels)} images, {c.steps} steps in {result['seconds']:.1f} s "
          f"({result['images_per_s']:.0f} images/s); loss {result['loss_curve'][0]:.3f} → best "
          f"{result['best_loss']:.3f}; teacher labels them as targeted: {agree:.1%}", flush=True)
  return result


def unit_name(unit) -> str:
  return "-".join(str(b) for b in unit)


def sweep_targets(config, spec, candidates) -> list[float]:
  """`dcvit.targets`, or `dcvit.num_targets` evenly from 0.95 to 0.5 clipped to what is
  reachable."""
  if config.dcvit.targets:
    return [float(t) for t in config.dcvit.targets]
  dense = accounting.macs(spec)
  costs = [block_costs(spec, b) for b in candidates[0]]
  m_attn, m_mlp = sum(c[0] for c in costs), sum(c[1] for c in costs)
  num_candidates = len(candidates)
  hi = min(0.95, (dense - m_attn) / dense - 1e-3)
  lo = max(0.5, (dense - num_candidates * (m_attn + m_mlp)) / dense + 1e-3)
  return [float(t) for t in np.linspace(hi, lo, config.dcvit.num_targets)]


class Trials:
  """Unit trials keyed by (unit, width), on disk under `workdir/trials/` and shared."""

  def __init__(self, config, workdir, dense, synthetic, writer):
    self.config, self.workdir, self.dense = config, workdir, dense
    self.synthetic, self.writer = synthetic, writer
    self.dir = os.path.join(workdir, "trials")
    os.makedirs(self.dir, exist_ok=True)

  def metric(self, unit: tuple[int, ...], hidden: int) -> dict[str, Any]:
    name = f"b{unit_name(unit)}_h{hidden}"

    def compute():
      student = self.dense
      for b in unit:
        student = compress_block(student, b, hidden, self.config.seed)
      student, info = mimic(self.config, self.workdir, f"trial_{name}", student, self.dense,
                            freeze_after(max(unit), self.dense.spec),
                            self.config.dcvit.trial_steps, self.writer)
      record = {"block": unit[0], "unit": list(unit), "hidden": hidden, **info,
                "kl": kl_metric(self.dense, student, self.synthetic["images"])}
      if self.config.dcvit.trial_accuracy:  # for rank-quality studies: real test accuracy
        cfg = common.phase_config(self.config, "mimic")
        record["test_accuracy"] = common.evaluate_model(cfg, student,
                                                        common.setup(cfg))["accuracy"]
      return record

    return {**cached_json(os.path.join(self.dir, f"{name}.json"), compute), "unit": list(unit)}


def compress_to(config, workdir: str, dense, target: float, trials: Trials, candidates,
                writer) -> tuple[Any, dict[str, Any]]:
  """Ranks the candidate units for `target` and compresses the top-k progressively."""
  st = structure_for(dense.spec, target, len(candidates), config.dcvit.width_multiple,
                     unit=candidates[0])
  records = [trials.metric(u, st.hidden) for u in candidates]
  ranked = [tuple(r["unit"]) for r in sorted(records, key=lambda r: (r["kl"], r["unit"]))]
  chosen = ranked[:st.k]
  model, done = dense, []
  for j, unit in enumerate(chosen):
    for b in unit:
      done.append(b)
      model = compress_block(model, b, st.hidden, config.seed)
    model, _ = mimic(config, workdir, f"target{target:.3f}_step{j}", model, dense,
                     freeze_after(max(done), dense.spec), config.dcvit.finetune_steps,
                     writer)
  info = {"target_ratio": target, "blocks": done, "units": [list(u) for u in chosen],
          "mlp_width": st.hidden, "rd": st.rd,
          "ranking": {unit_name(r["unit"]): r["kl"] for r in records}}
  return model, info


def check(config: ml_collections.ConfigDict) -> None:
  """Before any work: the dense model has candidate units and only MSA blocks."""
  spec = planned_spec(config)
  group = group_of(config, spec)
  if not candidate_units(spec, group):
    raise UserError(f"DC-ViT finds no candidate unit of {group} block(s) in this model "
                    f"(stages {[len(s) for s in stages(spec)]} blocks; a candidate lies in the "
                    "longest stage and holds neither the first nor the last block): use a "
                    "deeper model (model.depth / model.variant / model.init_from) or a smaller "
                    "dcvit.group")
  if any(b.attn != "msa" for b in spec.blocks):
    raise UserError("DC-ViT compresses a dense model: every block of model.init_from must be "
                    f"'msa', got {[b.attn for b in spec.blocks]}")
  practise.check(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  writer = MetricWriter(workdir)
  dense = pretrain.dense_model(config, workdir, writer)
  candidates = candidate_units(dense.spec, group_of(config, dense.spec))
  mcfg = common.phase_config(config, "mimic")
  s = common.setup(mcfg)
  evaluate = lambda m: common.evaluate_model(mcfg, m, s)["accuracy"]  # noqa: E731
  batch = config.latency_batch
  synthetic = synthetic_set(config, workdir, dense)
  trials = Trials(config, workdir, dense, synthetic, writer)

  # PRACTISE first: its MACs define the matched targets.
  pruned = practise.run_family(config, workdir, dense, writer)
  dense_macs = accounting.macs(dense.spec)
  matched = [accounting.macs(m.spec) / dense_macs for m, _ in pruned]
  targets = sorted(set(sweep_targets(config, dense.spec, candidates) + matched),
                   reverse=True)
  family, entries = [], []
  for target in targets:
    out = os.path.join(workdir, "family", f"{target:.3f}")
    model, extra = cached_model(out, lambda: (lambda m, i: (m, {"dcvit": i}))(
        *compress_to(config, workdir, dense, target, trials, candidates, writer)),
        common.preprocessing(config))
    info = extra["dcvit"]
    accuracy = evaluate(model)
    family.append({**info, "model_dir": out})
    entries.append((model, accuracy))
    if jax.process_index() == 0:
      print(f"[dcvit] target {target:.3f}: blocks {info['blocks']} MLP {info['mlp_width']} → "
            f"{accounting.macs(model.spec) / dense_macs:.3f} MACs, accuracy {accuracy:.4f}",
            flush=True)

  # One table, timed together: dense, the family, PRACTISE.
  rows = common.describe([(dense, evaluate(dense))] + entries +
                         [(m, evaluate(m)) for m, _ in pruned], batch)
  dense_row = rows[0]
  family = [{**r, **f} for r, f in zip(rows[1:1 + len(family)], family)]
  practise_rows = [{**r, "dropped": d} for r, (_, d) in zip(rows[1 + len(family):], pruned)]
  ranking = next((f["ranking"] for f in family if f["target_ratio"] in matched), family[0]["ranking"])
  summary = {"dense": dense_row, "family": family, "practise": practise_rows,
             "block_ranking": ranking,
             "synthetic": {k: v for k, v in json.load(open(os.path.join(
                 workdir, "synthetic", "report.json"))).items()}
             if os.path.exists(os.path.join(workdir, "synthetic", "report.json")) else {}}
  common.write_summary(workdir, summary)
  if jax.process_index() == 0:
    from jaxprune.plot import accuracy_vs_macs
    png = accuracy_vs_macs(os.path.join(workdir, "family.png"), dense_row, family, practise_rows)
    rows = [("dense", dense_row)]
    rows += [(f"DC-ViT {f['macs'] / dense_macs:.3f}", f) for f in family]
    rows += [(f"PRACTISE -{len(p['dropped'])} blocks", p) for p in practise_rows]
    common.print_table(f"DC-ViT family and PRACTISE, {config.data.fewshot} training images; "
                       f"latency: median eval forward, batch {batch}", rows)
    print(f"block ranking (KL on the synthetic set, lower = recovers better): {ranking}\n"
          f"wrote {os.path.join(workdir, 'summary.json')} and {png}")
  writer.close()
  return summary
