"""DC-ViT: dense few-shot compression into a family of models covering a range of MACs.

Zhang et al., "Dense Vision Transformer Compression with Few Samples", CVPR 2024,
arXiv:2403.18708; reference code github.com/Michelia-zhx/dcvit.

Phases (each resumable; finished work is found on disk and reused):
  1. dense      the pretrained model (`model.init_from`, or pre-trained here)
  2. synthetic  the metric set: the dense model inverted from noise (`synth.py`)
  3. per target ratio: structure (k units, MLP width) → unit trials: each candidate unit (a
     block; a pair of consecutive blocks on Swin; never the first or last block) compressed
     alone and recovered by feature mimicking on the few-shot images → metric
     KL(original ‖ candidate) on the synthetic set (`dcvit.metric_set = "fewshot"`: on the
     real few-shot images instead, no inversion) → rank ascending → progressive compression
     of the top-k: the first is its trial's recovered student (reused, as the reference does),
     each later step fine-tuned from the previous one. Trials are shared across
     targets whose (unit, width) coincide. `dcvit.structure = "search"` (or "both", next to
     the rule's family) chooses each target's structure among drops, the rule and mixes
     instead (`structure_search.py`).
  4. PRACTISE at matched MACs (`methods/practise/`), evaluation, latency, table, plot.
With `dcvit.seeds`, phases 3-4 run once per few-shot set (`seeds/<seed>/`) and the summary
gives mean ± std per family member.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxprune import accounting, registry, synth, validate
from jaxprune.atomic import write_json
from jaxprune.errors import UserError
from jaxprune.methods import Method, Outcome, common, finish, practise, pretrain
from jaxprune.methods.dcvit import structure_search
from jaxprune.methods.cache import cached_json, cached_model
from jaxprune.methods.mimicking import mimic, trainable_upto
from jaxprune.methods.dcvit.structure import (block_costs, candidate_units, compress_block,
                                              group_of, stages, structure_for)
from jaxprune.models.masked import build_masked, is_masked, plain, switched
from jaxprune.models.precision import COMPUTE_DTYPES
from jaxprune.surgery import drop_blocks, random_units
from jaxprune.train.logging import MetricWriter
from jaxprune.train.mesh import make_mesh


def kl_metric(teacher, student, images: np.ndarray, batch: int = 256,
              temperature: float = 1.0) -> float:
  """Mean KL(teacher ‖ student) of the class distributions softmax(logits / `temperature`)
  over `images` (normalised inputs). DC-ViT's metric is temperature 1."""
  total = 0.0
  for i in range(0, len(images), batch):
    x = jnp.asarray(images[i:i + batch])
    t = jax.nn.log_softmax(teacher(x) / temperature)
    s = jax.nn.log_softmax(student(x) / temperature)
    total += float(jnp.sum(optax.kl_divergence(s, jnp.exp(t))))
  return total / len(images)


def _inversion_progress(step: int, steps: int, loss: float, best: float, seconds: float):
  if jax.process_index() == 0:
    eta = seconds / step * (steps - step)
    print(f"[synthetic] step {step}/{steps} | loss {loss:.3f} | best {best:.3f} | "
          f"{seconds:.0f} s, ETA {eta:.0f} s", flush=True)


def synthetic_set(config, workdir: str, dense) -> dict[str, Any]:
  """The synthetic metric set, made once and reused (`workdir/synthetic/synthetic.npz`)."""
  out = os.path.join(workdir, "synthetic")
  path = os.path.join(out, "synthetic.npz")
  if os.path.exists(path):
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  c = config.synthetic
  labels = synth.labels_for(c.num_images, dense.spec.num_classes, seed=config.seed)
  result = synth.invert(dense, labels, synth.InversionConfig(
      steps=c.steps, lr=c.lr, warmup_steps=c.warmup_steps, tv_weight=c.tv_weight,
      tv_exponent=c.tv_exponent, l2_weight=c.l2_weight, jitter=c.jitter,
      tv_group=c.get("tv_group", 1), bn_weight=c.get("bn_weight", 0.0),
      compute_dtype=c.get("compute_dtype", "float32")), make_mesh(),
      seed=config.seed, mean=config.data.mean, std=config.data.std,
      progress=_inversion_progress)
  if c.get("jpeg_quality", 0):  # the reference's save-as-JPEG-and-read-back
    result["images"], result["pixels"] = synth.jpeg_roundtrip(
        result["images"], config.data.mean, config.data.std, c.jpeg_quality,
        config.data.get("eval_crop", 0.0))
  agree = float(np.mean(np.asarray(dense(jnp.asarray(result["images"]))).argmax(-1) == labels))
  result.update(teacher_agreement=agree)
  if jax.process_index() == 0:
    synth.save(out, result)
    write_json(os.path.join(out, "report.json"),
               {"images": len(labels), "steps": c.steps, "seconds": result["seconds"],
                "images_per_s": result["images_per_s"], "tv_group": c.get("tv_group", 1),
                "jpeg_quality": c.get("jpeg_quality", 0), "first_loss":
                float(result["loss_curve"][0]), "best_loss": result["best_loss"],
                "teacher_agreement": agree}, indent=2)
    print(f"[synthetic] {len(labels)} images, {c.steps} steps in {result['seconds']:.1f} s "
          f"({result['images_per_s']:.0f} images/s); loss {result['loss_curve'][0]:.3f} → best "
          f"{result['best_loss']:.3f}; teacher labels them as targeted: {agree:.1%}", flush=True)
  return result


