"""ViT-Slim on the embedded default: pretrain (if no model given) → mask search → threshold at
the MACs target → slice → fine-tune with distillation.

  python -m jaxprune.main --config=configs/vitslim.py --workdir=runs/vitslim
  python -m jaxprune.main --config=configs/vitslim.py --config.model.init_from=DIR   # your model
  python -m jaxprune.main --config=configs/vitslim.py:runlocal ...                   # for tests

The reference searches DeiT-S for 50 epochs (lr 5e-4, the masks in the same AdamW as the
weights: gate_lr = lr here; --w1 2e-4, --w2 5e-5) and retrains for 300; these defaults are
scaled for the 2-core CPU and MNIST, and share the dense model, data and fine-tune recipe of
configs/spvit.py, so the two compare at the same MACs target.
"""

import ml_collections

from configs import spvit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = spvit.get_config(arg)
  config.method = "vitslim"
  del config.spvit
  config.vitslim = ml_collections.ConfigDict(dict(
      target_ratio=0.6,       # sliced model's MACs as a fraction of the dense model's
      attn_weight=2e-4,       # L1 weight of the attention masks (the reference's --w1)
      mlp_weight=5e-5,        # L1 weight of the MLP masks (--w2)
      token_budget=1.0,       # < 1: search token masks too, keeping this fraction (--budget_patch)
      token_weight=1e-4,      # L1 weight of the token masks (--w3)
  ))
  config.search.optim.gate_lr = config.search.optim.lr  # masks train with the weights' rate
  return config
