"""Config pieces shared by every jaxprune config (a Python config file is `get_config(arg)`)."""

import ml_collections


def _with(defaults: dict, overrides: dict) -> ml_collections.ConfigDict:
  """`defaults` updated by `overrides`; a dict override updates its section field by field."""
  unknown = sorted(set(overrides) - set(defaults))
  if unknown:
    raise KeyError(f"unknown config fields {unknown}")
  merged = dict(defaults)
  for k, v in overrides.items():
    merged[k] = _with(defaults[k], v).to_dict() if isinstance(defaults[k], dict) else v
  return ml_collections.ConfigDict(merged)


def model_config(variant: str = "test_small", image_size: int = 28, patch_size: int = 4,
                 **overrides) -> ml_collections.ConfigDict:
  """The dense model. `num_classes` and `in_channels` come from the data set."""
  return _with(dict(
      variant=variant, image_size=image_size, patch_size=patch_size, depth=0, width=0,
      num_heads=0, mlp_ratio=0.0, distilled=False,
      window=0,  # Swin attention window; 0 = the variant's
      init_from="",  # a saved jaxprune model dir (jaxprune.load); empty = train from scratch
      ), overrides)


def data_config(source: str = "mnist5k", **overrides) -> ml_collections.ConfigDict:
  return _with(dict(
      source=source,
      tfds_dir="",            # data_dir for tfds:<name> sources ("" = TFDS default)
      fewshot=0,              # > 0: train on this many images drawn from `fewshot_seed`
      fewshot_seed=0,
      fewshot_balanced=True,  # same count per class
      # Per channel, after scaling pixels to [0, 1]; empty = the model's own (model.init_from,
      # stored with every exported or converted model), else the source's known statistics.
      mean=(), std=(),
      # mixup / cutmix: Beta(α, α) (0 = off; DeiT: 0.8 / 1.0; with both on, CutMix is picked
      # for half the batches); erase: Random Erasing probability per image (DeiT: 0.25)
      # crop_scale_min < 1: RandomResizedCrop of area U(crop_scale_min, 1) (DeiT: 0.08)
      # randaugment: RandAugment magnitude (0 = off; DeiT 9, std randaugment_std 0.5), on the
      # host after the crop and flip (which then run on the host too)
      # repeats: repeated augmentation (DeiT: 3): each epoch takes N/repeats images, each
      # `repeats` times in a row in the batch stream, every copy augmented on its own
      augment=dict(crop_scale_min=1.0, shift=0, flip=False, mixup=0.0, cutmix=0.0,
                   erase=0.0, randaugment=0.0, randaugment_std=0.5, repeats=1),
      skip_corrupt=False,     # folder:<path>: skip unreadable images (warned, counted) vs error
      # folder/TFDS eval view: shorter side to image_size / eval_crop, centre crop (DeiT 0.875);
      # 0 = squash the whole image. Their crop_scale_min / flip run on the host (bicubic).
      eval_crop=0.0,
      # Grain input pipeline: batches decoded ahead per process (-1 = 0 for in-memory sources,
      # 8 for folder/TFDS), and worker processes decoding whole batches (0 = in-process threads)
      threads=-1, workers=0,
      ), overrides)


def train_config(**overrides) -> ml_collections.ConfigDict:
  return _with(dict(
      batch_size=64,          # global; must divide by the device count
      epochs=1, steps=0,      # steps > 0 overrides epochs
      label_smoothing=0.0,
      drop_path=0.0,          # stochastic depth rate of the last block (linear from 0); DeiT 0.1
      compute_dtype="float32",  # "bfloat16" (GPU/TPU), "bfloat16_matmul" (AVX-512 BF16 CPUs)
      remat=False,            # True: per-block rematerialisation (less activation memory, about
                              # one more forward pass per step; docs/memory.md)
      log_every=50, eval_every_epochs=0, checkpoint_every=200,
      ), overrides)


def optim_config(**overrides) -> ml_collections.ConfigDict:
  return _with(dict(
      lr=1e-3, warmup_steps=0, final_lr_ratio=0.0, weight_decay=0.05, b1=0.9, b2=0.999,
      grad_clip=0.0,
      frozen="",              # regex over paths like weights/blocks/3/mlp/fc1/kernel
      lr_rules=(),            # ((regex, multiplier), ...)
      gate_lr=0.0,            # 0 = 10 x lr
      kind="adamw",           # "sgd": SGD with momentum, weight decay added to the gradient
      momentum=0.9,           # kind = "sgd" only
      schedule="cosine",      # "step": lr x 0.1 at each step_at fraction (after the warm-up)
      step_at=(0.4,),         # schedule = "step" only (MiR: once, at 40 %)
      ), overrides)
