"""PRACTISE on a pretrained DeiT-B from 500 unlabeled ImageNet images (the DC-ViT setting of
dcvit_deit_base.py; `:smoke` likewise)."""

import ml_collections

from configs.imagenet import dcvit_deit_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = dcvit_deit_base.get_config(arg)
  config.method = "practise"
  return config
