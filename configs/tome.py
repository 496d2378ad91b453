"""ToMe on the embedded default: pretrain (if no model given) → token merging swept over r.

  python -m jaxprune.main --config=configs/tome.py --workdir=runs/tome
  python -m jaxprune.main --config=configs/tome.py --config.model.init_from=DIR   # any ViT/DeiT
  python -m jaxprune.main --config=configs/tome.py:runlocal ...                   # for tests

Training-free: each r reuses the source's weights. The reference evaluates off-the-shelf models
with proportional attention and r constant per layer (ViT-B/16 at 224: r = 13 to 16);
`tome.finetune_r` adds a short fine-tune with merging on (the paper trains with it from scratch or
fine-tunes; these defaults are scaled for the 2-core CPU and MNIST's 7×7 patch grid).
"""

import ml_collections

from configs import pretrain as pretrain_config
from configs import spvit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = pretrain_config.compression_base("tome", arg)
  config.tome = ml_collections.ConfigDict(dict(
      r_values=(0, 2, 4, 6, 8, 12),  # tokens merged per block; 0 = the source model
      inflection=0.0,         # ToMe's schedule: 0 constant r, -1 from 2r down to 0, +1 upward
      finetune_r=0,           # > 0 (one of r_values): fine-tune the model merged at this r
  ))
  # The optional fine-tune is SPViT's distillation recipe (methods/tome uses its run_finetune),
  # shorter and gentler: the merged model starts from trained weights.
  config.finetune = spvit.get_config(arg).finetune
  if arg == "runlocal":
    config.latency_batch = 8
    config.tome.update(r_values=(0, 2, 8), finetune_r=2)
  else:
    config.finetune.train.update(epochs=5, eval_every_epochs=5)
    config.finetune.optim.lr = 2e-4
  return config
