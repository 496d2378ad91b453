"""What every method needs: its data, its dense spec, a supervised loss and an evaluator."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxprune.arch import ArchSpec, dense_spec
from jaxprune.data import (Dataset, Subset, TrainBatches, augment, eval_batches,
                           fewshot_indices, load_source, normalise)
from jaxprune.errors import UserError
from jaxprune.train.mesh import check_batch, data_sharding, make_mesh
from jaxprune.train.step import make_eval_step, soft_cross_entropy


@dataclasses.dataclass
class Setup:
  """The mesh, the data set (train possibly a few-shot subset) and the train batch source."""

  mesh: Any
  data: Dataset
  train: Any  # Split
  batches: TrainBatches


def setup(config: ml_collections.ConfigDict) -> Setup:
  check_batch(config.train.batch_size)
  mesh = make_mesh()
  ds = load_source(config.data.source, config.model.image_size or None,
                   config.data.tfds_dir or None)
  train = ds.train
  if config.data.fewshot:
    train = Subset(ds.train, fewshot_indices(ds.train.labels, config.data.fewshot,
                                             config.data.fewshot_seed,
                                             config.data.fewshot_balanced))
  channels = ds.image_shape[2]
  for field in ("mean", "std"):
    if len(config.data[field]) not in (1, channels):
      raise UserError(f"data.{field} = {tuple(config.data[field])}: needs 1 or {channels} "
                      f"values for the {channels}-channel source {ds.name}")
  batches = TrainBatches(train, config.train.batch_size, config.seed, data_sharding(mesh))
  return Setup(mesh, ds, train, batches)


def model_spec(config: ml_collections.ConfigDict, ds: Dataset) -> ArchSpec:
  """The dense spec from `config.model`, sized for the data set's classes and channels."""
  m = config.model
  return dense_spec(m.variant, image_size=m.image_size or ds.image_shape[0],
                    patch_size=m.patch_size, num_classes=ds.num_classes,
                    in_channels=ds.image_shape[2], depth=m.depth or None, width=m.width or None,
                    num_heads=m.num_heads or None, mlp_ratio=m.mlp_ratio or None,
                    distilled=m.distilled)


def initial_model(config: ml_collections.ConfigDict, ds: Dataset, spec: ArchSpec):
  """`config.model.init_from` (a saved jaxprune model) when set, else a fresh `spec` model."""
  from jaxprune.export import load
  from jaxprune.models import build_model
  if not config.model.init_from:
    return build_model(spec, seed=config.seed)
  model = load(config.model.init_from)
  got = model.spec
  if (got.num_classes, got.in_channels, got.image_size) != (ds.num_classes, ds.image_shape[2],
                                                             ds.image_shape[0]):
    raise UserError(f"model.init_from = {config.model.init_from!r}: the model takes "
                    f"{got.image_size}px {got.in_channels}-channel images into {got.num_classes} "
                    f"classes, but {ds.name} has {ds.image_shape[0]}px {ds.image_shape[2]}-channel "
                    f"images in {ds.num_classes} classes")
  return model


def total_steps(config: ml_collections.ConfigDict, s: Setup) -> int:
  if config.train.steps:
    return int(config.train.steps)
  return int(config.train.epochs) * s.batches.steps_per_epoch


def preprocess(config: ml_collections.ConfigDict, num_classes: int, batch, key, train: bool):
  """uint8 batch → (normalised float images, soft targets), augmented when `train`."""
  x = batch["image"].astype(jnp.float32) / 255.0
  if train:
    x, targets = augment(key, x, batch["label"], num_classes, config.data.augment)
  else:
    targets = jax.nn.one_hot(batch["label"], num_classes)
  return normalise(x, config.data.mean, config.data.std), targets


def supervised_loss(config: ml_collections.ConfigDict, num_classes: int) -> Callable:
  """Cross-entropy (label smoothing from `train.label_smoothing`) on augmented batches."""

  def loss_fn(model, batch, key):
    x, targets = preprocess(config, num_classes, batch, key, train=True)
    logits = model(x, train=True)
    loss = soft_cross_entropy(logits, targets, config.train.label_smoothing)
    acc = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
    return loss, {"accuracy": acc}

  return loss_fn


def evaluator(config: ml_collections.ConfigDict, graphdef, s: Setup,
              split: Any | None = None) -> Callable[[Any], dict[str, float]]:
  """`state -> {"accuracy", "loss"}` over the test split (or `split`)."""
  eval_step = make_eval_step(graphdef, s.mesh)
  split = s.data.test if split is None else split
  mean, std = config.data.mean, config.data.std

  def evaluate(state) -> dict[str, float]:
    totals = {"correct": 0.0, "count": 0.0, "loss_sum": 0.0}
    for batch in eval_batches(split, config.train.batch_size, data_sharding(s.mesh)):
      batch = dict(batch, image=normalise(batch["image"], mean, std))
      out = jax.device_get(eval_step(state, batch))
      for k in totals:
        totals[k] += float(out[k])
    return {"accuracy": totals["correct"] / totals["count"],
            "loss": totals["loss_sum"] / totals["count"]}

  return evaluate


def write_summary(workdir: str, summary: dict[str, Any]) -> str:
  path = os.path.join(workdir, "summary.json")
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(summary, f, indent=2, default=lambda o: np.asarray(o).tolist())
  return path
