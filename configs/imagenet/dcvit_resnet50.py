"""DC-ViT (and, with `method=practise`, PRACTISE) on a pretrained ResNet-50 at 224 px from 500
unlabeled ImageNet images, as the paper does on CNNs: whole blocks (`layerX.i`, i >= 1) dropped
in the order of their KL on a synthetic set inverted with DeepInversion's BatchNorm prior.

  python -m jaxprune.convert path/to/hf_resnet50 --out models/r50      # or a torchvision .pth
  python -m jaxprune.main --config=configs/imagenet/dcvit_resnet50.py \
      --config.model.init_from=models/r50 --config.data.source=folder:/data/imagenet --workdir=runs/r50
  ...dcvit_resnet50.py:smoke      # minutes on CPU, any small 224 px folder

Recipe as configs/imagenet/dcvit_deit_base.py (AdamW feature mimicking; MiR's SGD recipe is not
an option yet: docs/references.md).
"""

import ml_collections

from configs.imagenet import dcvit_deit_base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = dcvit_deit_base.get_config(arg)
  config.model.update(variant="resnet50", patch_size=4)
  config.synthetic.bn_weight = 0.01
  config.dcvit.structure = "drop"
  config.practise.num_drop = (1, 2, 3) if arg != "smoke" else (1,)
  return config