def unit_name(unit) -> str:
  return "-".join(str(b) for b in unit)


def macs_convention(config) -> str:
  """`dcvit.macs_convention`: how the rule's targets count MACs ("full", and configs saved
  before it existed; "reference": the reference's thop counter)."""
  return config.dcvit.get("macs_convention", "full")


def sweep_targets(config, spec, candidates) -> list[float]:
  """`dcvit.targets`, or `dcvit.num_targets` evenly from 0.95 to 0.5 clipped to what is
  reachable."""
  if config.dcvit.targets:
    return [float(t) for t in config.dcvit.targets]
  convention = macs_convention(config)
  dense = accounting.macs(spec, **accounting.CONVENTIONS[convention])
  costs = [block_costs(spec, b, convention) for b in candidates[0]]
  m_attn, m_mlp = sum(c[0] for c in costs), sum(c[1] for c in costs)
  num_candidates = len(candidates)
  hi = min(0.95, (dense - m_attn) / dense - 1e-3)
  lo = max(0.5, (dense - num_candidates * (m_attn + m_mlp)) / dense + 1e-3)
  return [float(t) for t in np.linspace(hi, lo, config.dcvit.num_targets)]


METRIC_KEYS = {"synthetic": "kl", "fewshot": "kl_fewshot"}  # dcvit.metric_set → field


def metric_set(config) -> str:
  """`dcvit.metric_set`; configs saved before it existed ranked by the synthetic set."""
  return config.dcvit.get("metric_set", "synthetic")


def metric_temperature(config) -> float:
  """`dcvit.metric_temperature` (1 = DC-ViT's KL, and configs saved before it existed)."""
  return float(config.dcvit.get("metric_temperature", 1.0))


def metric_keys(temperature: float) -> dict[str, str]:
  """The record field of each metric set at `temperature` (`kl`, `kl_fewshot` at 1; `kl_T2`,
  `kl_fewshot_T2` at 2: a trial's record keeps the KLs of every temperature it was ranked at)."""
  suffix = "" if temperature == 1 else f"_T{temperature:g}"
  return {m: k + suffix for m, k in METRIC_KEYS.items()}


