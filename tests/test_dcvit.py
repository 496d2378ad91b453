"""DC-ViT and PRACTISE: synthetic set, structure, surgery, mimicking, end to end."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from jaxprune import build_model, dense_spec, load, macs
from jaxprune.errors import UserError
from jaxprune.methods.dcvit import kl_metric
from jaxprune.methods.mimicking import trainable_upto
from jaxprune.train.optim import trainable_paths
from jaxprune.methods.practise import with_adaptor
from jaxprune.methods.dcvit.structure import compress_block, compressed_spec, structure_for
from jaxprune.models.blocks import gelu
from jaxprune.surgery import drop_blocks
from jaxprune.synth import InversionConfig, invert, labels_for, save
from jaxprune.train.mesh import make_mesh
from jaxprune.train.optim import group_labels, path_str
from jaxprune.train.workdir import LOCK_FILE, run_entries
from configs import common as cfgs
from tests.test_configs import run_config

SPEC = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=4, in_channels=1,
                  depth=6, num_heads=2)
X = jax.random.normal(jax.random.key(0), (3, 16, 16, 1))


def test_inversion_lowers_its_loss_is_deterministic_and_stays_in_range(tmp_path):
  model = build_model(SPEC, seed=0)
  labels = labels_for(10, 4)  # not a multiple of the 8 devices: padded internally
  cfg = InversionConfig(steps=40, warmup_steps=5, lr=0.1)
  seen = []
  a = invert(model, labels, cfg, make_mesh(), seed=1, mean=(0.5,), std=(0.25,),
             progress=lambda *r: seen.append(r))
  b = invert(model, labels, cfg, make_mesh(), seed=1, mean=(0.5,), std=(0.25,))
  np.testing.assert_array_equal(a["images"], b["images"])  # watched or not
  assert [r[0] for r in seen] == list(range(4, 41, 4)) and seen[-1][3] == a["best_loss"]
  assert len(a["loss_curve"]) == 40 and seen[-1][2] == a["loss_curve"][-1]
  assert a["best_loss"] < a["loss_curve"][0]
  assert a["images"].min() >= -2 - 1e-6 and a["images"].max() <= 2 + 1e-6  # (0-.5)/.25 .. (1-.5)/.25
  assert a["images"].shape == (10, 16, 16, 1) and a["images_per_s"] > 0
  npz, png = save(str(tmp_path), a)
  assert os.path.exists(npz) and os.path.getsize(png) > 0


def test_inversion_with_bfloat16_matmuls_follows_the_float32_loop():
  """`synthetic.compute_dtype = "bfloat16_matmul"`: the same loop with bfloat16 operands in the
  dense layers; its losses track float32's within bfloat16 rounding, and a wrong name is a
  one-line error."""
  model = build_model(SPEC, seed=0)
  cfg = InversionConfig(steps=6, warmup_steps=1, lr=0.1)
  runs = [invert(model, labels_for(8, 4), dataclasses.replace(cfg, compute_dtype=d), make_mesh(),
                 seed=1, mean=(0.5,), std=(0.25,))["loss_curve"]
          for d in ("float32", "bfloat16_matmul")]
  assert not np.array_equal(*runs)  # the products did change ...
  np.testing.assert_allclose(runs[1], runs[0], rtol=0.02)  # ... by rounding only
  with pytest.raises(UserError, match="synthetic.compute_dtype = 'fp16': allowed are float32"):
    invert(model, labels_for(8, 4), dataclasses.replace(cfg, compute_dtype="fp16"), make_mesh(),
           seed=1, mean=(0.5,), std=(0.25,))

def test_synthetic_labels_are_random_distinct_classes_per_batch_of_50():
  """The reference draws 50 distinct random classes per batch: with 500 images and 1000 classes
  every class must be reachable (cycling 0..n-1 targeted classes 0-499 only)."""
  labels = labels_for(500, 1000, seed=0)
  assert labels.shape == (500,) and labels.dtype == np.int32
  assert all(len(set(labels[i:i + 50])) == 50 for i in range(0, 500, 50))  # no repeat in a batch
  assert labels.max() >= 500  # beyond the first half of the classes
  seen = set(np.concatenate([labels_for(500, 1000, seed=s) for s in range(40)]).tolist())
  assert seen == set(range(1000))  # every class can be drawn
  np.testing.assert_array_equal(labels, labels_for(500, 1000, seed=0))  # seeded
  assert not np.array_equal(labels, labels_for(500, 1000, seed=1))
  # A batch larger than the class count: whole permutations, balanced, not in 0..K-1 order.
  small = labels_for(120, 10, seed=3)
  assert [np.bincount(small[i:i + 50], minlength=10).tolist() for i in (0, 50)] == [[5] * 10] * 2
  assert sorted(small[:10]) == list(range(10)) and list(small[:10]) != list(range(10))
  assert len(set(labels_for(7, 10, seed=0))) == 7


def test_inversion_tv_prior_sees_the_jittered_image(monkeypatch):
  """The reference takes the image priors of the rolled/flipped input: the TV term's argument
  must be the jittered batch (the roll moves the seam), not the optimised images."""
  import jaxprune.synth as synth
  seen = []
  real = synth.total_variation

  def spy(x, exponent, group=1):
    jax.debug.callback(lambda v: seen.append(np.asarray(v)), x)
    return real(x, exponent, group)

  monkeypatch.setattr(synth, "total_variation", spy)
  model = build_model(SPEC, seed=0)
  cfg = InversionConfig(steps=1, warmup_steps=0, lr=0.0, jitter=3, flip=False)
  out = invert(model, labels_for(8, 4), cfg, make_mesh(), seed=1, mean=(0.5,), std=(0.25,))
  x0 = out["images"]  # lr 0: the optimised images never move
  x_tv = np.asarray(seen[0])[:8]
  assert not np.array_equal(x_tv, x0)  # jittered ...
  shifts = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
            if np.array_equal(np.roll(x0, (dy, dx), axis=(1, 2)), x_tv)]
  assert len(shifts) == 1 and shifts[0] != (0, 0)  # ... by one roll of the batch


def test_structure_matches_two_dropped_blocks_with_three_compressed():
  spec = dense_spec("test_small", image_size=28, patch_size=4, num_classes=10, in_channels=1,
                    depth=6, num_heads=4)
  two_dropped = macs(spec.replace(blocks=spec.blocks[:4])) / macs(spec)
  st = structure_for(spec, two_dropped, num_candidates=4)
  assert st.k == 3 and st.hidden % 8 == 0 and 0 < st.hidden < 128
  got = macs(compressed_spec(spec, [1, 2, 3], st.hidden)) / macs(spec)
  assert got <= two_dropped and got == pytest.approx(two_dropped, abs=0.02)
  with pytest.raises(UserError, match=r"unreachable .* reachable are 0\.\d+ to 0\.\d+ x dense"):
    structure_for(spec, 0.99, num_candidates=4)


def test_reference_convention_reproduces_the_reference_structures_on_deit_base():
  """`macs_convention = "reference"`: DC-ViT's rule as `flops2structure` (src/thop/
  get_structure.py) derives it with thop's counts, written out here: LayerNorm 4·N·C (2 per
  element, ×2 affine), linears in·out per token, no attention matmuls. At the MACs of 1/2/3
  dropped blocks its log gives k = 2/3/4 blocks at MLP ratios 3.0 / 1.9991319444444446 /
  1.4986979166666665 (hidden = int(768·ratio)); also the paper's −16.6 % point."""
  n, c, p = 197, 768, 196
  attn, mlp = 4 * n * c + 4 * n * c * c, 8 * n * c * c   # BlockAttn (norm1, qkv, proj), Mlp
  block = attn + 4 * n * c + mlp                           # + norm2
  origin = p * c * 3 * 16 * 16 + 12 * block + 4 * n * c + c * 1000  # embed, blocks, norm, head
  spec = dense_spec("deit_base", image_size=224, num_classes=1000)
  logged = {1: 3.0, 2: 1.9991319444444446, 3: 1.4986979166666665}
  for dropped, ratio in [*logged.items(), (None, None)]:
    comp = (origin - dropped * block) / origin if dropped else 1 - 0.166
    rm = origin - origin * comp
    k = -(-rm // (attn + mlp))
    mlp_ratio = (1.0 - ((rm - k * attn) / k) / mlp) * 4.0
    if ratio is not None:
      assert (k, mlp_ratio) == (dropped + 1, pytest.approx(ratio, abs=1e-12))
    st = structure_for(spec, comp, 10, width_multiple=1, convention="reference")
    assert (st.k, st.hidden) == (k, int(c * mlp_ratio)), (dropped, st)
  # jaxprune's full count differs there: one block's MACs is one compressed block of MLP 0.
  st = structure_for(spec, (origin - block) / origin, 10, width_multiple=1)
  assert (st.k, st.hidden) == (1, 0)


def test_compressed_block_keeps_a_seeded_subset_of_mlp_units():
  model = build_model(SPEC, seed=2)
  small = compress_block(model, 2, hidden=5, seed=7)
  b = small.spec.blocks[2]
  assert (b.attn, b.mlp) == ("none", 5) and small.spec.blocks[1] == SPEC.blocks[1]
  keep = np.sort(np.random.default_rng([7, 2]).choice(SPEC.blocks[2].mlp, 5, replace=False))
  block = model.blocks[2]
  x = jax.random.normal(jax.random.key(1), (2, 17, 32))
  h = gelu(block.mlp.fc1(block.norm2(x)))
  mask = np.zeros(h.shape[-1], np.float32)
  mask[keep] = 1
  want = x + block.mlp.fc2(h * mask)
  np.testing.assert_allclose(small.blocks[2](x), want, atol=1e-5)
  np.testing.assert_array_equal(compress_block(model, 2, 5, 7).blocks[2].mlp.fc1.kernel[...],
                                small.blocks[2].mlp.fc1.kernel[...])


def test_compressed_block_without_mlp_units_keeps_the_fc2_bias():
  model = build_model(SPEC, seed=2)
  bias = 0.3 * jax.random.normal(jax.random.key(4), (SPEC.width,))
  model.blocks[2].mlp.fc2.bias[...] = bias
  empty = compress_block(model, 2, hidden=0, seed=7)
  assert (empty.spec.blocks[2].mlp, empty.spec.blocks[2].mlp_bias) == (0, True)
  x = jax.random.normal(jax.random.key(1), (2, 17, 32))
  np.testing.assert_allclose(empty.blocks[2](x), x + bias, atol=1e-6)  # x + fc2(0)


def test_drop_blocks_removes_them_from_the_spec():
  model = build_model(SPEC, seed=3)
  dropped = drop_blocks(model, [1, 4])
  assert dropped.spec.depth == 4
  x = model.embed(X)
  for i in (0, 2, 3, 5):
    x = model.blocks[i](x)
  np.testing.assert_allclose(dropped(X), model.logits(model.norm(x)), atol=1e-5)


@pytest.mark.parametrize("placement", ["around", "in_place"])
def test_identity_adaptors_start_as_dropping_the_block(placement):
  model = build_model(SPEC, seed=4)
  np.testing.assert_allclose(with_adaptor(model, 3, placement)(X), drop_blocks(model, [3])(X),
                             atol=1e-5)


def test_practise_adaptors_sit_where_the_reference_puts_them():
  """Block 3 of 6 dropped: an adaptor after fc2 of blocks 0-2 and before qkv of the two later
  blocks (`insert_one_block_adaptors_for_vit`), the only weights a PRACTISE phase trains; with
  non-identity adaptors the model computes exactly that, written out here."""
  import jax.numpy as jnp
  from jaxprune.methods.practise import ADAPTORS_ONLY
  from jaxprune.models.blocks import WithAdaptor
  dense = build_model(SPEC, seed=4)
  model = with_adaptor(dense, 3, "around")
  assert model.spec == SPEC.drop_blocks([3])
  assert [type(b.mlp.fc2).__name__ for b in model.blocks] == ["WithAdaptor"] * 3 + ["Linear"] * 2
  assert [type(b.attn.qkv).__name__ for b in model.blocks] == ["Linear"] * 3 + [
      "WithAdaptor"] * 2
  params = {"weights": nnx.state(model, nnx.Param), "gates": {}}
  labels = group_labels(params, cfgs.optim_config(),
                        trainable_paths(model, ADAPTORS_ONLY, "test"))
  trained = [path_str(p) for p, v in jax.tree_util.tree_leaves_with_path(labels)
             if v != "frozen"]
  assert len(trained) == 2 * 5 and all("/practise_adaptor/" in p for p in trained), trained
  rng = np.random.default_rng(0)
  for b in model.blocks:  # adaptors away from the identity
    for layer in (b.mlp.fc2, b.attn.qkv):
      if isinstance(layer, WithAdaptor):
        a = layer.practise_adaptor.adaptor
        a.kernel[...] = a.kernel[...] + 0.1 * jnp.asarray(rng.normal(size=a.kernel.shape))
        a.bias[...] = 0.1 * jnp.asarray(rng.normal(size=a.bias.shape), jnp.float32)
  x = dense.embed(X)
  for i, b in enumerate(dense.blocks[:3] + dense.blocks[4:]):  # the dense weights, by hand
    ad = model.blocks[i]
    y = b.norm1(x)
    if i >= 3:  # before the qkv of a later block
      y = ad.attn.qkv.practise_adaptor(y)
    x = x + b.attn(y)
    h = b.mlp.fc2(gelu(b.mlp.fc1(b.norm2(x))))
    x = x + (ad.mlp.fc2.practise_adaptor(h) if i < 3 else h)  # after the fc2 of an earlier one
  np.testing.assert_allclose(model(X), dense.logits(dense.norm(x)), atol=1e-5)


def test_trainable_upto_leaves_embeddings_and_early_blocks_trainable():
  model = build_model(SPEC)
  params = {"weights": nnx.state(model, nnx.Param), "gates": {}}
  labels = group_labels(params, cfgs.optim_config(),
                        trainable_paths(model, trainable_upto(SPEC, 3), "test"))
  flat = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(labels)}
  frozen = {k for k, v in flat.items() if v == "frozen"}
  assert all(k.startswith(("weights/blocks/4/", "weights/blocks/5/", "weights/head/"))
             for k in frozen)
  assert any(k.startswith("weights/blocks/5/") for k in frozen)
  assert not any(k.startswith(("weights/blocks/3/", "weights/pos_embed", "weights/norm/"))
                 for k in frozen)


