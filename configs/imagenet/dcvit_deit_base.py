"""DC-ViT (and, with `method=practise`, PRACTISE) on a pretrained DeiT-B at 224 px from 500
unlabeled ImageNet images: a family of compressed models at matched MACs.

  python -m jaxprune.main --config=configs/imagenet/dcvit_deit_base.py \
      --config.model.init_from=DIR --config.data.source=folder:/data/imagenet --workdir=runs/dc
  ...dcvit_deit_base.py:smoke      # a minute or two on CPU, any small 224 px folder

The reference (Michelia-zhx/dcvit) fine-tunes with AdamW lr 3e-5, wd 1e-4, batch 64; our trial
and per-step counts are our defaults (its runs train far longer: raise them for paper numbers).
"""

import ml_collections

from configs import common
from configs import dcvit
from configs.imagenet import recipe


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  smoke = recipe.check_arg(arg)
  reference = dcvit.get_config()
  config = recipe.base("dcvit", "deit_base", smoke)
  config.data.fewshot = 500
  config.data.augment = common.data_config().augment  # few-shot mimicking: no augmentation
  config.synthetic = reference.synthetic
  config.synthetic.update(num_images=500, steps=2000, warmup_steps=100)
  config.mimic = ml_collections.ConfigDict({
      "train": common.train_config(batch_size=64, log_every=50, checkpoint_every=500,
                                   compute_dtype="bfloat16"),
      "optim": common.optim_config(lr=3e-5, warmup_steps=10, weight_decay=1e-4),
  })
  config.dcvit = reference.dcvit
  config.dcvit.update(trial_steps=500, finetune_steps=2000, num_targets=8)
  config.practise = reference.practise
  config.practise.update(num_drop=(1, 2, 3), adaptor_steps=500)
  if smoke:
    config.data.fewshot = 16
    config.synthetic.update(num_images=8, steps=4, warmup_steps=1)
    config.mimic.train.update(batch_size=8, log_every=2, checkpoint_every=4,
                              compute_dtype="float32")
    config.dcvit.update(num_targets=1, trial_steps=2, finetune_steps=2)
    config.practise.update(num_drop=(1,), adaptor_steps=2)
  return config