class Trials:
  """Unit trials keyed by (unit, width), on disk under `workdir/trials/` and shared.

  A trial's record holds KL(original ‖ candidate) on each metric set available: `kl` on the
  synthetic set (DC-ViT's; absent when `dcvit.metric_set = "fewshot"` skips the inversion) and
  `kl_fewshot` on the real few-shot images (suffixed `_T<t>` at `dcvit.metric_temperature` t
  other than 1); `score` is the one `dcvit.metric_set` ranks by."""

  def __init__(self, config, workdir, dense, synthetic, writer):
    self.config, self.workdir, self.dense = config, workdir, dense
    self.synthetic, self.writer = synthetic, writer
    self.temperature = metric_temperature(config)
    self.keys = metric_keys(self.temperature)
    self.key = self.keys[metric_set(config)]
    self.dir = os.path.join(workdir, "trials")
    os.makedirs(self.dir, exist_ok=True)
    self._fewshot = None
    self._masked = None  # the dense model as `MaskedBlock`s, built at the first trial

  def fewshot_images(self) -> np.ndarray:
    """The few-shot training images, normalised: the `fewshot` metric set."""
    if self._fewshot is None:
      cfg = common.phase_config(self.config, "mimic")
      self._fewshot = common.split_images(cfg, common.setup(cfg).train)
    return self._fewshot

  def _compressed(self, unit: tuple[int, ...], hidden: int):
    """(trial name, student maker) of `unit` compressed (attention removed, MLP `hidden`);
    with `dcvit.shared_trials`, as the dense-shaped model with those parts masked off
    (`models.masked`): the same function, and one compiled train step for every such trial."""
    def student():
      if not self.config.dcvit.get("shared_trials", False):
        model = self.dense
        for b in unit:
          model = compress_block(model, b, hidden, self.config.seed)
        return model, trainable_upto(self.dense.spec, max(unit) + 1)
      if self._masked is None:
        self._masked = build_masked(self.dense)
      off = {b: random_units(self.dense.spec.blocks[b].mlp, hidden, self.config.seed, b)
             for b in unit}
      return switched(self._masked, cut=off), trainable_upto(self.dense.spec, max(unit) + 1)

    return f"b{unit_name(unit)}_h{hidden}", student

  def metric(self, unit: tuple[int, ...], hidden: int) -> dict[str, Any]:
    """DC-ViT's trial: `unit` compressed (attention removed, MLP `hidden`) alone."""
    name, student = self._compressed(unit, hidden)
    return self._trial(name, unit, student, hidden=hidden)

  def recovered(self, unit: tuple[int, ...], hidden: int):
    """The recovered student of `unit`'s trial, restored from its finished checkpoint: DC-ViT's
    first progressive step, which the reference takes from the trial (`prune.py` loads the
    first ranked block's checkpoint instead of fine-tuning it again)."""
    self.metric(unit, hidden)  # the trial exists (and is finished) before it is reused
    name, student = self._compressed(unit, hidden)
    model = self._recover(name, student)[0]
    if is_masked(model):
      model = plain(model)
      for b in unit:  # cuts what the masks switched off: the same function, its architecture
        model = compress_block(model, b, hidden, self.config.seed)
    return model

  def _recover(self, name: str, make):
    """Runs (or, finished, restores) the trial's feature mimicking; (student, info). Masked
    students (`_compressed`) share one jitted step (`train_phase(shared=...)`)."""
    student, trainable = make()
    masked = is_masked(student)
    return mimic(self.config, self.workdir, f"trial_{name}" + ("_masked" if masked else ""),
                 student, self.dense, trainable, self.config.dcvit.trial_steps, self.writer,
                 shared="dcvit_trial" if masked else None)

  def _dropped(self, unit: tuple[int, ...]):
    """(trial name, student maker) of `unit` dropped whole, the layers up to its successor
    trainable."""
    def student():
      model = drop_blocks(self.dense, unit)
      return model, trainable_upto(model.spec, unit[0])

    return f"drop{unit_name(unit)}", student

  def drop(self, unit: tuple[int, ...]) -> dict[str, Any]:
    """The drop trial (the structure search's, and DC-ViT's on CNNs): `unit` dropped whole."""
    name, student = self._dropped(unit)
    return self._trial(name, unit, student, hidden=0, op="drop")

  def recovered_drop(self, unit: tuple[int, ...]):
    """The recovered student of `unit`'s drop trial (the first step of `drop_to`, reused)."""
    self.drop(unit)
    return self._recover(*self._dropped(unit))[0]

  def _narrowed(self, unit: tuple[int, ...]):
    """(trial name, student maker) of `unit`'s blocks narrowed (`narrow_widths`), the layers up
    to its successor trainable."""
    widths = narrow_widths(self.config, self.dense.spec, unit)
    narrow = registry.family(self.dense.spec.family).narrow_block

    def student():
      model = self.dense
      for b, w in zip(unit, widths):
        model = narrow(model, b, w, self.config.seed)
      return model, trainable_upto(self.dense.spec, max(unit) + 1)

    return f"n{unit_name(unit)}_w{'-'.join(map(str, widths))}", student

  def narrow(self, unit: tuple[int, ...]) -> dict[str, Any]:
    """The narrow trial (`dcvit.structure = "narrow"`): `unit`'s inner widths cut alone."""
    name, student = self._narrowed(unit)
    return self._trial(name, unit, student, hidden=0, op="narrow")

  def recovered_narrow(self, unit: tuple[int, ...]):
    """The recovered student of `unit`'s narrow trial (the first step of `narrow_to`, reused)."""
    self.narrow(unit)
    return self._recover(*self._narrowed(unit))[0]

  def _kl(self, student, key: str) -> float:
    images = (self.fewshot_images() if key == self.keys["fewshot"]
              else self.synthetic["images"])
    return kl_metric(self.dense, student, images, temperature=self.temperature)

  def _sets(self) -> list[str]:
    """The record fields of the metric sets this run has."""
    return [k for m, k in self.keys.items() if m == "fewshot" or self.synthetic is not None]

  def _trial(self, name: str, unit, make, **fields) -> dict[str, Any]:
    def recover():  # resumable: a finished trial's student is restored, not retrained
      return self._recover(name, make)

    def compute():
      t0 = time.perf_counter()
      student, info = recover()
      record = {"block": unit[0], "unit": list(unit), **fields, **info,
                self.key: self._kl(student, self.key),
                "seconds": time.perf_counter() - t0}  # what the method spends on the trial
      # The other metric set too: measured, not used to choose (rank studies).
      record.update({k: self._kl(student, k) for k in self._sets() if k != self.key})
      if self.config.dcvit.trial_accuracy:  # for rank-quality studies: real test accuracy
        cfg = common.phase_config(self.config, "mimic")
        record["test_accuracy"] = common.evaluate_model(cfg, student,
                                                        common.setup(cfg))["accuracy"]
      return record

    path = os.path.join(self.dir, f"{name}.json")
    record = cached_json(path, compute)
    if self.key not in record:  # made by a version that did not measure this metric set
      record = self._backfill(path, record, recover)
    return {**record, "unit": list(unit), "score": record[self.key]}

  def _backfill(self, path: str, record: dict[str, Any], recover) -> dict[str, Any]:
    """Measures the metric sets an older trial record lacks on its restored student; the
    student must reproduce the record's own KL (else its checkpoint is not the trial's)."""
    student, info = recover()
    kls = {k: self._kl(student, k) for k in self._sets()}
    for k, v in {**info, **kls}.items():
      if k in record and not np.isclose(v, record[k], rtol=1e-3, atol=1e-6):
        raise UserError(f"{path}: the restored trial's {k} is {v:.6g}, its record says "
                        f"{record[k]:.6g}: its checkpoint under {self.workdir}/checkpoints is "
                        "not the trial's model; delete the record to rerun the trial")
    record = {**record, **kls}
    if jax.process_index() == 0:
      write_json(path, record, indent=2)
    return record


