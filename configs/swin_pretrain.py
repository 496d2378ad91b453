"""Dense pre-training of a tiny Swin on the embedded default (5000 real MNIST digits).

  python -m jaxprune.main --config=configs/swin_pretrain.py --workdir=runs/swin_pretrain
  python -m jaxprune.main --config=configs/swin_pretrain.py:runlocal ...   # seconds, for tests

Model `swin_test`: patch 2 on 28x28 (a 14x14 grid), width 32, two stages of two blocks (2 then 4
heads of 16, 7x7 windows: four windows in stage 1, shifted in its second block; one window on
the 7x7 grid after patch merging), MLP x2: 95.5k params, 8.7M MACs. Recipe as
`configs/pretrain.py`.
"""

import ml_collections

from configs import pretrain


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = pretrain.get_config(arg)
  config.model.update(variant="swin_test", patch_size=2)
  if arg == "runlocal":
    config.model.update(image_size=16, patch_size=4)
  return config
