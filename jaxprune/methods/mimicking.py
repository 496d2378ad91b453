"""Feature mimicking: recover a compressed student from the original model on unlabeled images.

Loss: MSE between the student's and the original model's final-norm tokens, all tokens (labels
are never used). What trains is chosen by path rules (optax masking), so frozen later blocks
still pass gradients to the trainable earlier ones. Shared by DC-ViT (block trials, progressive
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

from jaxprune.arch import ArchSpec
from jaxprune.methods import common
from jaxprune.surgery import block_slots
from jaxprune.methods.phase import train_phase
from jaxprune.train.logging import MetricWriter


def freeze_after(last: int, spec: ArchSpec) -> str:
  """Regex freezing everything after block `last + 1` (later blocks, later patch merging) and
  the head(s): DC-ViT's trainable set is the embeddings, the layers up to block last+1 and the
  final norm."""
  coll, slots = block_slots(spec)
  first_frozen = slots[last + 2] if last + 2 < len(slots) else None
  rules = [r"^weights/head"]
  if first_frozen is not None:
    later = [str(j) for j in range(first_frozen, len(spec.layers))]  # a ViT's layers = blocks
    rules.append(rf"^weights/{coll}/({'|'.join(later)})/")
  return "|".join(rules)


def mimic_loss(config: ml_collections.ConfigDict, num_classes: int, teacher_graphdef):
  def loss_fn(model, batch, key, teacher_state):
    x, _ = common.preprocess(config, num_classes, batch, key, train=True)
    target = nnx.merge(teacher_graphdef, teacher_state).features(x)
    feats = model.features(x, train=True)
    return jnp.mean((feats - jax.lax.stop_gradient(target))**2), {}

  return loss_fn


def feature_mse(config, model, teacher, s: common.Setup) -> float:
  """Mean squared feature error of `model` vs `teacher` over the (few-shot) training images."""
  x = jnp.asarray(common.split_images(config, s.train))
  return float(jnp.mean((model.features(x) - teacher.features(x))**2))


def mimic(config: ml_collections.ConfigDict, workdir: str, phase: str, student, teacher,
          frozen: str, steps: int, writer: MetricWriter, setup: common.Setup | None = None,
          meta: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
  """Fine-tunes `student` to mimic `teacher`'s features for `steps` steps (resumable phase).

  `config.mimic.{train, optim}` give the recipe; `frozen` overrides `optim.frozen`; `meta` adds
  to the checkpoints' metadata (e.g. `dropped`, which a resume must match).
  Returns (student, {"feature_mse": ...} on the training images).
  """
  cfg = common.phase_config(config, "mimic")
  cfg.optim.frozen = frozen
  s = setup or common.setup(cfg)
  teacher_graphdef, teacher_state = nnx.split(teacher)
  t = train_phase(cfg, workdir, phase, student,
                  mimic_loss(cfg, s.data.num_classes, teacher_graphdef), s, writer, steps=steps,
                  aux=teacher_state, evaluate=False,
                  meta={"arch": student.spec.to_dict(), **(meta or {})},
                  show=("loss",))
  return t.model, {"feature_mse": feature_mse(cfg, t.model, teacher, s)}
