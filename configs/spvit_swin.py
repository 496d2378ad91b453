"""SPViT on a Swin (embedded default): pretrain (if no model given) → search → materialise →
fine-tune, as configs/spvit.py does for a DeiT.

  python -m jaxprune.main --config=configs/spvit_swin.py --workdir=runs/spvit_swin
  python -m jaxprune.main --config=configs/spvit_swin.py --config.model.init_from=DIR  # your Swin
  python -m jaxprune.main --config=configs/spvit_swin.py:runlocal ...                  # for tests

Model `swin_test` (as configs/swin_pretrain.py): patch 2 on 28x28, width 32, two stages of two
blocks (2 then 4 heads of 16, 7x7 windows: four (shifted) windows on the 14x14 grid, one on 7x7
after patch merging), MLP x2. Every (shifted) window attention becomes the nested choice skip ⊂
conv1 ⊂ conv3 ⊂ msa, its conv candidates convolving inside the block's windows as the reference
does; alpha 100 as in the reference's Swin configs (`spvit.lambda_preset` offers its λ for
Swin-T/S/B: 2.8 / 0.4 / 0.1).
"""

import ml_collections

from configs import spvit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = spvit.get_config(arg)
  config.model.update(variant="swin_test", patch_size=2, num_heads=0)
  config.spvit.alpha = 100.0
  if arg == "runlocal":
    config.model.update(image_size=16, patch_size=4)
  return config
