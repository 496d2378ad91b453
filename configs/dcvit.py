"""DC-ViT on the embedded default: a family of compressed models from 100 unlabeled images, with
PRACTISE at matched MACs.

  python -m jaxprune.main --config=configs/dcvit.py --workdir=runs/dcvit
  python -m jaxprune.main --config=configs/dcvit.py:runlocal ...            # for tests

The reference fine-tunes 2000 epochs of batch 64 on 50 images with AdamW lr 3e-5, wd 1e-4
(`--config.mimic.train.steps`, `--config.dcvit.trial_steps/finetune_steps` keep that available);
these defaults are scaled for the 2-core CPU.
"""

import ml_collections

from configs import common
from configs import pretrain as pretrain_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = pretrain_config.compression_base("dcvit", arg)
  config.model.update(depth=6, num_heads=4)  # candidates = blocks 1..4: k = 3 at 2 dropped
  config.data.fewshot = 100  # the compression methods' few-shot set (pretraining uses all)
  config.synthetic = ml_collections.ConfigDict(dict(
      num_images=100, steps=500, lr=0.25, warmup_steps=50, tv_weight=1e-4, tv_exponent=1.0,
      l2_weight=1e-5, jitter=-1,
      tv_group=50,      # images per TV norm: the reference's batch of 50; 1 = one norm per image
      jpeg_quality=0,   # > 0: save as JPEG at this quality and read back, as the reference does
      bn_weight=0.0,    # CNNs: DeepInversion's BatchNorm-statistics prior (0.01 in DC-ViT)
      compute_dtype="float32",  # the model's forward/backward here; train.compute_dtype's values
  ))
  config.mimic = ml_collections.ConfigDict({
      "train": common.train_config(batch_size=64, log_every=50, checkpoint_every=100),
      "optim": common.optim_config(lr=3e-4, warmup_steps=10, weight_decay=1e-4),
  })
  config.dcvit = ml_collections.ConfigDict(dict(
      targets=(),             # MACs ratios; empty = num_targets from 0.95 to 0.5 (reachable part)
      num_targets=8,          # sweep targets; 0 = only the MACs of the PRACTISE models
      trial_steps=60,         # feature-mimicking steps of one block trial
      finetune_steps=100,     # per progressive compression step
      width_multiple=8,
      group=0,                # blocks per candidate unit; 0 = 1 on ViT, 2 (pairs) on Swin
      trial_accuracy=False,   # also record each trial's real test accuracy (rank studies)
      shared_trials=True,     # block trials and PRACTISE's adaptor phases as masks on one
                              # dense-shaped model: one compile for all (models/masked.py)
      structure="rule",       # "rule": DC-ViT's; "search": drops, the rule and mixes compared
                              # per target (methods/dcvit/structure_search.py); "both": both families;
                              # "drop": whole blocks dropped by KL rank (DC-ViT on CNNs);
                              # "narrow": CNN blocks' inner widths cut by KL rank (ours)
      narrow_keep=0.5,        # "narrow": fraction of a block's inner width (planes) kept
      metric_set="synthetic", # what trials are ranked by: KL on the "synthetic" set (DC-ViT's)
                              # or on the real "fewshot" training images (no inversion made)
      metric_temperature=1.0, # the KL's softmax temperature; 1 = DC-ViT's (see README: a
                              # synthetic set classified near-certainly ranks better at 2)
      seeds=(),               # few-shot seeds (data.fewshot_seed) to repeat over: mean ± std
      macs_convention="full", # how the rule's targets count MACs: "full" (as jaxprune prints)
                              # or "reference" (DC-ViT's thop: no attention matmuls, 4 MACs per
                              # LayerNorm element), which reproduces the paper's structures
  ))
  config.practise = ml_collections.ConfigDict(dict(
      num_drop=(2,), adaptor_steps=30,
      adaptors="around",  # the reference's: after fc2 of earlier blocks, before qkv of later
  ))                      # ones; "in_place": one linear layer where the dropped block was
  if arg == "runlocal":
    config.model.update(depth=4, image_size=16)
    config.data.fewshot = 32
    config.latency_batch = 8
    config.synthetic.update(num_images=20, steps=20, warmup_steps=5)
    config.mimic.train.update(batch_size=16, log_every=5, checkpoint_every=10)
    config.dcvit.update(num_targets=1, trial_steps=4, finetune_steps=4)
    config.practise.update(num_drop=(1,), adaptor_steps=4)
  return config
