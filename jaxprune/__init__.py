"""jaxprune: compress pre-trained Vision Transformers in JAX/Flax."""

from jaxprune.accounting import count, macs, measure_latency, params
from jaxprune.arch import ArchSpec, BlockSpec, MergeSpec, dense_spec
from jaxprune.models.swin import swin_spec
from jaxprune.export import load, save_model
from jaxprune.models import Gate, Swin, ViT, build_model, split_model

__all__ = ["ArchSpec", "BlockSpec", "Gate", "MergeSpec", "Swin", "ViT", "build_model", "count",
           "dense_spec", "load", "macs", "measure_latency", "params", "save_model", "split_model",
           "swin_spec"]
