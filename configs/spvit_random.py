"""Random-search baseline at SPViT's target: sample architectures from the same space within the
same MACs tolerance, fine-tune each with SPViT's fine-tune recipe, report the best.

  python -m jaxprune.main --config=configs/spvit_random.py --workdir=runs/spvit_random
"""

import ml_collections

from configs import spvit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = spvit.get_config(arg)
  config.method = "spvit_random"
  config.random = ml_collections.ConfigDict(dict(num_archs=3, seed=0))
  if arg == "runlocal":
    config.random.num_archs = 2
    config.spvit.tolerance = 0.2
  return config
