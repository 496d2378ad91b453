"""Swin: spec, accounting (published counts, XLA per layer kind), HF/timm import parity."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import build_model, count, load, save_model
from jaxprune.accounting import xla_flops
from jaxprune.arch import ArchSpec, BlockSpec, MergeSpec, Shape, dense_spec, swin_spec
from jaxprune.errors import UserError
from jaxprune.models.blocks import Block, PatchMerging


@pytest.mark.parametrize("variant, expected, gmacs", [
    ("swin_tiny", 28_288_354, 4.5), ("swin_small", 49_606_258, 8.7),
    ("swin_base", 87_768_224, 15.4)])
def test_published_swin_counts(variant, expected, gmacs):
  # Published at 224, 1000 classes: 28.29M / 49.61M / 87.77M params, 4.5 / 8.7 / 15.4 GFLOPs.
  c = count(swin_spec(variant))
  assert c.params == expected
  assert c.macs / 1e9 == pytest.approx(gmacs, abs=0.05)


# grid 15 (odd: the merge pads) with window 4 (the windows pad to 16); then grid 8 = window·2.
ODD = swin_spec("swin_test", image_size=30, patch_size=2, num_classes=7, window=4)


def test_param_count_matches_the_model():
  model = build_model(ODD)
  assert count(ODD).params == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert [type(layer).__name__ for layer in ODD.layers] == [
      "BlockSpec", "BlockSpec", "MergeSpec", "BlockSpec", "BlockSpec"]
  assert [s.grid for _, s in ODD.walk()] == [15, 15, 15, 8, 8]
  assert [(b.window, b.shift) for b in ODD.blocks] == [(4, 0), (4, 2), (4, 0), (4, 2)]


@pytest.mark.parametrize("layer, shape", [
    (BlockSpec("msa", heads=4, mlp=512, head_dim=32, window=4, shift=2), Shape(10, 128)),
    (BlockSpec("msa", heads=4, mlp=0, head_dim=32, window=8), Shape(8, 128)),
    (BlockSpec("conv3", conv_dim=64, mlp=256), Shape(8, 128)),
    (BlockSpec("conv3", conv_dim=64, mlp=0, window=4, shift=2), Shape(10, 128)),
    (MergeSpec(out_width=256), Shape(9, 128))],
    ids=["shifted-padded", "window", "conv3", "conv3-in-shifted-padded-windows", "merge"])
def test_layer_macs_agree_with_xla_cost_analysis(layer, shape):
  """Each Swin layer kind alone: analytic MACs within 8 % of XLA's FLOPs / 2 (XLA also counts
  elementwise work: softmax, GELU, norms, the bias and mask adds). For a 3×3 conv XLA counts only
  the taps that land inside the map (or window), a fraction ((3s - 2) / 3s)² on an s × s map;
  accounting counts all 9 per position, as fvcore/thop and the reference do."""
  spec = swin_spec("swin_test", image_size=2 * shape.grid, patch_size=2, width=shape.width)
  rngs = nnx.Rngs(0)
  module = (PatchMerging(shape.width, layer.out_width, shape.grid, 1e-5, rngs=rngs)
            if isinstance(layer, MergeSpec) else Block(spec, layer, rngs=rngs, shape=shape))
  graphdef, state = nnx.split(module)
  x = jnp.ones((1, shape.tokens, shape.width))
  flops = xla_flops(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
  expected = layer.macs(shape, 32)
  if getattr(layer, "attn", "") == "conv3":
    size = layer.window or shape.grid
    positions = (-(-shape.grid // size) * size)**2
    taps = 9 * shape.width * layer.conv_dim * positions
    expected -= taps * (1 - ((3 * size - 2) / (3 * size))**2)
  assert expected == pytest.approx(flops / 2, rel=0.08)


def test_save_load_and_format_round_trip(tmp_path):
  model = build_model(ODD, seed=1)
  save_model(str(tmp_path / "m"), model)
  arch = json.load(open(tmp_path / "m" / "arch.json"))["arch"]
  assert arch["format"] == 2 and arch["family"] == "swin"
  assert [layer["kind"] for layer in arch["layers"]][2] == "merge"
  x = jax.random.normal(jax.random.key(0), (2, 30, 30, 3))
  np.testing.assert_allclose(load(str(tmp_path / "m"))(x), model(x), atol=1e-6)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace_block(0, window=16), "blocks[0].window = 16: Swin attention needs"),
    (lambda s: s.replace_block(1, shift=4), "blocks[1].shift = 4: must be < window (4)"),
    (lambda s: s.replace(blocks=s.blocks[:2]), "use drop_blocks"),
    (lambda s: s.replace(class_token=True), "no class or distillation token"),
    (lambda s: s.replace_block(2, attn="conv3", heads=0, conv_dim=8, window=9, shift=0),
     "blocks[2].window = 9: a convolution inside windows needs window <= the grid"),
    (lambda s: ArchSpec.from_dict({**s.to_dict(), "format": 3}), "reads formats 1 and 2"),
    (lambda s: dense_spec("test_micro", image_size=16, patch_size=4).replace(
        layers=(MergeSpec(out_width=64),)), "'merge' layers are only allowed in family 'swin'"),
])
def test_swin_spec_errors_name_the_field(edit, message):
  with pytest.raises(UserError) as e:
    edit(ODD)
  assert message in str(e.value)


def test_drop_blocks_keeps_merges():
  spec = ODD.drop_blocks([1, 2])
  assert [layer.kind for layer in spec.layers] == ["block", "merge", "block"]
  assert count(spec).params < count(ODD).params


# Surgery on Swin ----------------------------------------------------------------------------------
X30 = jax.random.normal(jax.random.key(3), (2, 30, 30, 3))


def test_adaptor_swap_equals_dropping_and_keeps_every_other_weight():
  from jaxprune.methods.practise import with_adaptor
  from jaxprune.surgery import block_states, drop_blocks
  dense = build_model(ODD, seed=4)
  for i in (1, 2):  # the block before and the block after the patch merging
    dropped = drop_blocks(dense, [i])
    assert dropped.spec == ODD.drop_blocks([i])
    kept = [s for j, s in enumerate(block_states(dense)) if j != i]
    for a, b in zip(jax.tree.leaves(block_states(dropped)), jax.tree.leaves(kept)):
      np.testing.assert_array_equal(a, b)
    for placement in ("around", "in_place"):
      np.testing.assert_allclose(with_adaptor(dense, i, placement)(X30), dropped(X30),
                                 atol=1e-5)


def test_compress_block_on_swin_removes_attention_only():
  from jaxprune.methods.dcvit.structure import compress_block
  dense = build_model(ODD, seed=5)
  i = 2  # first block after the merge: width 64
  compressed = compress_block(dense, i, ODD.blocks[i].mlp, seed=0)
  assert compressed.spec.blocks[i].attn == "none"
  no_attn = nnx.to_pure_dict(nnx.state(dense))
  proj = no_attn["layers"][3]["attn"]["proj"]  # layers: block, block, merge, block, block
  proj["kernel"], proj["bias"] = 0 * proj["kernel"], 0 * proj["bias"]
  graphdef, state = nnx.split(dense)
  nnx.replace_by_pure_dict(state, no_attn)
  np.testing.assert_allclose(compressed(X30), nnx.merge(graphdef, state)(X30), atol=1e-5)


# DC-ViT and PRACTISE on Swin: pairs ----------------------------------------------------------------
MINI = swin_spec("swin_mini", image_size=28, patch_size=2, num_classes=10, in_channels=1)


def test_dcvit_candidates_are_pairs_of_the_longest_stage():
  from jaxprune.methods.dcvit.structure import candidate_units, stages, units
  assert stages(MINI) == [[0, 1], [2, 3, 4, 5, 6, 7], [8, 9]]
  assert candidate_units(MINI, 2) == [(2, 3), (4, 5), (6, 7)]
  assert units(MINI, 2) == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
  assert candidate_units(ODD, 2) == []  # every pair holds the first or the last block


def test_structure_for_pairs_lands_on_the_target():
  from jaxprune.methods.dcvit.structure import compressed_spec, structure_for
  dense = count(MINI).macs
  for target in (0.85, 0.75, 0.6):
    st = structure_for(MINI, target, 3, width_multiple=8, unit=(2, 3))
    blocks = [b for u in [(2, 3), (4, 5), (6, 7)][:st.k] for b in u]
    got = count(compressed_spec(MINI, blocks, st.hidden)).macs / dense
    step = len(blocks) * 2 * 49 * 64 * 8 / dense  # one width_multiple in every block (7x7, 64)
    assert target - step <= got <= target + 1e-9  # the width rounds down: at or just below


def test_trainable_upto_on_swin_freezes_later_layers_and_merges():
  from jaxprune.methods.mimicking import trainable_upto
  from jaxprune.train.optim import group_labels, path_str, trainable_paths
  from configs import common as cfgs
  model = build_model(MINI)
  params = {"weights": nnx.state(model, nnx.Param), "gates": {}}
  labels = group_labels(params, cfgs.optim_config(),
                        trainable_paths(model, trainable_upto(MINI, 4), "test"))
  frozen = {path_str(p) for p, v in jax.tree_util.tree_leaves_with_path(labels)
            if v == "frozen"}
  # layers: 0 1 | merge 2 | blocks 2..7 at 3..8 | merge 9 | 10 11; block 4 (layer 5) trains
  assert any(k.startswith("weights/layers/6/") for k in frozen)
  assert any(k.startswith("weights/layers/9/") for k in frozen)  # the later patch merging
  assert not any(k.startswith(("weights/layers/5/", "weights/layers/2/", "weights/norm/"))
                 for k in frozen)


# Import parity ------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from jaxprune import convert  # noqa: E402

SHAPES = {  # unusual shapes: padded windows, odd grids, clamped windows, 1-block stages
    "pad-odd": dict(image_size=28, patch_size=2, embed_dim=16, depths=[2, 2, 1],
                    num_heads=[2, 4, 2], window_size=4),
    "window7": dict(image_size=56, patch_size=4, embed_dim=24, depths=[1, 3],
                    num_heads=[3, 3], window_size=7, mlp_ratio=2.0),
    "one-stage": dict(image_size=24, patch_size=3, embed_dim=8, depths=[2], num_heads=[1],
                      window_size=3, num_channels=1),
}


def _hf(name):
  torch.manual_seed(0)
  cfg = transformers.SwinConfig(num_labels=5, **SHAPES[name])
  model = transformers.SwinForImageClassification(cfg).eval()
  with torch.no_grad():  # non-zero biases and tables everywhere
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model, cfg


def _logits(hf, cfg):
  x = np.random.default_rng(0).normal(
      size=(2, cfg.image_size, cfg.image_size, cfg.num_channels)).astype(np.float32)
  with torch.no_grad():
    ref = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
  return x, ref


@pytest.mark.parametrize("name", list(SHAPES))
def test_hf_swin_parity(name, tmp_path):
  hf, cfg = _hf(name)
  x, ref = _logits(hf, cfg)
  # In-memory state dict (transformers>=5 names) with the config, and a saved folder via the CLI.
  sd = {k: v.numpy() for k, v in hf.state_dict().items()}
  ours = convert.import_checkpoint(sd, "hf", hf_config=cfg.to_dict())
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), ref, atol=1e-4)
  hf.save_pretrained(tmp_path / "hf")
  assert convert.main([str(tmp_path / "hf"), "--out", str(tmp_path / "m")]) == 0
  loaded = load(str(tmp_path / "m"))
  assert loaded.spec == ours.spec
  np.testing.assert_allclose(np.asarray(loaded(jnp.asarray(x))), ref, atol=1e-4)


def _timm_layout(hf):
  """The HF model's weights renamed to timm>=0.9's Swin layout: merging at the start of the next
  stage, `head.fc`, buffers present (they must be ignored)."""
  from jaxprune.convert_swin import hf_to_canonical
  sd = hf_to_canonical({k: v.numpy() for k, v in hf.state_dict().items()})
  out = {}
  for k, v in sd.items():
    k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) + 1}.downsample.", k)
    out[k.replace("head.", "head.fc.") if k.startswith("head.") else k] = v
    if k.endswith("relative_position_bias_table"):
      out[k.replace("bias_table", "index")] = np.zeros((1,), np.int64)
  return out


def test_timm_swin_parity_and_image_size_required():
  hf, cfg = _hf("pad-odd")
  x, ref = _logits(hf, cfg)
  sd = _timm_layout(hf)
  with pytest.raises(UserError, match="pass --image-size"):
    convert.import_checkpoint(sd, "auto")
  ours = convert.import_checkpoint(sd, "auto", image_size=28)
  np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), ref, atol=1e-4)


def test_methods_without_swin_support_refuse_it_before_any_work(tmp_path, monkeypatch):
  import dataclasses
  from jaxprune import methods
  from jaxprune.main import execute
  from configs import spvit
  methods.all_methods()  # discovered first, then one of them narrowed
  monkeypatch.setitem(methods._METHODS, "spvit",
                      dataclasses.replace(methods.get("spvit"), families=("vit",)))
  config = spvit.get_config()
  config.model.update(variant="swin_test", num_heads=0)
  with pytest.raises(UserError, match="method 'spvit' does not run on 'swin' models yet"):
    execute(config, str(tmp_path / "run"), overwrite=False)
  assert not (tmp_path / "run").exists()


def test_model_window_sets_the_swin_window_and_is_refused_on_vit():
  spec = dense_spec("swin_test", image_size=32, patch_size=2, window=8)
  assert [(b.window, b.shift) for b in spec.blocks] == [(8, 0), (8, 4), (8, 0), (8, 0)]
  with pytest.raises(UserError, match="model.window = 4 applies to Swin variants only"):
    dense_spec("test_micro", image_size=16, patch_size=4, window=4)
