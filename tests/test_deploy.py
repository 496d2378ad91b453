"""Export: StableHLO reloaded in a fresh process that never imports jaxprune, ONNX run in
onnxruntime, every block kind, the same logits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxprune import ArchSpec, BlockSpec, build_model, dense_spec, save_model, swin_spec
from jaxprune.models.resnet import BasicSpec, BottleneckSpec
from jaxprune.deploy import main, pixels_to_logits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
# Every ViT block kind: attention, 1x1 / 3x3 bottleneck convs, skip, the reference's LN skip,
# a pruned-away MLP (its bias kept), a narrowed MLP; a distilled DeiT (two heads).
VIT = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5, depth=1,
                 distilled=True).replace(blocks=(
                     BlockSpec("msa", heads=2, mlp=24), BlockSpec("conv1", conv_dim=8, mlp=16),
                     BlockSpec("conv3", conv_dim=8, mlp=0, mlp_bias=True),
                     BlockSpec("none", mlp=40), BlockSpec("norm", mlp=8)))
# ToMe after the last grid block: argsort, gathers and the one-hot merge in the exported graph;
# ViT-Slim's token pruning (a constant gather) in the same block, before the merge.
TOME = VIT.replace(blocks=VIT.blocks + (BlockSpec("msa", heads=2, mlp=16, merge_r=3,
                                                  keep_tokens=(0, 2, 3, 5, 6, 7, 8, 11, 12, 15)),
                                        BlockSpec("msa", heads=2, mlp=16, merge_r=2)))
SWIN = swin_spec("swin_test", image_size=20, patch_size=2, num_classes=4, window=4)
_RELOAD = """
import sys, numpy as np
from jax import export
program = export.deserialize(open(sys.argv[1], "rb").read())
np.save(sys.argv[3], np.asarray(program.call(np.load(sys.argv[2]))))
assert not any(m.startswith("jaxprune") for m in sys.modules), "jaxprune was imported"
"""


# A ResNet mixing both block kinds, strided shortcuts, an odd grid after the stride.
RESNET = ArchSpec(image_size=20, patch_size=4, width=8, num_heads=1, num_classes=4,
                  family="resnet", class_token=False, layers=(
                      BottleneckSpec(planes=4, out_width=16, shortcut=True),
                      BasicSpec(planes=8, out_width=16),
                      BasicSpec(planes=8, out_width=24, stride=2, shortcut=True)))


def _model(spec, seed):
  """`build_model` with BatchNorm statistics away from their initial 0 / 1 (so that a wrong
  BatchNorm in the exported program shows)."""
  from flax import nnx
  model = build_model(spec, seed=seed)
  rng = np.random.default_rng(seed)
  for _, m in nnx.iter_graph(model):
    if isinstance(m, nnx.BatchNorm):
      m.mean[...] = rng.normal(size=m.mean.shape).astype(np.float32) * 0.1
      m.var[...] = rng.uniform(0.5, 1.5, size=m.var.shape).astype(np.float32)
  return model


def _swin_with_convs():
  spec = SWIN
  blocks = list(spec.blocks)
  blocks[1] = BlockSpec("conv3", conv_dim=8, mlp=blocks[1].mlp, window=blocks[1].window,
                        shift=blocks[1].shift)  # inside shifted, padded windows
  blocks[2] = BlockSpec("conv1", conv_dim=8, mlp=blocks[2].mlp)
  return spec.replace(blocks=tuple(blocks))


@pytest.mark.parametrize("spec, batch", [(VIT, None), (_swin_with_convs(), 3), (RESNET, None),
                                         (TOME, None)],
                         ids=["vit_every_block_kind", "swin_convs_fixed_batch", "resnet", "tome"])
def test_stablehlo_reloads_without_jaxprune_with_the_same_logits(tmp_path, spec, batch):
  model = _model(spec, seed=3)
  save_model(str(tmp_path / "m"), model, preprocessing={"mean": MEAN, "std": STD})
  out = tmp_path / "m.stablehlo"
  args = [str(tmp_path / "m"), "--format", "stablehlo", "--out", str(out)]
  assert main(args + (["--batch", str(batch)] if batch else [])) == 0
  info = json.load(open(f"{out}.json"))
  assert info["input"]["dtype"] == "uint8" and info["normalisation"]["mean"] == list(MEAN)
  size = spec.image_size
  pixels = np.random.default_rng(0).integers(0, 256, (3, size, size, 3)).astype(np.uint8)
  np.save(tmp_path / "x.npy", pixels)
  r = subprocess.run([sys.executable, "-c", _RELOAD, str(out), str(tmp_path / "x.npy"),
                      str(tmp_path / "y.npy")], capture_output=True, text=True, timeout=300,
                     cwd=str(tmp_path))  # not the repository: jaxprune cannot be picked up
  assert r.returncode == 0, r.stderr[-3000:]
  x = (pixels.astype(np.float32) / 255 - np.asarray(MEAN)) / np.asarray(STD)
  want = np.asarray(model(x.astype(np.float32)))
  np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, atol=1e-4)
  np.testing.assert_allclose(np.asarray(pixels_to_logits(model, {"mean": MEAN, "std": STD})(
      pixels)), want, atol=1e-4)


@pytest.mark.parametrize("spec, batch", [(VIT, None), (_swin_with_convs(), 2), (RESNET, 2),
                                         (TOME, None)],
                         ids=["vit_every_block_kind", "swin_convs_fixed_batch", "resnet", "tome"])
def test_onnx_runs_in_onnxruntime_with_the_same_logits(tmp_path, spec, batch):
  onnx = pytest.importorskip("onnx")
  ort = pytest.importorskip("onnxruntime")
  model = _model(spec, seed=4)
  save_model(str(tmp_path / "m"), model, preprocessing={"mean": MEAN, "std": STD})
  out = tmp_path / "m.onnx"
  args = [str(tmp_path / "m"), "--format", "onnx", "--out", str(out)]
  assert main(args + (["--batch", str(batch)] if batch else [])) == 0
  proto = onnx.load(str(out))
  meta = {p.key: p.value for p in proto.metadata_props}
  assert json.loads(meta["normalisation"]) == {"mean": list(MEAN), "std": list(STD)}
  assert json.loads(meta["arch"])["layers"] == json.loads(spec.to_json())["layers"]
  session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
  assert [i.name for i in session.get_inputs()] == ["pixels"]
  size = spec.image_size
  pixels = np.random.default_rng(1).integers(0, 256, (batch or 3, size, size, 3)).astype(np.uint8)
  got = session.run(None, {"pixels": pixels})[0]
  x = (pixels.astype(np.float32) / 255 - np.asarray(MEAN)) / np.asarray(STD)
  np.testing.assert_allclose(got, np.asarray(model(x.astype(np.float32))), atol=1e-4)


@pytest.mark.parametrize("kind", ["vit", "vit_dropped_narrowed", "deit_teacher"])
def test_hf_folder_loads_in_transformers_with_the_same_logits(tmp_path, kind):
  """Where the architecture fits a Hugging Face config (dense, PRACTISE's dropped blocks,
  uniformly narrowed MLPs; DeiT with its distillation head)."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  spec = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5, depth=3,
                    distilled=kind == "deit_teacher")
  if kind == "vit_dropped_narrowed":
    spec = spec.drop_blocks([1]).replace(blocks=tuple(
        BlockSpec("msa", heads=b.heads, mlp=24) for b in spec.drop_blocks([1]).blocks))
  model = build_model(spec, seed=5)
  save_model(str(tmp_path / "m"), model, preprocessing={"mean": MEAN, "std": STD})
  assert main([str(tmp_path / "m"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
  hf = transformers.AutoModelForImageClassification.from_pretrained(str(tmp_path / "hf")).eval()
  assert type(hf).__name__ == {"vit": "ViTForImageClassification",
                               "vit_dropped_narrowed": "ViTForImageClassification",
                               "deit_teacher": "DeiTForImageClassificationWithTeacher"}[kind]
  x = np.random.default_rng(2).normal(size=(3, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    got = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
  np.testing.assert_allclose(got, np.asarray(model(x)), atol=1e-4)
  pre = json.load(open(tmp_path / "hf" / "preprocessor_config.json"))
  assert (pre["image_mean"], pre["image_std"]) == (list(MEAN), list(STD))


def test_hf_refuses_what_does_not_fit(tmp_path, capsys):
  save_model(str(tmp_path / "m"), build_model(VIT, seed=0), preprocessing={"mean": MEAN,
                                                                            "std": STD})
  assert main([str(tmp_path / "m"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "block 1 (attention 'conv1', 0 heads, MLP 16) does not fit a "\
      "Hugging Face ViT config" in err and "use --format stablehlo or onnx" in err
  assert not (tmp_path / "hf").exists()


def test_export_errors_are_one_line(tmp_path, capsys):
  save_model(str(tmp_path / "m"), build_model(VIT, seed=0))  # no normalisation stored
  assert main([str(tmp_path / "m"), "--out", str(tmp_path / "a")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "stores no input normalisation; pass --mean and --std" in err
  assert main([str(tmp_path / "m"), "--format", "tflite", "--out", str(tmp_path / "a")]) == 2
  assert "--format 'tflite': allowed are stablehlo, onnx, hf" in capsys.readouterr().err
  assert main([str(tmp_path / "m"), "--out", str(tmp_path)]) == 2
  assert "is a folder" in capsys.readouterr().err
  r = subprocess.run([sys.executable, "-m", "jaxprune.export", "--help"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0 and "stablehlo" in r.stdout and "onnx" in r.stdout and "uint8" in r.stdout
