"""PRACTISE alone on a ResNet (the reference's 1x1 conv adaptors), same settings as
configs/dcvit_resnet.py.

  python -m jaxprune.main --config=configs/practise_resnet.py --workdir=runs/practise_resnet
"""

import ml_collections

from configs import dcvit_resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = dcvit_resnet.get_config(arg)
  config.method = "practise"
  return config
