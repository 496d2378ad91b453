"""Dense pre-training of a small ResNet on the embedded default (5000 real MNIST digits).

  python -m jaxprune.main --config=configs/resnet_pretrain.py --workdir=runs/resnet_pretrain
  python -m jaxprune.main --config=configs/resnet_pretrain.py:runlocal ...   # seconds, for tests

Model `resnet_mini`: the CIFAR stem (one 3x3 conv, `patch_size` 1) on 28x28, three stages of two
basic blocks at widths 16 / 32 / 64 (stride 2 and a 1x1 shortcut at each new stage), average
pool, linear head. Recipe as `configs/pretrain.py` (AdamW, cosine, label smoothing, +-2 px shifts).
"""

import ml_collections

from configs import pretrain


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = pretrain.get_config(arg)
  config.model.update(variant="resnet_mini", patch_size=1)
  if arg == "runlocal":
    config.model.update(variant="resnet_test", image_size=16)
  return config
