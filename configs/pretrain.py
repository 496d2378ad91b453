"""Dense pre-training of a small DeiT on the embedded default (5000 real MNIST digits).

  python -m jaxprune.main --config=configs/pretrain.py --workdir=runs/pretrain
  python -m jaxprune.main --config=configs/pretrain.py:runlocal ...   # seconds, for tests

Recipe: DeiT width 64, depth 4, 2 heads, MLP x2, patch 4 on 28x28 (139k params, 7.9M MACs),
batch 64, AdamW lr 1.5e-3, 3 warm-up epochs then cosine, wd 0.05, label smoothing 0.1, +-2 px
shifts, 42 epochs.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = "pretrain"
  config.seed = 0
  config.model = common.model_config("test_small", image_size=28, patch_size=4)
  config.data = common.data_config("mnist5k", augment=dict(crop_scale_min=1.0, shift=2,
                                                           flip=False, mixup=0.0))
  config.train = common.train_config(batch_size=64, epochs=42, label_smoothing=0.1,
                                     log_every=62, eval_every_epochs=6, checkpoint_every=250)
  config.optim = common.optim_config(lr=1.5e-3, weight_decay=0.05, warmup_steps=3 * 62)
  config.export = ml_collections.ConfigDict({"formats": ()})  # e.g. ("stablehlo", "onnx")
  if arg == "runlocal":
    config.model.update(variant="test_micro", image_size=16)
    config.data.fewshot = 256
    config.train.update(batch_size=32, epochs=2, log_every=4, eval_every_epochs=1,
                        checkpoint_every=8)
    config.optim.warmup_steps = 4
  elif arg:
    raise ValueError(f"config argument {arg!r} is unknown; allowed: runlocal")
  return config


def compression_base(method: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """What every compression config starts from: the dense model, the data, and how to pre-train
  the dense model when no `model.init_from` is given (its own `pretrain.fewshot`, so a method's
  few-shot `data.fewshot` never shrinks pre-training)."""
  base = get_config(arg)
  config = ml_collections.ConfigDict()
  config.method = method
  config.seed = base.seed
  config.model = base.model
  config.data = ml_collections.ConfigDict(base.data.to_dict())  # a copy, not an alias
  config.pretrain = ml_collections.ConfigDict({"train": base.train, "optim": base.optim,
                                               "fewshot": base.data.fewshot})
  config.latency_batch = 64
  config.export = base.export  # the final models also written as stablehlo / onnx files
  return config
