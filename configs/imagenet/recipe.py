"""The ImageNet setting of the papers, shared by the configs in this folder.

A pretrained model (`model.init_from`: e.g. `python -m jaxprune.convert` of a Hugging Face DeiT)
and ImageNet (`data.source`: `tfds:imagenet2012` prepared offline, or `folder:<path>` holding
train/<class>/*.JPEG and test/<class>/*.JPEG) at 224 px; the normalisation comes with the model.
The DeiT recipe: RandomResizedCrop(0.08-1, bicubic) + flip on the host, Mixup 0.8 / CutMix 1.0
(switch 0.5), RandAugment (m9, mstd 0.5), Random Erasing 0.25, repeated augmentation (3),
label smoothing 0.1, drop-path 0.1, eval resize 256 → centre 224, AdamW wd 0.05, bfloat16
compute over float32 parameters (set `train.compute_dtype=float32` on CPU).

`:smoke` shrinks every count so a run takes a minute or two on a CPU with any small 224 px
folder (a handful of images per class), to check a setup end to end before the real job.
"""

import ml_collections

from configs import common

IMAGENET = "tfds:imagenet2012"
DEIT_AUGMENT = dict(crop_scale_min=0.08, shift=0, flip=True, mixup=0.8, cutmix=1.0, erase=0.25,
                    randaugment=9.0, randaugment_std=0.5, repeats=3)
# Smoke runs: no batch mixing or erasing (a handful of images), the crop and flip kept.
SMOKE_AUGMENT = dict(DEIT_AUGMENT, mixup=0.0, cutmix=0.0, erase=0.0)  # RandAugment, repeats kept
BATCH = 1024  # global; lr values below are for it (DeiT's linear scaling: lr × batch / 512)


def check_arg(arg: str | None) -> bool:
  """Whether the config argument asks for the smoke version."""
  if arg not in (None, "", "smoke"):
    raise ValueError(f"config argument {arg!r} is unknown; allowed: smoke")
  return arg == "smoke"


def train(smoke: bool, epochs: int, **overrides) -> ml_collections.ConfigDict:
  if smoke:
    return common.train_config(batch_size=8, steps=4, log_every=2, eval_every_epochs=0,
                               checkpoint_every=4, label_smoothing=0.1,
                               compute_dtype="float32", drop_path=0.1)
  return common.train_config(batch_size=BATCH, epochs=epochs, label_smoothing=0.1,
                             drop_path=0.1, log_every=100, eval_every_epochs=5,
                             checkpoint_every=1000, compute_dtype="bfloat16", **overrides)


def base(method: str, variant: str, smoke: bool) -> ml_collections.ConfigDict:
  """Model, data and the dense model's recipe (used only when `model.init_from` is empty: DeiT's
  300-epoch ImageNet training)."""
  config = ml_collections.ConfigDict()
  config.method = method
  config.seed = 0
  config.model = common.model_config(variant, image_size=224, patch_size=16)
  config.data = common.data_config(IMAGENET, augment=SMOKE_AUGMENT if smoke else DEIT_AUGMENT,
                                   eval_crop=0.875)
  config.pretrain = ml_collections.ConfigDict({
      "train": train(smoke, 300),
      "optim": common.optim_config(lr=1e-3, warmup_steps=5 * 1251, weight_decay=0.05,
                                   grad_clip=0.0),
      "fewshot": 0,
  })
  config.latency_batch = 8 if smoke else 64
  return config
