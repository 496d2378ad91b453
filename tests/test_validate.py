"""Up-front validation: every bad value is refused, naming its field, before any work."""

import glob
import importlib
import os

import pytest

from jaxprune.errors import UserError
from jaxprune.validate import leaves, rule_for, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "common.py"))


def _config(name, arg=None, **overrides):
  config = importlib.import_module(f"configs.{name}").get_config(arg)
  for path, value in overrides.items():
    *parents, leaf = path.split("__")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_shipped_configs_validate_and_every_number_has_a_rule(name, arg):
  config = _config(name, arg)
  validate(config, device_count=8 if arg else 1)
  for path, value in leaves(config.to_dict()):
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    numeric = numeric or (isinstance(value, (tuple, list)) and value and
                          all(isinstance(v, (int, float)) for v in value))
    if numeric:
      assert rule_for(path) is not None, f"{name}: {path} has no range rule"


@pytest.mark.parametrize("name, overrides, expected", [
    # issue 10, case 6: zero or negative training lengths
    ("pretrain", {"train__epochs": -1}, "train.epochs = -1: must be an integer >= 0"),
    ("pretrain", {"train__steps": -5}, "train.steps = -5: must be an integer >= 0"),
    ("pretrain", {"train__epochs": 0}, "train.epochs = 0 and train.steps = 0: the phase would "
                                       "train nothing"),
    ("spvit", {"search__train__epochs": -1}, "search.train.epochs = -1"),
    ("spvit", {"search__train__epochs": 0}, "search.train.epochs = 0 and search.train.steps = 0"),
    # case 7: out-of-range values, in every phase's section
    ("pretrain", {"train__label_smoothing": 2.0}, "train.label_smoothing = 2.0: must be a finite "
                                                  "number >= 0 and < 1"),
    ("pretrain", {"data__augment__mixup": -1.0}, "data.augment.mixup = -1.0: must be a finite "
                                                 "number >= 0"),
    ("pretrain", {"optim__lr": float("nan")}, "optim.lr = nan: must be a finite number > 0"),
    ("pretrain", {"optim__lr": float("inf")}, "optim.lr = inf: must be a finite number > 0"),
    ("pretrain", {"train__batch_size": 0}, "train.batch_size = 0: must be an integer >= 1"),
    ("spvit", {"search__train__batch_size": 0}, "search.train.batch_size = 0"),
    ("spvit", {"finetune__distill__kind": "bogus"}, "finetune.distill.kind = 'bogus': allowed "
                                                    "are none, hard, soft"),
    ("spvit", {"spvit__target_ratio": 0.0}, "spvit.target_ratio = 0.0"),
    ("spvit", {"finetune__optim__b2": 1.0}, "finetune.optim.b2 = 1.0"),
    ("pretrain", {"data__std": (0.0,)}, "data.std = (0.0,): every value must be a finite "
                                        "number > 0"),
    ("pretrain", {"optim__frozen": "(("}, "optim.frozen = '((': must be a valid regular "
                                          "expression"),
    ("pretrain", {"optim__frozen": ".*"}, "optim.frozen = '.*' freezes every weight of the "
                                          "model: the phase would train nothing"),  # issue 26/16
    ("spvit", {"finetune__optim__frozen": "^weights/"}, "finetune.optim.frozen = '^weights/' "
                                                        "freezes every weight"),
    ("dcvit", {"dcvit__targets": (0.5, 1.5)}, "dcvit.targets = (0.5, 1.5): every value"),
    ("dcvit", {"synthetic__steps": 0}, "synthetic.steps = 0"),
    ("dcvit", {"synthetic__tv_group": 0}, "synthetic.tv_group = 0: must be an integer >= 1"),
    ("dcvit", {"dcvit__structure": "best"}, "dcvit.structure = 'best'"),
    ("dcvit", {"dcvit__metric_set": "test"}, "dcvit.metric_set = 'test'"),
    ("dcvit", {"dcvit__seeds": (0, -1)}, "dcvit.seeds = (0, -1): every value"),
    # issue 26 case 6: an OverflowError after config.json was written / seed 0's model
    ("pretrain", {"seed": 99999999999999999999}, "seed = 99999999999999999999: must be an "
                                                 "integer between 0 and 2147483647"),
    ("pretrain", {"seed": 2**32}, "seed = 4294967296: must be an integer between 0 and"),
    ("dcvit", {"data__fewshot_seed": 2**32}, "data.fewshot_seed = 4294967296"),
    ("dcvit", {"dcvit__num_targets": -1}, "dcvit.num_targets = -1"),  # 0: matched MACs only
    ("dcvit", {"dcvit__macs_convention": "thop"}, "dcvit.macs_convention = 'thop': allowed "
                                                  "are full, reference"),
    ("dcvit", {"dcvit__macs_convention": "reference", "dcvit__structure": "both"},
     "dcvit.macs_convention = 'reference' applies to DC-ViT's rule only"),
    ("spvit_random", {"random__num_archs": 0}, "random.num_archs = 0"),
    # structural checks run before any work (DC-ViT used to pre-train first)
    ("dcvit", {"model__depth": 2}, "DC-ViT finds no candidate unit of 1 block(s) in this model "
                                   "(stages [2] blocks"),
    ("practise", {"practise__num_drop": (6,)}, "practise.num_drop = (6,): 6 blocks cannot be "
                                               "dropped from a model of 6 blocks; allowed are "
                                               "1..5"),
    ("pretrain", {"model__num_heads": 3}, "width 64 is not divisible"),
    ("pretrain", {"model__variant": "vit_giant"}, "model variant 'vit_giant' is unknown"),
    ("pretrain", {"data__source": "folder:/no/such"}, "/no/such/train is not a directory"),
    ("pretrain", {"model__init_from": "/no/such/model"}, "has no arch.json"),
    # SPViT steering fields
    ("spvit", {"spvit__stop": "never"}, "spvit.stop = 'never': allowed are first, end"),
    ("spvit", {"spvit__lambda_preset": "vit_huge"}, "spvit.lambda_preset = 'vit_huge'"),
    ("spvit", {"spvit__arch": "step:x"}, "expected step:N"),
    ("spvit", {"spvit__arch": "macs:0.6-0.5"}, "expected macs:LO-HI"),
    ("spvit", {"spvit__arch": "/no/such.json"}, "or an ArchSpec JSON file, which does not exist"),
    ("spvit", {"spvit__search_dir": "/no/such"}, "config.json is missing"),
])
def test_bad_values_are_refused_naming_the_field(name, overrides, expected):
  with pytest.raises(UserError) as e:
    validate(_config(name, **overrides), device_count=1)
  assert expected in str(e.value)


def test_every_batch_size_must_divide_the_devices():
  with pytest.raises(UserError, match="finetune.train.batch_size = 12 is not divisible by the "
                                      "8 devices"):
    validate(_config("spvit", finetune__train__batch_size=12), device_count=8)
