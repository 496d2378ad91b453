"""SPViT on a pretrained DeiT-Ti/S/B at 224 px on ImageNet, with the reference's settings
(ziplab/SPViT `SPViT_DeiT/config/spvit_deit_{ti_l200_t10,sm_l30_t32,bs_l006_t100}_*.json`).

  python -m jaxprune.main --config=configs/imagenet/spvit_deit.py:small \
      --config.model.init_from=DIR --config.data.source=folder:/data/imagenet --workdir=runs/s
  ...spvit_deit.py:small,smoke   # a minute or two on CPU, any small 224 px folder

The reference's targets are GFLOPs of the dense models' 1.3 / 4.6 / 17.6: Ti 1.0, S 3.2, B 10.0
(ratios below); λ 20 / 3 / 0.06 (`spvit.lambda_preset`); gate lr 1e-3 / 5e-4 / 1e-3; weight lr
5e-5; its searches ended after 10-15 epochs; fine-tuning 200 epochs with hard distillation (its
teacher is RegNetY-160; here the dense model, or any saved model in `finetune.distill.teacher`).
"""

import ml_collections

from configs import common
from configs import spvit
from configs.imagenet import recipe

SETTINGS = {  # variant, target MACs ratio, λ preset, gate lr
    "tiny": ("deit_tiny", 1.0 / 1.3, "deit_tiny", 1e-3),
    "small": ("deit_small", 3.2 / 4.6, "deit_small", 5e-4),
    "base": ("deit_base", 10.0 / 17.6, "deit_base", 1e-3),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  size, _, rest = (arg or "").partition(",")
  if size not in SETTINGS:
    raise ValueError(f"config argument {arg!r}: start with one of {', '.join(SETTINGS)} "
                     "(then optionally ,smoke)")
  smoke = recipe.check_arg(rest)
  variant, target, preset, gate_lr = SETTINGS[size]
  config = recipe.base("spvit", variant, smoke)
  config.spvit = spvit.get_config().spvit
  config.spvit.update(target_ratio=target, lambda_preset=preset, ffn_group=8, alpha=1e-2,
                      eval_every=4 if smoke else 500)
  lr = 5e-5 * recipe.BATCH / 512
  config.search = ml_collections.ConfigDict({
      "train": recipe.train(smoke, 20),
      "optim": common.optim_config(lr=lr, weight_decay=0.05, gate_lr=gate_lr, warmup_steps=0,
                                   final_lr_ratio=0.1),
  })
  config.finetune = ml_collections.ConfigDict({
      "train": recipe.train(smoke, 200),
      "optim": common.optim_config(lr=lr, weight_decay=0.05, warmup_steps=0),
      "distill": dict(kind="hard", weight=0.5, temperature=1.0, teacher=""),
  })
  return config  # (a smoke search ends before the target: the search-end arch is fine-tuned)
