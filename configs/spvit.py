"""SPViT on the embedded default: pretrain (if no model given) → search → materialise → fine-tune.

  python -m jaxprune.main --config=configs/spvit.py --workdir=runs/spvit
  python -m jaxprune.main --config=configs/spvit.py --config.model.init_from=DIR   # your model
  python -m jaxprune.main --config=configs/spvit.py:runlocal ...                   # for tests

The reference runs ≤21 search epochs and 130 fine-tune epochs (200 with distillation) on
ImageNet; these defaults are scaled for the 2-core CPU and MNIST.
"""

import ml_collections

from configs import common
from configs import pretrain as pretrain_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = pretrain_config.compression_base("spvit", arg)
  # 4 heads of 16: the conv candidates then cost 0.44x (conv3) / 0.09x (conv1) of msa's MACs,
  # as in DeiT-Ti (0.55x / 0.12x); with 2 heads conv3 would save almost nothing.
  config.model.num_heads = 4
  config.spvit = ml_collections.ConfigDict(dict(
      target_ratio=0.6,       # target MACs as a fraction of the dense model's
      tolerance=0.05,         # selected arch within ±5 % of the target
      budget_weight=0.0,      # λ; 0 = derive: budget term = budget_scale × task loss at step 0
      budget_scale=2.5,       # 5 before the reference's (stronger) budget gradient: see
                              # docs/spvit_results.md
      alpha=1e-2,             # mixing-matrix softmax temperature
      ffn_group=8,            # FFN hidden units per gate (multiples of 8 keep CPU matmuls fast)
      temperature=1.0,        # relaxed-Bernoulli temperature
      eval_every=62,          # steps between derive/select evaluations
      finetune_from="search",  # "search": search-end weights; "original": the dense weights
      lambda_preset="",       # the reference's fixed λ: deit_tiny 20, deit_small 3, deit_base 0.06,
                              # swin_tiny 2.8, swin_small 0.4, swin_base 0.1
      stop="first",           # "first": end the search at the first arch within tolerance;
                              # "end": search to the end, recording every derived arch
      arch="",                # what to fine-tune: "" = the first within tolerance (stop=first) or
                              # the most accurate recorded within tolerance (stop=end);
                              # "step:N" = the arch recorded at search step N;
                              # "macs:LO-HI" = the most accurate recorded with LO <= ratio <= HI;
                              # or an ArchSpec JSON file (FFN units kept by largest gate logit)
      search_dir="",          # a finished SPViT workdir: reuse its search, do not search again
      weight_sharing=True,    # False: multi-path ablation, conv candidates with own random weights
      swin_conv="window",     # Swin conv3 blocks: "window" = inside the searched (shifted) windows
                              # (the gated function exactly); "grid" = a plain conv on the whole
                              # grid, the reference's fine-tuned form. No effect on a ViT
  ))
  config.search = ml_collections.ConfigDict({
      "train": common.train_config(batch_size=64, epochs=15, label_smoothing=0.1, log_every=31,
                                   checkpoint_every=124),
      "optim": common.optim_config(lr=5e-4, warmup_steps=31, weight_decay=0.05, gate_lr=2e-2,
                                   final_lr_ratio=0.1),
  })
  config.finetune = ml_collections.ConfigDict({
      "train": common.train_config(batch_size=64, epochs=40, label_smoothing=0.1, log_every=62,
                                   eval_every_epochs=10, checkpoint_every=248),
      "optim": common.optim_config(lr=5e-4, warmup_steps=62, weight_decay=0.05),
      # teacher: a saved jaxprune model (e.g. a converted DeiT-B); "" = the dense model
      "distill": dict(kind="hard", weight=0.5, temperature=1.0, teacher=""),
  })
  if arg == "runlocal":
    config.latency_batch = 8
    config.spvit.eval_every = 4
    config.search.train.update(batch_size=32, epochs=2, log_every=4, checkpoint_every=8)
    config.search.optim.update(warmup_steps=2, gate_lr=0.2)
    config.finetune.train.update(batch_size=32, epochs=1, log_every=4, eval_every_epochs=1,
                                 checkpoint_every=8)
    config.finetune.optim.warmup_steps = 2
  return config
