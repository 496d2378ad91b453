"""Flax NNX models built from an ArchSpec. They know nothing of training, flags or checkpoints."""

from jaxprune.models.build import build_model, split_model
from jaxprune.models.gates import Gate
from jaxprune.models.vit import ViT  # registers family "vit" (first: the default family)
from jaxprune.models.swin import Swin  # noqa: I001  registers family "swin"
from jaxprune.models.resnet import ResNet  # noqa: I001  registers family "resnet"

__all__ = ["Gate", "ResNet", "Swin", "ViT", "build_model", "split_model"]
