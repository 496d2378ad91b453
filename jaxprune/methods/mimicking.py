"""Feature mimicking: recover a compressed student from the original model on unlabeled images.

Loss: MSE between the student's and the original model's final-norm tokens, all tokens (labels
are never used). What trains is an NNX filter of the student's weights (the rest is frozen by
optax masking), so frozen later blocks still pass gradients to the trainable earlier ones. Shared by DC-ViT (block trials, progressive
steps) and PRACTISE (adaptors, end-to-end fine-tune).

The reference also scales the loss by min(epoch/20, 1); under AdamW a constant loss scale does
not change the updates, so jaxprune relies on the learning-rate warm-up for the same effect.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxprune import registry
from jaxprune.arch import ArchSpec
from jaxprune.methods import common
from jaxprune.methods.phase import train_phase
from jaxprune.train.logging import MetricWriter


def trainable_upto(spec: ArchSpec, last: int):
  """DC-ViT's trainable set when block `last` is the last one that trains: the embeddings, the
  layers up to block `last` and the final norm (`registry.Family.trainable_upto`)."""
  return registry.family(spec.family).trainable_upto(spec, last)


def mimic_loss(config: ml_collections.ConfigDict, num_classes: int, teacher_graphdef,
               train_mode: bool = True):
  """MSE of the student's features to the teacher's; `train_mode` False runs the student's
  BatchNorms on their running statistics (frozen), as PRACTISE's adaptor phases do."""
  def loss_fn(model, batch, key, teacher_state):
    x, _ = common.preprocess(config, num_classes, batch, key, train=True)
    target = nnx.merge(teacher_graphdef, teacher_state).features(x)
    feats = model.features(x, train=train_mode, **common.remat(config.train))
    return jnp.mean((feats - jax.lax.stop_gradient(target))**2), {}

  return loss_fn


def feature_mse(config, model, teacher, s: common.Setup) -> float:
  """Mean squared feature error of `model` vs `teacher` over the (few-shot) training images."""
  x = jnp.asarray(common.split_images(config, s.train))
  return float(jnp.mean((model.features(x) - teacher.features(x))**2))


def mimic(config: ml_collections.ConfigDict, workdir: str, phase: str, student, teacher,
          trainable, steps: int, writer: MetricWriter, setup: common.Setup | None = None,
          meta: dict[str, Any] | None = None, train_mode: bool = True,
          shared: str | None = None) -> tuple[Any, dict[str, Any]]:
  """Fine-tunes `student` to mimic `teacher`'s features for `steps` steps (resumable phase).

  `config.mimic.{train, optim}` give the recipe; `trainable` (an NNX filter, e.g.
  `trainable_upto`) is what trains, on top of `mimic.optim.frozen`; `meta` adds
  to the checkpoints' metadata (e.g. `dropped`, which a resume must match); `shared`: as
  `train_phase` (the mimicking loss is the same for one config).
  Returns (student, {"feature_mse": ...} on the training images).
  """
  cfg = common.phase_config(config, "mimic")
  s = setup or common.setup(cfg)
  teacher_graphdef, teacher_state = nnx.split(teacher)
  t = train_phase(cfg, workdir, phase, student,
                  mimic_loss(cfg, s.data.num_classes, teacher_graphdef, train_mode), s, writer,
                  steps=steps,
                  aux=teacher_state, evaluate=False,
                  meta={"arch": student.spec.to_dict(), **(meta or {})},
                  show=("loss",), trainable=trainable, shared=shared and f"mimic/{shared}/{train_mode}")
  return t.model, {"feature_mse": feature_mse(cfg, t.model, teacher, s)}
