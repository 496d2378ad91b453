"""A model carries its input normalisation: stored on export and import, used by methods unless
the config sets one, and never broadcast across a channel-count mismatch."""

import json

import pytest

from configs import pretrain as pretrain_config
from jaxprune import build_model, convert, dense_spec, save_model
from jaxprune.errors import UserError
from jaxprune.export import read_preprocessing
from jaxprune.methods import common
from tests.test_convert import _hf_model
from tests.test_data import _write_folder

RGB = dense_spec("test_micro", image_size=8, patch_size=4, num_classes=3)
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_exported_model_stores_and_returns_its_normalisation(tmp_path):
  save_model(str(tmp_path / "m"), build_model(RGB), preprocessing=IMAGENET)
  assert read_preprocessing(str(tmp_path / "m")) == IMAGENET
  save_model(str(tmp_path / "bare"), build_model(RGB))
  assert read_preprocessing(str(tmp_path / "bare")) is None
  with pytest.raises(UserError, match=r"preprocessing.mean = \[0.5\]: needs 3 numbers"):
    save_model(str(tmp_path / "bad"), build_model(RGB), preprocessing={"mean": [0.5],
                                                                         "std": [0.5]})


def _config(source, init_from="", **data):
  config = pretrain_config.get_config("runlocal")
  config.data.source, config.model.init_from = source, init_from
  config.data.update(data)
  return config


def test_methods_use_the_models_normalisation_unless_the_config_sets_one(tmp_path):
  save_model(str(tmp_path / "m"), build_model(RGB), preprocessing=IMAGENET)
  folder = f"folder:{tmp_path}"
  config = _config(folder, str(tmp_path / "m"))
  assert "model.init_from" in common.resolve_normalisation(config)
  assert (list(config.data.mean), list(config.data.std)) == (IMAGENET["mean"], IMAGENET["std"])
  config = _config(folder, str(tmp_path / "m"), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
  assert common.resolve_normalisation(config) == "config"
  assert tuple(config.data.mean) == (0.5, 0.5, 0.5)
  config = _config("mnist5k")
  assert "mnist5k" in common.resolve_normalisation(config)
  assert (tuple(config.data.mean), tuple(config.data.std)) == ((0.1307,), (0.3081,))


@pytest.mark.parametrize("data, message", [
    ({}, "data.mean / data.std are not set, and neither model.init_from nor data.source"),
    ({"mean": (0.5,)}, "set both, or neither")])
def test_missing_normalisation_is_an_error_naming_the_fields(tmp_path, data, message):
  with pytest.raises(UserError, match=message):
    common.resolve_normalisation(_config(f"folder:{tmp_path}", **data))


def test_channel_count_mismatch_is_an_error_not_a_broadcast(tmp_path):
  _write_folder(tmp_path)  # RGB images
  config = _config(f"folder:{tmp_path}", mean=(0.5,), std=(0.25,), fewshot=0)
  config.model.image_size = 8
  with pytest.raises(UserError, match=r"data.mean = \(0.5,\): needs 3 values, one per channel"):
    common.setup(config)


def test_convert_stores_the_hf_preprocessor_normalisation_or_the_given_one(tmp_path):
  import transformers
  hf = _hf_model("vit")
  hf.save_pretrained(tmp_path / "hf")
  processor = transformers.ViTImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.3, 0.4])
  processor.save_pretrained(tmp_path / "hf")
  assert convert.main([str(tmp_path / "hf"), "--out", str(tmp_path / "a")]) == 0
  assert read_preprocessing(str(tmp_path / "a")) == {"mean": [0.5, 0.4, 0.3],
                                                     "std": [0.2, 0.3, 0.4]}
  assert convert.main([str(tmp_path / "hf"), "--out", str(tmp_path / "b"), "--mean", "0.1", "0.1",
                       "0.1", "--std", "0.9", "0.9", "0.9"]) == 0
  assert json.load(open(tmp_path / "b" / "arch.json"))["preprocessing"] == {
      "mean": [0.1] * 3, "std": [0.9] * 3}
  assert convert.main([str(tmp_path / "hf"), "--out", str(tmp_path / "c"), "--mean", "0.1"]) == 2


def test_external_teacher_is_checked_and_sees_its_own_normalisation(tmp_path):
  import jax
  import numpy as np
  from jaxprune.data.augment import renormalise, normalise
  from jaxprune.methods import spvit
  config = pretrain_config.get_config("runlocal")
  config.finetune = {"distill": {"teacher": str(tmp_path / "t")}}
  config.data.mean, config.data.std = (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)
  dense = build_model(RGB)
  save_model(str(tmp_path / "t"), build_model(RGB, seed=3), preprocessing=IMAGENET)
  teacher, norm = spvit.load_teacher(config, dense)
  assert teacher.spec == RGB and norm == (tuple(IMAGENET["mean"]), tuple(IMAGENET["std"]))
  pixels = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))  # the same pixels, both ways
  np.testing.assert_allclose(
      renormalise(normalise(pixels, config.data.mean, config.data.std),
                  (config.data.mean, config.data.std), norm),
      normalise(pixels, IMAGENET["mean"], IMAGENET["std"]), atol=1e-5)
  save_model(str(tmp_path / "t5"), build_model(RGB.replace(num_classes=5)))
  config.finetune.distill.teacher = str(tmp_path / "t5")
  with pytest.raises(UserError, match="takes 8px 3-channel images into 5 classes; the student"):
    spvit.load_teacher(config, dense)
  config.finetune.distill.teacher = str(tmp_path / "none")
  with pytest.raises(UserError, match="not a saved jaxprune model"):
    spvit.check(_spvit_config(str(tmp_path / "none")))


def _spvit_config(teacher):
  from configs import spvit as spvit_config
  config = spvit_config.get_config("runlocal")
  config.finetune.distill.teacher = teacher
  return config


def test_auto_normalisation_is_computed_from_the_training_split(tmp_path):
  """`--config.data.mean=auto --config.data.std=auto` (the flags read `auto` as ("auto",)):
  the per-channel statistics of the training pixels, exactly, recorded as numbers."""
  import numpy as np
  from PIL import Image
  from jaxprune.validate import check_fields
  _write_folder(tmp_path)
  config = _config(f"folder:{tmp_path}", mean=("auto",), std=("auto",))
  config.model.image_size = 8  # as stored (a resize would change the statistics it reads)
  check_fields(config)  # "auto" passes the up-front range rules
  assert "training split" in common.resolve_normalisation(config)
  pixels = np.stack([np.asarray(Image.open(p)) for p in sorted(
      (tmp_path / "train").glob("*/*.png"))]).reshape(-1, 3) / 255.0
  np.testing.assert_allclose(config.data.mean, pixels.mean(0), atol=1e-6)
  np.testing.assert_allclose(config.data.std, pixels.std(0), atol=1e-6)
  assert all(isinstance(v, float) for v in (*config.data.mean, *config.data.std))
  with pytest.raises(UserError, match="'auto' is for both or neither"):
    common.resolve_normalisation(_config(f"folder:{tmp_path}", mean=("auto",),
                                         std=(0.5, 0.5, 0.5)))


def test_the_missing_normalisation_error_offers_auto(tmp_path):
  with pytest.raises(UserError, match="--config.data.mean=auto --config.data.std=auto"):
    common.resolve_normalisation(_config(f"folder:{tmp_path}"))
