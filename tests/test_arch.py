import json

import pytest

from jaxprune.arch import ArchSpec, BlockSpec, dense_spec
from jaxprune.errors import UserError


def test_json_round_trip():
  spec = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=7, distilled=True)
  spec = spec.replace(blocks=spec.blocks + (BlockSpec("conv3", mlp=12, conv_dim=8),
                                            BlockSpec("none", mlp=5), BlockSpec("conv1", conv_dim=3)))
  again = ArchSpec.from_json(spec.to_json())
  assert again == spec
  assert json.loads(again.to_json()) == json.loads(spec.to_json())
  assert again.num_tokens == 16 + 2


@pytest.mark.parametrize("changes, message", [
    (dict(image_size=30, patch_size=4), "image_size 30 is not divisible by patch_size 4"),
    (dict(width=30, num_heads=4), "width 30 is not divisible by num_heads 4"),
    (dict(num_classes=0), "ArchSpec.num_classes = 0: must be a positive integer"),
    (dict(dist_head=True), "dist_head = True needs dist_token = True"),
    (dict(blocks=(BlockSpec("attention", heads=2, mlp=4),)), "blocks[0].attn = 'attention'"),
    (dict(blocks=(BlockSpec("msa", heads=0, mlp=4),)), "attn 'msa' needs heads >= 1"),
    (dict(blocks=(BlockSpec("conv3", mlp=4),)), "attn 'conv3' needs conv_dim >= 1"),
    (dict(blocks=(BlockSpec("none", heads=2),)), "heads = 2 is only allowed with attn 'msa'"),
    (dict(blocks=(BlockSpec("msa", heads=2, mlp=-1),)), "blocks[0].mlp = -1"),
])
def test_validation_errors_name_the_field(changes, message):
  spec = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=10)
  with pytest.raises(UserError) as e:
    spec.replace(**changes)
  assert message in str(e.value)


def test_from_dict_rejects_unknown_fields():
  d = dense_spec("test_micro", image_size=16, patch_size=4).to_dict()
  d["widht"] = 3
  with pytest.raises(UserError, match="unknown fields \\['widht'\\]"):
    ArchSpec.from_dict(d)


def test_unknown_variant():
  with pytest.raises(UserError, match="variant 'deit_huge' is unknown; allowed are deit_tiny"):
    dense_spec("deit_huge")


def test_files_written_before_mlp_bias_still_load():
  old = {"image_size": 16, "patch_size": 4, "width": 32, "num_heads": 2, "num_classes": 3,
         "blocks": [{"attn": "msa", "heads": 2, "mlp": 64, "conv_dim": 0},
                    {"attn": "none", "heads": 0, "mlp": 0, "conv_dim": 0}]}
  spec = ArchSpec.from_dict(old)
  assert [b.mlp_bias for b in spec.blocks] == [False, False]
  with pytest.raises(UserError, match=r"blocks\[0\].mlp_bias = True: .*only with mlp = 0"):
    spec.replace_block(0, mlp_bias=True)


def test_models_saved_in_format_1_still_load(tmp_path):
  """Every model exported before format 2 wrote a flat ViT arch.json: it must load unchanged."""
  import json

  import numpy as np

  from jaxprune import build_model, load, save_model
  spec = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=3)
  model = build_model(spec.replace_block(1, attn="none", heads=0, mlp=0, mlp_bias=True), seed=2)
  save_model(str(tmp_path / "m"), model)
  meta = json.load(open(tmp_path / "m" / "arch.json"))
  arch = meta["arch"]
  del arch["format"], arch["family"]
  arch["blocks"] = [{k: b[k] for k in ("attn", "heads", "mlp", "conv_dim", "mlp_bias")}
                    for b in arch.pop("layers")]
  json.dump(meta, open(tmp_path / "m" / "arch.json", "w"))
  loaded = load(str(tmp_path / "m"))
  assert loaded.spec == model.spec
  x = np.ones((1, 16, 16, 3), np.float32)
  np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
