"""Dense training of a ViT/DeiT from scratch (the embedded default has no pretrained weights).

Phases: train (checkpointed, resumable) → export to `workdir/model` → summary.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from flax import nnx

from jaxprune import accounting
from jaxprune.export import save_model
from jaxprune import validate
from jaxprune.methods import Method, Outcome, common
from jaxprune.methods.cache import cached_model
from jaxprune.methods.phase import train_phase
from jaxprune.train.logging import MetricWriter


def train_dense(config: ml_collections.ConfigDict, workdir: str, writer: MetricWriter,
                phase: str = "pretrain") -> tuple[nnx.Module, dict[str, Any]]:
  """Trains the dense model of `config`; returns (model, test metrics)."""
  s = common.setup(config)
  model = common.initial_model(config, s.data, common.model_spec(config, s.data))
  t = train_phase(config, workdir, phase, model,
                  common.supervised_loss(config, model.spec.num_classes), s, writer,
                  meta={"arch": model.spec.to_dict(), "config": config.to_dict()})
  return t.model, t.metrics


def dense_model(config: ml_collections.ConfigDict, workdir: str, writer) -> Any:
  """The dense model a compression method starts from: `config.model.init_from` when set, else
  the model pre-trained (once; reused on reruns) into `workdir/dense` with `config.pretrain`
  (its own `pretrain.fewshot`, 0 = the whole training set)."""
  cfg = common.phase_config(config, "pretrain")
  cfg.data.fewshot = config.pretrain.get("fewshot", 0)  # few-shot sets are for compression only
  if config.model.init_from:
    s = common.setup(cfg)
    return common.initial_model(config, s.data, common.model_spec(config, s.data))
  model, _ = cached_model(os.path.join(workdir, "dense"),
                          lambda: (train_dense(cfg, workdir, writer, phase="pretrain")[0], {}),
                          common.preprocessing(config))
  return model


def compress(config: ml_collections.ConfigDict, workdir: str, writer: MetricWriter) -> Outcome:
  """Trains the dense model, saves it to `workdir/model`, measures it."""
  model, metrics = train_dense(config, workdir, writer)
  out_dir = os.path.join(workdir, "model")
  save_model(out_dir, model, extra={"test_accuracy": metrics["accuracy"]},
             preprocessing=common.preprocessing(config))
  latency = accounting.measure_latency(model, batch=64)
  c = accounting.count(model.spec)
  summary = {"dense": {"params": c.params, "macs": c.macs, "accuracy": metrics["accuracy"],
                       "latency_ms": latency["median_ms"]},
             "model_dir": out_dir}
  return Outcome(summary, models={"dense": out_dir}, notes=(
      f"dense model: {c.params / 1e3:.1f}k params, {c.macs / 1e6:.2f}M MACs, test accuracy "
      f"{metrics['accuracy']:.4f}, latency {latency['median_ms']:.2f} ms (batch 64); saved to "
      f"{out_dir}",))


METHOD = Method(
    "pretrain", compress, summary="dense training of any family (the models the others compress)",
    rules=(("pretrain.fewshot", validate.NONNEG),), phases=("pretrain.train",),
    outputs=frozenset({"model", "dense"}))
