"""SPViT: single-path search of MSA → convolution and FFN width under a MACs target.

Phases (each checkpointed; a rerun resumes where it stopped):
  1. dense        the pretrained model (`model.init_from`, or pre-trained here)
  2. search       every MSA layer a nested choice skip ⊂ conv1 ⊂ conv3 ⊂ msa, every FFN unit gated;
                  loss = task + λ·(F_target − F(gates))² in GMACs. At each evaluation the gates
                  are read into an ArchSpec; the search stops once one is within tolerance.
  3. materialise  the chosen ArchSpec as a physically smaller model (from the search-end or the
                  original weights), exported to `workdir/search/compact`
  4. finetune     cross-entropy + distillation from the dense model; exported to `workdir/pruned`
  5. compare      params, MACs, accuracy and measured latency, dense vs pruned → summary.json
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx

from jaxprune import accounting
from jaxprune.atomic import write_json
from jaxprune.arch import ArchSpec
from jaxprune.export import load, save_model
from jaxprune.methods import common
from jaxprune.models.gates import Gate, op_coefficients
from jaxprune.models.spvit import SearchOptions, build_search_model
from jaxprune.surgery import derive_arch, materialise
from jaxprune.train.logging import MetricWriter, truncate_jsonl
from jaxprune.train.loop import Schedule, fit
from jaxprune.train.optim import make_optimizer
from jaxprune.train.step import init_state, make_train_step, merge, place


def search_options(config) -> SearchOptions:
  return SearchOptions(alpha=config.spvit.alpha, ffn_group=config.spvit.ffn_group,
                       temperature=config.spvit.temperature)


def gate_readout(model) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(MACs of the thresholded gates, op depth per layer, kept FFN width per layer), traceable."""
  coefs, masks, depth, width = [], [], [], []
  for block in model.blocks:
    c, mask = block.gates(None)
    coefs.append(op_coefficients(c))
    masks.append(mask)
    depth.append(jnp.sum(jax.lax.stop_gradient(c)))
    width.append(jnp.sum(jax.lax.stop_gradient(mask)))
  f = accounting.search_macs(model.spec, coefs, masks, [b.head_dim for b in model.blocks])
  return f, jnp.stack(depth), jnp.stack(width)


def search_loss(config, num_classes: int, target_macs: float, budget_weight: float):
  """Task loss on the sampled path + λ·(F_target − F)² on the thresholded path, in GMACs."""
  ls = config.search.train.label_smoothing

  def loss_fn(model, batch, key):
    data_key, gate_key = jax.random.split(key)
    x, targets = common.preprocess(config, num_classes, batch, data_key, train=True)
    logits = model(x, train=True, gate_key=gate_key)
    task = common.soft_cross_entropy(logits, targets, ls)
    f, depth, width = gate_readout(model)
    budget = budget_weight * ((target_macs - f) / 1e9)**2
    return task + budget, {"task_loss": task, "budget_loss": budget,
                           "macs_ratio": f / (target_macs / config.spvit.target_ratio),
                           "ops": depth, "ffn_width": width}

  return loss_fn


def auto_budget_weight(config, search_model, s: common.Setup, target_macs: float,
                       dense_macs: float) -> float:
  """λ so that the budget term is `spvit.budget_scale` × the task loss at step 0 (the authors'
  rule of thumb, made automatic): λ = scale·L0 / ((1 − r)·F_dense)², F in GMACs, where L0 is
  the training-path task loss (sampled gates, augmentation, label smoothing) on the first batch.
  """
  loss_fn = search_loss(config, s.data.num_classes, target_macs, 0.0)
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  _, metrics = loss_fn(search_model, s.batches(0), key)
  l0 = float(metrics["task_loss"])
  gap = (1 - config.spvit.target_ratio) * dense_macs / 1e9
  return config.spvit.budget_scale * max(l0, 1e-3) / gap**2