def compress_to(config, workdir: str, dense, target: float, trials: Trials, candidates,
                writer) -> tuple[Any, dict[str, Any]]:
  """Ranks the candidate units for `target` and compresses the top-k progressively."""
  st = structure_for(dense.spec, target, len(candidates), config.dcvit.width_multiple,
                     unit=candidates[0], convention=macs_convention(config))
  records = [trials.metric(u, st.hidden) for u in candidates]
  ranked = [tuple(r["unit"]) for r in sorted(records, key=lambda r: (r["score"], r["unit"]))]
  chosen = ranked[:st.k]
  model, done = dense, []
  for j, unit in enumerate(chosen):
    if j == 0:  # the first unit alone is its own trial's student: reused, as the reference does
      done.extend(unit)
      model = trials.recovered(unit, st.hidden)
      continue
    for b in unit:
      done.append(b)
      model = compress_block(model, b, st.hidden, config.seed)
    model, _ = mimic(config, workdir, f"target{target:.3f}_step{j}", model, dense,
                     trainable_upto(dense.spec, max(done) + 1), config.dcvit.finetune_steps,
                     writer, meta={"compressed": list(done)})
  info = {"target_ratio": target, "blocks": done, "units": [list(u) for u in chosen],
          "mlp_width": st.hidden, "rd": st.rd,
          "ranking": {unit_name(r["unit"]): r["score"] for r in records}}
  return model, info


def drop_ranking(trials: Trials, candidates) -> tuple[list[tuple[int, ...]], dict[str, float]]:
  """The candidate units ranked by their drop trials' metric (lowest KL first), and the scores."""
  records = [trials.drop(u) for u in candidates]
  ranked = [tuple(r["unit"]) for r in sorted(records, key=lambda r: (r["score"], r["unit"]))]
  return ranked, {unit_name(r["unit"]): r["score"] for r in records}


def drop_to(config, workdir: str, dense, target: float, trials: Trials, candidates,
            writer) -> tuple[Any, dict[str, Any]]:
  """`dcvit.structure = "drop"`, DC-ViT on CNNs (whose blocks have no MLP to compress): whole
  candidate units dropped in the order of their drop trials' KL on the metric set until the
  MACs reach `target`, progressively: the first is its trial's recovered student (reused), each
  later drop fine-tuned by feature mimicking (MiR-style: pre-pool features, BatchNorm in train
  mode), the layers up to the last dropped unit's successor trainable."""
  ranked, ranking = drop_ranking(trials, candidates)
  limit = target * accounting.macs(dense.spec) * (1 + 1e-9)
  chosen: list[tuple[int, ...]] = []
  for unit in ranked:
    if accounting.macs(dense.spec.drop_blocks([b for u in chosen for b in u])) <= limit:
      break
    chosen.append(unit)
  if accounting.macs(dense.spec.drop_blocks([b for u in chosen for b in u])) > limit:
    raise UserError(f"MACs target {target:.3f} x dense is unreachable by dropping the "
                    f"{len(candidates)} candidate units")
  model, dropped = dense, []
  for j, unit in enumerate(chosen):
    if j == 0:
      model, dropped = trials.recovered_drop(unit), list(unit)
      continue
    now = lambda b: b - sum(d < b for d in dropped)  # noqa: E731  index in the current model
    model = drop_blocks(model, [now(b) for b in unit])
    dropped = sorted(dropped + list(unit))
    last = max(now(max(u) + 1) for u in chosen[:j + 1])
    model, _ = mimic(config, workdir, f"target{target:.3f}_drop{j}", model, dense,
                     trainable_upto(model.spec, last), config.dcvit.finetune_steps, writer,
                     meta={"dropped": dropped})
  info = {"target_ratio": target, "blocks": [], "dropped": sorted(dropped),
          "units": [list(u) for u in chosen], "mlp_width": 0, "ranking": ranking}
  return model, info


