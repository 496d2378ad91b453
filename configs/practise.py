"""PRACTISE alone (block dropping with few-shot recovery), same settings as configs/dcvit.py.

  python -m jaxprune.main --config=configs/practise.py --workdir=runs/practise
"""

import ml_collections

from configs import dcvit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = dcvit.get_config(arg)
  config.method = "practise"
  if arg == "runlocal":  # one adaptor phase per block: 3 blocks keep the smoke run short
    config.model.depth = 3
  return config