def arch_summary(arch: ArchSpec) -> str:
  return " ".join(f"{b.attn}/{b.mlp}" for b in arch.blocks)


def run_search(config, workdir: str, dense, writer: MetricWriter) -> tuple[ArchSpec, Any, dict]:
  """Searches, selects and returns (arch, search-end model, record)."""
  scfg = common.phase_config(config, "search")
  s = common.setup(scfg)
  dense_macs = accounting.macs(dense.spec)
  target = config.spvit.target_ratio * dense_macs
  model = build_search_model(dense, search_options(config))
  weight = config.spvit.budget_weight or auto_budget_weight(scfg, model, s, target, dense_macs)
  steps = common.total_steps(scfg, s)
  graphdef, state, tx = init_state(model, lambda p: make_optimizer(scfg.optim, p, steps))
  state = place(state, s.mesh)
  step_fn = make_train_step(graphdef, tx, search_loss(scfg, s.data.num_classes, target, weight),
                            s.mesh, config.seed)
  accuracy = common.evaluator(scfg, graphdef, s)
  history_path = os.path.join(workdir, "search", "archs.jsonl")
  os.makedirs(os.path.dirname(history_path), exist_ok=True)
  tol = config.spvit.tolerance

  def evaluate(st) -> dict[str, float]:
    arch = derive_arch(merge(graphdef, jax.device_get(st)))
    ratio = accounting.macs(arch) / dense_macs
    out = dict(accuracy(st), arch_macs_ratio=ratio)
    if jax.process_index() == 0:
      with open(history_path, "a") as f:
        f.write(json.dumps({"step": int(st["step"]), "macs_ratio": ratio,
                            "accuracy": out["accuracy"], "arch": arch.to_dict()}) + "\n")
      print(f"[search] derived arch (attn/mlp per block): {arch_summary(arch)} | MACs ratio "
            f"{ratio:.3f} (target {config.spvit.target_ratio} ± {tol:.0%})", flush=True)
    return out

  def met(step, metrics) -> bool:
    return abs(metrics["arch_macs_ratio"] - config.spvit.target_ratio) <= \
        tol * config.spvit.target_ratio

  schedule = Schedule(total_steps=steps, log_every=scfg.train.log_every,
                      eval_every=config.spvit.eval_every, checkpoint_every=scfg.train.checkpoint_every)
  state, metrics = fit(workdir=workdir, phase="search", state=state, train_step=step_fn,
                       batches=s.batches, schedule=schedule, writer=writer, evaluate=evaluate,
                       stop_when=met, show=("task_loss", "budget_loss", "macs_ratio"),
                       on_start=lambda start: truncate_jsonl(
                           history_path, lambda row: row["step"] <= start),
                       meta={"arch": dense.spec.to_dict(), "budget_weight": weight})
  search_model = merge(graphdef, jax.device_get(state))
  arch = derive_arch(search_model)
  ratio = accounting.macs(arch) / dense_macs
  within = met(0, {"arch_macs_ratio": ratio})
  if not within:
    logging.warning("search ended without meeting the target: MACs ratio %.3f vs %.3f",
                    ratio, config.spvit.target_ratio)
    print(f"[search] WARNING: target not met within {steps} steps: MACs ratio {ratio:.3f} vs "
          f"{config.spvit.target_ratio} (raise search.train.epochs or spvit.budget_weight)")
  record = {"step": int(state["step"]), "macs_ratio": ratio, "within_tolerance": within,
            "budget_weight": weight, "search_accuracy": metrics.get("accuracy")}
  return arch, search_model, record


def original_weights_model(dense, search_model, config):
  """A search model holding the original dense weights and the search's final gates."""
  fresh = build_search_model(dense, search_options(config))
  nnx.update(fresh, nnx.state(search_model, Gate))
  return fresh