def test_a_trainable_set_that_selects_nothing_is_an_error():
  """The regexes this replaced froze nothing, silently, when they matched nothing."""
  from flax import nnx as nnx_
  model = build_model(SPEC)
  nothing = nnx_.All(nnx_.Param, lambda path, value: "practise_adaptor" in map(str, path))
  with pytest.raises(UserError, match="phase p: the trainable set selects no weight"):
    trainable_paths(model, nothing, "phase p")


def test_kl_metric():
  a, b = build_model(SPEC, seed=0), build_model(SPEC, seed=1)
  images = np.asarray(X)
  assert kl_metric(a, a, images) == pytest.approx(0.0, abs=1e-6)
  assert kl_metric(a, b, images) > 0
  # At temperature T: KL of softmax(logits / T), checked against a float64 numpy computation
  def kl(t, s):
    p = np.exp(t - t.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    log_q = s - s.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    return np.mean(np.sum(p * (np.log(p) - log_q), -1))

  ta, tb = (np.asarray(m(X), np.float64) for m in (a, b))
  for t in (1.0, 2.0, 4.0):
    assert kl_metric(a, b, images, temperature=t) == pytest.approx(kl(ta / t, tb / t), rel=1e-4)


def test_dcvit_main_job(tmp_path):
  """The whole job in its search form over one few-shot seed: PRACTISE, the drop and compress
  trials, the searched family, the seeds' summary. (The rule's compress_to and Trials run in the
  dcvit notebook's test; "both" only lists the two families' (name, builder) pairs.) Three
  blocks, so one DC-ViT candidate: 6 trials instead of depth 4's 10, each its own compile."""
  w = tmp_path / "w"
  r = run_config("dcvit", w, "--config.dcvit.structure=search", "--config.dcvit.seeds=(0,)",
                 "--config.model.depth=3")
  assert r.returncode == 0, r.stderr[-3000:]
  top = json.load(open(w / "summary.json"))
  assert top["seeds"] == [0] and top["family"][0]["accuracy_std"] == 0.0  # one seed: std 0
  s = json.load(open(w / "seeds" / "0" / "summary.json"))  # that seed's full summary
  assert set(s["dense"]) >= {"params", "macs", "accuracy", "latency_ms"}
  assert len(s["family"]) >= 2 and s["practise"]  # the sweep's target + PRACTISE's matched one
  for f in s["family"]:  # each under its target (pure drops: within the slack), chosen by score
    assert {"blocks", "dropped", "mlp_width", "target_ratio", "macs", "accuracy"} <= set(f)
    assert f["macs"] / s["dense"]["macs"] <= f["target_ratio"] + 1e-6
    assert f["candidates"] and f["structure"]["score"] == min(c["score"] for c in f["candidates"])
    spec = load(f["model_dir"]).spec
    assert spec.depth == 3 - len(f["dropped"])
    assert sum(b.attn == "none" for b in spec.blocks) == len(f["blocks"])
  # n = 0, DC-ViT's own structure, is scored wherever the rule reaches the target (the sweep's)
  assert s["family"][0]["candidates"][0]["dropped"] == []
  trials = os.listdir(w / "seeds" / "0" / "trials")
  assert {"drop0.json", "drop2.json", "b1_h64.json", "b1_h32.json"} <= set(trials)  # H, H/2
  record = json.load(open(w / "seeds" / "0" / "trials" / "drop2.json"))
  assert record["kl"] >= 0 and record["kl_fewshot"] >= 0  # both metric sets measured
  assert s["practise"][0]["dropped"] and os.path.getsize(w / "family.png") > 0
  assert os.path.exists(w / "synthetic" / "synthetic.png")  # one synthetic set for all seeds
  # --overwrite deletes exactly these names: every top-level entry a run writes must be one
  written = set(os.listdir(w))
  assert written <= run_entries() | {LOCK_FILE}, written - run_entries()
  _check_trials_by_metric_set(w)
  _check_first_progressive_step_is_the_trial(w)


def _check_first_progressive_step_is_the_trial(w):
  """DC-ViT's rule: the first unit of the progressive compression is its trial's recovered
  student, reused as the reference does (prune.py), not fine-tuned a second time."""
  import ml_collections
  from jaxprune.methods import pretrain
  from jaxprune.methods.dcvit import Trials, compress_to
  from jaxprune.methods.dcvit.structure import block_costs
  from jaxprune.train.logging import MetricWriter
  config = ml_collections.ConfigDict(json.load(open(w / "config.json")))
  config.data.fewshot_seed = 0
  run = w / "seeds" / "0"
  writer = MetricWriter(str(run))
  dense = pretrain.dense_model(config, str(w), writer)
  m_attn, m_mlp, h = block_costs(dense.spec, 1)
  dense_macs = macs(dense.spec)
  target = (dense_macs - m_attn - 0.5 * m_mlp) / dense_macs  # k = 1, MLP H/2: trial b1_h32
  trials = Trials(config, str(run), dense, None, writer)
  model, info = compress_to(config, str(run), dense, target, trials, [(1,)], writer)
  assert (info["blocks"], info["mlp_width"]) == ([1], h // 2)
  phases = os.listdir(run / "checkpoints")
  assert "trial_b1_h32_masked" in phases and not [p for p in phases if p.startswith("target")], phases
  trial = Trials(config, str(run), dense, None, writer).recovered((1,), h // 2)
  sp = trial.spec
  x = jax.random.normal(jax.random.key(1), (2, sp.image_size, sp.image_size, sp.in_channels))
  assert sp == model.spec
  np.testing.assert_array_equal(model(x), trial(x))
  writer.close()


def _check_trials_by_metric_set(w):
  """On the finished run (rather than trials of its own): `dcvit.metric_set = "fewshot"` scores
  by the real few-shot images' KL, needs no synthetic set; a record written before a metric set
  was measured gets it from its restored student, checked against the record's feature MSE."""
  import ml_collections
  from jaxprune.methods import pretrain
  from jaxprune.methods.dcvit import Trials
  from jaxprune.train.logging import MetricWriter
  config = ml_collections.ConfigDict(json.load(open(w / "config.json")))
  config.data.fewshot_seed, config.dcvit.metric_set = 0, "fewshot"
  run, path = w / "seeds" / "0", w / "seeds" / "0" / "trials" / "drop2.json"
  writer = MetricWriter(str(run))
  dense = pretrain.dense_model(config, str(w), writer)  # the run's, read back
  full = json.load(open(path))
  old = {k: v for k, v in full.items() if k != "kl_fewshot"}
  json.dump(old, open(path, "w"))  # as written before kl_fewshot existed
  r = Trials(config, str(run), dense, None, writer).drop((2,))
  assert r["score"] == r["kl_fewshot"] == pytest.approx(full["kl_fewshot"], rel=1e-5)
  assert json.load(open(path))["kl_fewshot"] == r["score"]  # written back
  fresh = Trials(config, str(run), dense, None, writer).metric((1,), 16)  # a new trial
  assert "kl" not in fresh and fresh["score"] == fresh["kl_fewshot"] > 0  # no synthetic set
  config.dcvit.metric_temperature = 2.0  # a record gets its KL at another temperature beside
  warm = Trials(config, str(run), dense, None, writer).drop((2,))
  assert warm["score"] == warm["kl_fewshot_T2"] != warm["kl_fewshot"] == r["score"]
  assert json.load(open(path))["kl_fewshot_T2"] == warm["score"]
  config.dcvit.metric_temperature = 1.0
  json.dump({**old, "feature_mse": old["feature_mse"] * 2}, open(path, "w"))
  with pytest.raises(UserError, match="feature_mse"):  # a checkpoint that is not the trial's
    Trials(config, str(run), dense, None, writer).drop((2,))
  writer.close()


def test_practise_latency_saved_times_each_pruned_architecture_once(monkeypatch, capsys):
  """Identical blocks share one measured saving (timer noise must not order them); a different
  block is timed on its own; a saving measured <= 0 falls back to the MACs share."""
  from jaxprune import accounting
  from jaxprune.methods import practise
  odd = dataclasses.replace(SPEC.blocks[3], mlp=SPEC.blocks[3].mlp // 2)
  spec = SPEC.replace(blocks=SPEC.blocks[:3] + (odd,) + SPEC.blocks[4:])  # block 3 differs
  dense = build_model(spec, seed=0)
  units = [(i,) for i in range(6)]
  timed = []

  def fake(models, batch):
    timed.append(sorted(k for k in models if k != "dense"))
    return {"dense": 10.0, **{u: (10.2 if u == (3,) else 8.0) for u in models if u != "dense"}}

  monkeypatch.setattr(accounting, "compare_latency", fake)
  saved = practise.latency_saved(dense, 4, units)
  # blocks 0-2 leave the odd block at position 2, blocks 4-5 at position 3: two architectures
  assert timed == [[(0,), (3,), (4,)]]
  assert [saved[(i,)] for i in (0, 1, 2, 4, 5)] == [2.0] * 5
  share = 1 - macs(drop_blocks(dense, [3]).spec) / macs(spec)
  assert saved[(3,)] == pytest.approx(10.0 * share) and saved[(3,)] > 0
  assert "dropping block(s) [3] measured -0.200 ms" in capsys.readouterr().out

