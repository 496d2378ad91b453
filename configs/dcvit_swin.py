"""DC-ViT on a Swin (embedded default): pairs of consecutive blocks compressed, PRACTISE dropping
pairs at matched MACs, as the paper does on Swin.

  python -m jaxprune.main --config=configs/dcvit_swin.py --workdir=runs/dcvit_swin
  python -m jaxprune.main --config=configs/dcvit_swin.py:runlocal ...       # for tests

Model `swin_mini`: patch 2 on 28x28, width 32, stages of 2 / 6 / 2 blocks (2 / 4 / 8 heads of
16 wide, 7x7 windows; 532k params, 21.3M MACs). Candidates: the pairs of the 6-block stage
(blocks 2-3, 4-5, 6-7); patch merging is never a candidate. Everything else as configs/dcvit.py.
"""

import ml_collections

from configs import dcvit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = dcvit.get_config(arg)
  config.model.update(variant="swin_mini", patch_size=2, depth=0, num_heads=0)
  if arg == "runlocal":
    config.model.update(image_size=16, patch_size=4)
  return config
