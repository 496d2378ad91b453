"""Dense training of a ViT/DeiT from scratch (the embedded default has no pretrained weights).

Phases: train (checkpointed, resumable) → export to `workdir/model` → summary.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from flax import nnx

from jaxprune import accounting
from jaxprune.export import save_model
from jaxprune.methods import common
from jaxprune.train.logging import MetricWriter
from jaxprune.train.loop import Schedule, fit
from jaxprune.train.optim import make_optimizer
from jaxprune.train.step import init_state, make_train_step, merge, place


def train_dense(config: ml_collections.ConfigDict, workdir: str, writer: MetricWriter,
                phase: str = "pretrain") -> tuple[nnx.Module, dict[str, Any]]:
  """Trains the dense model of `config`; returns (model, test metrics)."""
  s = common.setup(config)
  spec = common.model_spec(config, s.data)
  steps = common.total_steps(config, s)
  model = common.initial_model(config, s.data, spec)
  spec = model.spec
  graphdef, state, tx = init_state(model, lambda p: make_optimizer(config.optim, p, steps))
  state = place(state, s.mesh)
  train_step = make_train_step(graphdef, tx, common.supervised_loss(config, spec.num_classes),
                               s.mesh, config.seed)
  spe = s.batches.steps_per_epoch
  schedule = Schedule(total_steps=steps, log_every=config.train.log_every,
                      eval_every=config.train.eval_every_epochs * spe,
                      checkpoint_every=config.train.checkpoint_every)
  state, metrics = fit(workdir=workdir, phase=phase, state=state, train_step=train_step,
                       batches=s.batches, schedule=schedule, writer=writer,
                       meta={"arch": spec.to_dict(), "config": config.to_dict()},
                       evaluate=common.evaluator(config, graphdef, s))
  return merge(graphdef, jax.device_get(state)), metrics


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  writer = MetricWriter(workdir)
  model, metrics = train_dense(config, workdir, writer)
  out_dir = os.path.join(workdir, "model")
  save_model(out_dir, model, extra={"test_accuracy": metrics["accuracy"]})
  latency = accounting.measure_latency(model, batch=64)
  c = accounting.count(model.spec)
  summary = {"dense": {"params": c.params, "macs": c.macs, "accuracy": metrics["accuracy"],
                       "latency_ms": latency["median_ms"]},
             "model_dir": out_dir}
  common.write_summary(workdir, summary)
  writer.close()
  if jax.process_index() == 0:
    print(f"dense model: {c.params / 1e3:.1f}k params, {c.macs / 1e6:.2f}M MACs, "
          f"test accuracy {metrics['accuracy']:.4f}, latency {latency['median_ms']:.2f} ms "
          f"(batch 64); saved to {out_dir}")
  return summary
