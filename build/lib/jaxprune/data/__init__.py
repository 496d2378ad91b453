"""Inputs: offline sources, few-shot subsets, step-indexed batches, on-device augmentation."""

from jaxprune.data.augment import augment, normalise
from jaxprune.data.pipeline import (Subset, TrainBatches, batch_indices, eval_batches,
                                    fewshot_indices)
from jaxprune.data.sources import SOURCES, Dataset, load_source

__all__ = ["SOURCES", "Dataset", "Subset", "TrainBatches", "augment", "batch_indices",
           "eval_batches", "fewshot_indices", "load_source", "normalise"]