def finetune_loss(config, num_classes: int, teacher_graphdef):
  d = config.finetune.distill

  def loss_fn(model, batch, key, teacher_state):
    x, targets = common.preprocess(config, num_classes, batch, key, train=True)
    teacher = nnx.merge(teacher_graphdef, teacher_state)
    student = model(x, train=True, return_dist=True)
    loss = common.distillation_loss(student, teacher(x), targets, d.kind, d.weight,
                                    d.temperature, config.finetune.train.label_smoothing)
    acc = jnp.mean(jnp.argmax(student[0], -1) == jnp.argmax(targets, -1))
    return loss, {"accuracy": acc}

  return loss_fn


def run_finetune(config, workdir: str, compact, dense, writer: MetricWriter):
  fcfg = common.phase_config(config, "finetune")
  s = common.setup(fcfg)
  steps = common.total_steps(fcfg, s)
  graphdef, state, tx = init_state(compact, lambda p: make_optimizer(fcfg.optim, p, steps))
  state = place(state, s.mesh)
  teacher_graphdef, teacher_state = nnx.split(dense)
  step_fn = make_train_step(graphdef, tx, finetune_loss(config, s.data.num_classes,
                                                        teacher_graphdef),
                            s.mesh, config.seed + 1, aux=teacher_state)
  spe = s.batches.steps_per_epoch
  schedule = Schedule(total_steps=steps, log_every=fcfg.train.log_every,
                      eval_every=fcfg.train.eval_every_epochs * spe,
                      checkpoint_every=fcfg.train.checkpoint_every)
  state, metrics = fit(workdir=workdir, phase="finetune", state=state, train_step=step_fn,
                       batches=s.batches, schedule=schedule, writer=writer,
                       evaluate=common.evaluator(fcfg, graphdef, s),
                       meta={"arch": compact.spec.to_dict()})
  return merge(graphdef, jax.device_get(state)), metrics


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  writer = MetricWriter(workdir)
  dense = common.dense_model(config, workdir, writer)
  eval_setup = common.setup(common.phase_config(config, "finetune"))
  dense_acc = common.evaluate_model(common.phase_config(config, "finetune"), dense,
                                    eval_setup)["accuracy"]

  compact_dir = os.path.join(workdir, "search", "compact")
  record_path = os.path.join(workdir, "search", "selected.json")
  if os.path.exists(record_path):
    compact = load(compact_dir)
    with open(record_path) as f:
      record = json.load(f)
  else:
    arch, search_model, record = run_search(config, workdir, dense, writer)
    source = (search_model if config.spvit.finetune_from == "search"
              else original_weights_model(dense, search_model, config))
    compact = materialise(source, arch)
    save_model(compact_dir, compact, extra={"selected": record})
    if jax.process_index() == 0:
      write_json(record_path, record, indent=2)

  pruned, metrics = run_finetune(config, workdir, compact, dense, writer)
  save_model(os.path.join(workdir, "pruned"), pruned, extra={"test_accuracy": metrics["accuracy"]})

  batch = config.latency_batch
  rows = list(zip(("dense", "pruned (SPViT)"),
                  common.describe([(dense, dense_acc), (pruned, metrics["accuracy"])], batch)))
  summary = {"dense": rows[0][1], "pruned": rows[1][1], "arch": pruned.spec.to_dict(),
             "target_ratio": config.spvit.target_ratio, "selected": record,
             "macs_ratio": rows[1][1]["macs"] / rows[0][1]["macs"],
             "speedup": rows[0][1]["latency_ms"] / rows[1][1]["latency_ms"]}
  common.write_summary(workdir, summary)
  writer.close()
  common.print_table(f"SPViT, target {config.spvit.target_ratio:.0%} of dense MACs; latency: "
                     f"median eval forward, batch {batch}", rows)
  if jax.process_index() == 0:
    print(f"selected arch (attn/mlp per block): {arch_summary(pruned.spec)}\n"
          f"MACs ratio {summary['macs_ratio']:.3f}, measured speed-up {summary['speedup']:.2f}x; "
          f"wrote {os.path.join(workdir, 'summary.json')}")
  return summary
