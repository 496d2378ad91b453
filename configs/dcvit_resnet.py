"""DC-ViT on a ResNet (embedded default), as the paper does on CNNs: whole residual blocks
(`layerX.i`, i >= 1: never a stage's first block) dropped in the order of their KL on a synthetic
set inverted with DeepInversion's BatchNorm-statistics prior, each drop recovered by feature
mimicking on the pre-pool features (BatchNorm in train mode); PRACTISE at matched MACs.

  python -m jaxprune.main --config=configs/dcvit_resnet.py --workdir=runs/dcvit_resnet
  python -m jaxprune.main --config=configs/dcvit_resnet.py:runlocal ...       # for tests
  python -m jaxprune.main --config=configs/dcvit_resnet.py:mir ...            # MiR's fine-tune

Model `resnet_mini` (configs/resnet_pretrain.py): the CIFAR stem on 28x28, three stages of two
basic blocks (16 / 32 / 64 wide); candidates blocks 1, 3, 5. The family: the top 1, 2, 3 ranked
drops. PRACTISE drops 1 and 2 blocks, scored with the reference's identity 1x1 conv adaptors
(between conv and BatchNorm after the stage's earlier blocks and its shortcut, before conv1 of
the later blocks and of the next stage; BatchNorm frozen while they train). Everything else as
configs/dcvit.py. With `:mir` (or `:runlocal,mir`) feature mimicking uses MiR's recipe, as the
DC-ViT paper's CNN experiments: SGD lr 0.02, momentum 0.9, weight decay 1e-4, no warm-up, lr ×0.1
at 40 % of each phase (jaxprune's default is the AdamW recipe of every family).
"""

import ml_collections

from configs import dcvit


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "").split(",") if p]
  mir = "mir" in parts
  arg = ",".join(p for p in parts if p != "mir") or None
  config = dcvit.get_config(arg)
  if mir:
    config.mimic.optim.update(kind="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4,
                              warmup_steps=0, schedule="step", step_at=(0.4,))
  config.model.update(variant="resnet_mini", patch_size=1, depth=0, num_heads=0)
  config.synthetic.bn_weight = 0.01
  config.dcvit.structure = "drop"
  config.practise.num_drop = (1, 2)
  if arg == "runlocal":
    config.model.update(image_size=16)
    config.practise.num_drop = (1,)
  return config