def narrow_widths(config, spec, unit) -> list[int]:
  """The inner width each block of `unit` keeps under `dcvit.structure = "narrow"`:
  `dcvit.narrow_keep` of its planes, rounded down to `dcvit.width_multiple` (at least one
  multiple, at most the planes)."""
  m = config.dcvit.width_multiple
  return [min(max(int(spec.blocks[b].planes * config.dcvit.narrow_keep) // m * m, m),
              spec.blocks[b].planes) for b in unit]


def narrowed_spec(config, spec, units):
  """`spec` with every block of `units` narrowed (`narrow_widths`)."""
  for unit in units:
    for b, w in zip(unit, narrow_widths(config, spec, unit)):
      spec = spec.replace_block(b, planes=w)
  return spec


def narrow_ranking(trials: Trials, candidates) -> tuple[list[tuple[int, ...]], dict[str, float]]:
  """The candidate units ranked by their narrow trials' metric (lowest KL first), the scores."""
  records = [trials.narrow(u) for u in candidates]
  ranked = [tuple(r["unit"]) for r in sorted(records, key=lambda r: (r["score"], r["unit"]))]
  return ranked, {unit_name(r["unit"]): r["score"] for r in records}


def narrow_to(config, workdir: str, dense, target: float, trials: Trials, candidates,
              writer) -> tuple[Any, dict[str, Any]]:
  """`dcvit.structure = "narrow"` (ours, on CNNs: DC-ViT's compression of a block, not its
  removal): candidate units' inner widths cut to `dcvit.narrow_keep` (seeded random channels)
  in the order of their narrow trials' KL until the MACs reach `target`, progressively as
  `drop_to` (the first is its trial's recovered student; each later one fine-tuned by feature
  mimicking, the layers up to its successor trainable)."""
  ranked, ranking = narrow_ranking(trials, candidates)
  limit = target * accounting.macs(dense.spec) * (1 + 1e-9)
  chosen: list[tuple[int, ...]] = []
  for unit in ranked:
    if accounting.macs(narrowed_spec(config, dense.spec, chosen)) <= limit:
      break
    chosen.append(unit)
  if accounting.macs(narrowed_spec(config, dense.spec, chosen)) > limit:
    raise UserError(f"MACs target {target:.3f} x dense is unreachable by narrowing the "
                    f"{len(candidates)} candidate units to dcvit.narrow_keep = "
                    f"{config.dcvit.narrow_keep}")
  narrow = registry.family(dense.spec.family).narrow_block
  model, done = dense, []
  for j, unit in enumerate(chosen):
    if j == 0:
      model, done = trials.recovered_narrow(unit), list(unit)
      continue
    for b, w in zip(unit, narrow_widths(config, dense.spec, unit)):
      model = narrow(model, b, w, config.seed)
    done = sorted(done + list(unit))
    model, _ = mimic(config, workdir, f"target{target:.3f}_narrow{j}", model, dense,
                     trainable_upto(model.spec, max(max(u) for u in chosen[:j + 1]) + 1),
                     config.dcvit.finetune_steps, writer, meta={"narrowed": done})
  info = {"target_ratio": target, "blocks": [], "dropped": [], "narrowed": done,
          "units": [list(u) for u in chosen], "mlp_width": 0, "ranking": ranking}
  return model, info


def narrow_targets(config, dense, trials: Trials, candidates) -> list[float]:
  """The narrow structure's family: `dcvit.targets`, else the MACs ratios of narrowing the top
  1, 2, ... ranked units (up to `dcvit.num_targets` members)."""
  if config.dcvit.targets:
    return [float(t) for t in config.dcvit.targets]
  ranked, _ = narrow_ranking(trials, candidates)
  dense_macs = accounting.macs(dense.spec)
  return [accounting.macs(narrowed_spec(config, dense.spec, ranked[:n])) / dense_macs
          for n in range(1, min(config.dcvit.num_targets, len(ranked)) + 1)]


def drop_targets(config, dense, trials: Trials, candidates) -> list[float]:
  """The drop structure's family: `dcvit.targets`, else the MACs ratios of dropping the top 1,
  2, ... ranked units (up to `dcvit.num_targets` members)."""
  if config.dcvit.targets:
    return [float(t) for t in config.dcvit.targets]
  ranked, _ = drop_ranking(trials, candidates)
  dense_macs = accounting.macs(dense.spec)
  return [accounting.macs(dense.spec.drop_blocks([b for u in ranked[:n] for b in u]))
          / dense_macs for n in range(1, min(config.dcvit.num_targets, len(ranked)) + 1)]


def search_to(config, workdir: str, dense, target: float, trials: Trials, candidates,
              writer) -> tuple[Any, dict[str, Any]]:
  """`dcvit.structure = "search"`: the structure for `target` chosen among drops, DC-ViT's rule
  and mixes (`structure_search.py`), then built progressively."""
  units_dropped = practise.drop_units(config, dense.spec)
  choice, scored = structure_search.choose(dense.spec, target, candidates, units_dropped,
                                           trials, config.dcvit.width_multiple)
  try:  # fine-tuning steps DC-ViT's rule spends here (k), so every structure gets as many
    rule = structure_for(dense.spec, target, len(candidates), config.dcvit.width_multiple,
                         unit=candidates[0])
  except UserError:  # the rule alone cannot reach this target; drops can
    rule = None
  searched = {"structure": choice.describe(), "candidates": [c.describe() for c in scored]}
  if rule and not choice.dropped and choice.hidden == rule.hidden:
    # DC-ViT's own structure won (same units: both take the top k of the exact trials): the
    # rule's model, whose phases `both` has already run and this call resumes.
    model, info = compress_to(config, workdir, dense, target, trials, candidates, writer)
    return model, {**info, "dropped": [], **searched}
  model = structure_search.build(config, workdir, dense, choice, rule.k if rule else 0,
                                 f"search{target:.3f}", trials, writer)
  info = {"target_ratio": target,  # block indices of the dense model, as in the rule's family
          "blocks": sorted(b for u in choice.compressed for b in u),
          "dropped": sorted(b for u in choice.dropped for b in u),
          "units": [list(u) for u in choice.compressed], "mlp_width": choice.hidden, **searched}
  return model, info


def check(config: ml_collections.ConfigDict) -> None:
  """Before any work: the dense model has candidate units and only MSA blocks."""
  spec = validate.planned_spec(config)
  group = group_of(config, spec)
  if not candidate_units(spec, group):
    raise UserError(f"DC-ViT finds no candidate unit of {group} block(s) in this model "
                    f"(stages {[len(s) for s in stages(spec)]} blocks; a candidate lies in the "
                    "longest stage and holds neither the first nor the last block): use a "
                    "deeper model (model.depth / model.variant / model.init_from) or a smaller "
                    "dcvit.group")
  structure = config.dcvit.get("structure", "rule")
  family = registry.family(spec.family)
  if not family.block_compression:
    if structure not in ("drop", "narrow"):
      raise UserError(f"dcvit.structure = {structure!r}: {spec.family!r} blocks have no "
                      "attention + MLP to compress; use 'drop' (DC-ViT on CNNs: whole blocks "
                      "dropped in the order of their synthetic-set KL) or 'narrow'")
  if structure == "narrow" and family.narrow_block is None:
    able = [f for f in registry.families() if registry.family(f).narrow_block]
    raise UserError(f"dcvit.structure = 'narrow': {spec.family!r} blocks cannot be narrowed; "
                    f"allowed in families {', '.join(able)}")
  if family.block_compression and any(b.attn != "msa" for b in spec.blocks):
    raise UserError("DC-ViT compresses a dense model: every block of model.init_from must be "
                    f"'msa', got {[b.attn for b in spec.blocks]}")
  if macs_convention(config) != "full" and config.dcvit.get("structure", "rule") != "rule":
    raise UserError(f"dcvit.macs_convention = {macs_convention(config)!r} applies to DC-ViT's "
                    f"rule only; dcvit.structure = {config.dcvit.structure!r} compares "
                    "structures in full MACs: use dcvit.structure = 'rule' or "
                    "macs_convention = 'full'")
  practise.check(config)


STRUCTURES = {"rule": (("family", compress_to),), "search": (("family", search_to),),
              "both": (("family", compress_to), ("searched", search_to)),
              "drop": (("family", drop_to),), "narrow": (("family", narrow_to),)}


def compress(config: ml_collections.ConfigDict, workdir: str, writer: MetricWriter) -> Outcome:
  """Phases 1-4 of the module docstring; with `dcvit.seeds`, phases 3-4 once per seed."""
  dense = pretrain.dense_model(config, workdir, writer)
  # The real few-shot images need no inversion: the synthetic set is made only to rank by.
  synthetic = (synthetic_set(config, workdir, dense) if metric_set(config) == "synthetic"
               else None)
  seeds = [int(x) for x in config.dcvit.get("seeds", ())]
  if not seeds:
    return compress_seed(config, workdir, dense, synthetic, writer)
  runs = {}  # one compression per few-shot set; dense model and synthetic set shared
  for i, seed in enumerate(seeds):
    if jax.process_index() == 0:
      print(f"[dcvit] few-shot seed {seed} ({i + 1} of {len(seeds)})", flush=True)
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.fewshot_seed = seed
    sub = os.path.join(workdir, "seeds", str(seed))
    seed_writer = MetricWriter(sub)  # each seed's phases logged beside its checkpoints
    try:
      runs[seed] = finish(compress_seed(c, sub, dense, synthetic, seed_writer), c, sub)
    finally:
      seed_writer.close()
  summary = over_seeds(runs)
  table, notes = report(config, workdir, summary, f"mean ± std over few-shot seeds {seeds}")
  return Outcome(summary, table=table, notes=notes)


def compress_seed(config, workdir: str, dense, synthetic, writer) -> Outcome:
  """PRACTISE and the DC-ViT family (or families: `dcvit.structure`) from one few-shot set."""
  candidates = candidate_units(dense.spec, group_of(config, dense.spec))
  mcfg = common.phase_config(config, "mimic")
  s = common.setup(mcfg)
  evaluate = lambda m: common.evaluate_model(mcfg, m, s)["accuracy"]  # noqa: E731
  trials = Trials(config, workdir, dense, synthetic, writer)

  # PRACTISE first: its MACs define the matched targets.
  pruned = practise.run_family(config, workdir, dense, writer)
  counted = accounting.CONVENTIONS[macs_convention(config)]  # what the targets' ratios count
  matched = [accounting.macs(m.spec, **counted) / accounting.macs(dense.spec, **counted)
             for m, _ in pruned]
  dense_macs = accounting.macs(dense.spec)
  structure = config.dcvit.get("structure", "rule")
  sweep = {"drop": drop_targets, "narrow": narrow_targets}.get(
      structure, lambda c, d, t, u: sweep_targets(c, d.spec, u))(config, dense, trials,
                                                                  candidates)
  targets = sorted(set(sweep + matched), reverse=True)
  families = {}
  for key, make in STRUCTURES[structure]:
    families[key] = []
    for target in targets:
      def compute(target=target, make=make):
        t0 = time.perf_counter()
        model, info = make(config, workdir, dense, target, trials, candidates, writer)
        return model, {"dcvit": {**info, "seconds": time.perf_counter() - t0}}

      out = os.path.join(workdir, key, f"{target:.3f}")
      model, extra = cached_model(out, compute, common.preprocessing(config))
      info = extra["dcvit"]
      accuracy = evaluate(model)
      families[key].append(({**info, "model_dir": out}, model, accuracy))
      if jax.process_index() == 0:
        what = ", ".join(([f"dropped {info['dropped']}"] if info.get("dropped") else []) + (
            [f"narrowed {info['narrowed']}"] if info.get("narrowed") else []) + (
            [f"compressed {info['blocks']} MLP {info['mlp_width']}"] if info["blocks"] else []))
        print(f"[dcvit] {key} target {target:.3f}: {what} → "
              f"{accounting.macs(model.spec) / dense_macs:.3f} MACs, accuracy {accuracy:.4f}",
              flush=True)

  # One table, timed together: dense, the families, PRACTISE.
  entries = [(dense, evaluate(dense))] + [(m, a) for fam in families.values()
                                         for _, m, a in fam] + [(m, evaluate(m)) for m, _ in pruned]
  rows = common.describe(entries, config.latency_batch)
  summary, at = {"dense": rows[0]}, 1
  for key, fam in families.items():
    summary[key] = [{**r, **info} for r, (info, _, _) in zip(rows[at:at + len(fam)], fam)]
    at += len(fam)
  summary["practise"] = [{**r, "dropped": d} for r, (_, d) in zip(rows[at:], pruned)]
  rule = summary["family"]
  summary["block_ranking"] = next((f["ranking"] for f in rule if "ranking" in f and
                                   f["target_ratio"] in matched), rule[0].get("ranking", {}))
  report_path = os.path.join(workdir, "synthetic", "report.json")
  summary["synthetic"] = json.load(open(report_path)) if os.path.exists(report_path) else {}
  models = {**{f"{key}_{info['target_ratio']:.3f}": info["model_dir"]
                for key, fam in families.items() for info, _, _ in fam},
            **practise.practise_dirs(config, workdir)}
  summary["trials"] = {"count": len(os.listdir(trials.dir)), "seconds": sum(
      json.load(open(os.path.join(trials.dir, f))).get("seconds", 0.0)
      for f in os.listdir(trials.dir) if f.endswith(".json"))}
  table, notes = report(config, workdir, summary, f"{config.data.fewshot} training images")
  return Outcome(summary, models=models, table=table, notes=notes)


def over_seeds(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
  """Per family member (by position) and PRACTISE model: mean ± std over the seeds' runs of
  accuracy, MACs, params and latency; every seed's row kept under `per_seed`."""
  first = next(iter(runs.values()))

  def combine(rows):
    out = {k: float(np.mean([r[k] for r in rows])) for k in
           ("accuracy", "macs", "params", "latency_ms")}
    out["accuracy_std"] = float(np.std([r["accuracy"] for r in rows]))
    out["per_seed"] = {str(s): r for s, r in zip(runs, rows)}
    return out

  # Each seed timed its models with its own dense model: speed-ups use the mean of those.
  summary = {"seeds": list(runs), "dense": {**first["dense"], **{
      k: v for k, v in combine([r["dense"] for r in runs.values()]).items() if k != "per_seed"}}}
  for key in [k for k in ("family", "searched", "practise") if k in first]:
    lengths = {len(r[key]) for r in runs.values()}
    if len(lengths) != 1:
      raise UserError(f"dcvit.seeds: the seeds' runs have different numbers of '{key}' models "
                      f"({sorted(lengths)}); compare them from each seed's summary.json")
    summary[key] = [combine([r[key][i] for r in runs.values()]) for i in range(lengths.pop())]
  return summary


def report(config, workdir: str, summary: dict[str, Any], what: str):
  """The plot (drawn on process 0) and the (table, notes) of a summary."""
  dense_row = summary["dense"]
  png = os.path.join(workdir, "family.png")
  if jax.process_index() == 0:
    from jaxprune.plot import accuracy_vs_macs
    png = accuracy_vs_macs(png, dense_row, summary["family"], summary["practise"],
                           searched=summary.get("searched", ()))
  names = {"family": "DC-ViT" if config.dcvit.get("structure", "rule") != "search"
           else "searched", "searched": "searched"}
  rows = [("dense", dense_row)]
  for key in ("family", "searched"):
    rows += [(f"{names[key]} {f['macs'] / dense_row['macs']:.3f}", f)
             for f in summary.get(key, ())]
  rows += [(f"PRACTISE drop {n}", p) for n, p in zip(config.practise.num_drop,
                                                     summary["practise"])]
  table = (f"DC-ViT family and PRACTISE, {what}; latency: median eval forward, "
           f"batch {config.latency_batch}", rows)
  notes = []
  if summary.get("block_ranking"):
    where = {"synthetic": "the synthetic set", "fewshot": "the real few-shot images"}[
        metric_set(config)]
    notes.append(f"block ranking (KL on {where}, lower = recovers better): "
                 f"{summary['block_ranking']}")
  notes.append(f"wrote {os.path.join(workdir, 'summary.json')} and {png}")
  return table, tuple(notes)


NONNEG, POSITIVE, FRACTION = validate.NONNEG, validate.POSITIVE, validate.FRACTION
METHOD = Method(
    "dcvit", compress, check=check,
    summary="DC-ViT: a dense family of compressed models from a few unlabeled images",
    paper="Dense Vision Transformer Compression with Few Samples (CVPR 2024, arXiv:2403.18708); "
          "github.com/Michelia-zhx/dcvit",
    rules=(("synthetic.num_images", POSITIVE), ("synthetic.steps", POSITIVE),
           ("synthetic.lr", validate.number(0, lo_open=True)),
           ("synthetic.warmup_steps", NONNEG), ("synthetic.tv_weight", validate.number(0)),
           ("synthetic.tv_exponent", validate.number(0, lo_open=True)),
           ("synthetic.l2_weight", validate.number(0)), ("synthetic.jitter", validate.integer(-1)),
           ("synthetic.tv_group", POSITIVE), ("synthetic.jpeg_quality", validate.integer(0, 95)),
           ("synthetic.bn_weight", validate.number(0)),
           ("synthetic.compute_dtype", validate.choice(*COMPUTE_DTYPES)),
           ("dcvit.targets", validate.each(FRACTION)), ("dcvit.num_targets", NONNEG),
           ("dcvit.trial_steps", POSITIVE), ("dcvit.finetune_steps", POSITIVE),
           ("dcvit.width_multiple", POSITIVE), ("dcvit.group", NONNEG),
           ("dcvit.narrow_keep", FRACTION),
           ("dcvit.structure", validate.choice(*STRUCTURES)),
           ("dcvit.metric_set", validate.choice("synthetic", "fewshot")),
           ("dcvit.macs_convention", validate.choice(*accounting.CONVENTIONS)),
           ("dcvit.metric_temperature", validate.number(0, lo_open=True)),
           ("dcvit.seeds", validate.each(validate.SEED)),
           ("dcvit.shared_trials", validate.boolean)),
    outputs=frozenset({"synthetic", "trials", "family", "family.png", "practise", "searched",
                       "seeds"}),
    # dcvit.seeds: every seed runs in its own seeds/<seed>/ folder, so a resume with more seeds
    # adds their runs and keeps the finished ones; dcvit.trial_accuracy only adds a measurement
    # to the trials it runs (nothing is chosen by it).
    neutral=frozenset({"dcvit.seeds", "dcvit.trial_accuracy"}),
    added_defaults={"synthetic.tv_group": 1, "synthetic.bn_weight": 0.0,
                    "synthetic.compute_dtype": "float32", "dcvit.structure": "rule",
                    "dcvit.metric_set": "synthetic", "dcvit.metric_temperature": 1.0,
                    "dcvit.macs_convention": "full", "dcvit.narrow_keep": 0.5,
                    "dcvit.shared_trials": False})
