"""ResNet: a family registered in one file (models/resnet.py) — counts, XLA, import parity."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import ArchSpec, build_model, count, dense_spec, load, save_model
from jaxprune.accounting import xla_flops
from jaxprune.errors import UserError
from jaxprune.models.resnet import BasicSpec, BottleneckSpec


@pytest.mark.parametrize("variant, params, gmacs", [
    ("resnet18", 11_689_512, 1.81), ("resnet34", 21_797_672, 3.66),
    ("resnet50", 25_557_032, 4.09)])
def test_published_counts(variant, params, gmacs):
  """torchvision's published parameters (exact) and GMACs at 224 (1.81 / 3.66 / 4.09)."""
  c = count(dense_spec(variant))
  assert c.params == params
  assert c.macs / 1e9 == pytest.approx(gmacs, rel=0.01)


# Unusual shapes: odd grids, a stride-2 block on an odd grid, narrowed blocks.
ODD_BASIC = ArchSpec(image_size=18, patch_size=1, width=12, num_heads=1, num_classes=5,
                     family="resnet", class_token=False, layers=(
                         BasicSpec(planes=12, out_width=12),
                         BasicSpec(planes=20, out_width=24, stride=2, shortcut=True),
                         BasicSpec(planes=7, out_width=24),
                         BasicSpec(planes=32, out_width=40, stride=2, shortcut=True)))
ODD_BOTTLENECK = ArchSpec(image_size=36, patch_size=4, width=8, num_heads=1, num_classes=3,
                          in_channels=2, family="resnet", class_token=False, layers=(
                              BottleneckSpec(planes=4, out_width=16, shortcut=True),
                              BottleneckSpec(planes=3, out_width=16),
                              BottleneckSpec(planes=8, out_width=32, stride=2, shortcut=True)))


@pytest.mark.parametrize("spec", [ODD_BASIC, ODD_BOTTLENECK], ids=["basic", "bottleneck"])
def test_params_match_the_model_and_the_spec_round_trips(spec, tmp_path):
  model = build_model(spec, seed=1)
  held = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert count(spec).params == held
  assert ArchSpec.from_json(spec.to_json()) == spec
  x = jax.random.normal(jax.random.key(0), (2, spec.image_size, spec.image_size,
                                             spec.in_channels))
  save_model(str(tmp_path / "m"), model)
  np.testing.assert_allclose(load(str(tmp_path / "m"))(x), model(x), atol=1e-5)


@pytest.mark.parametrize("spec", [
    dense_spec("resnet_mini", width=32, image_size=16, num_classes=10),
    ODD_BOTTLENECK.replace(width=32, layers=(
        BottleneckSpec(planes=32, out_width=128, shortcut=True),
        BottleneckSpec(planes=64, out_width=256, stride=2, shortcut=True)))],
    ids=["basic", "bottleneck"])
def test_macs_match_xla(spec):
  """XLA's cost analysis counts a padded conv's taps that fall inside the input only (2 FLOPs
  each), and a few FLOPs per element for BatchNorm, ReLU, pooling and adds. So: XLA's MACs equal
  the convs' valid taps, computed here from the spec's geometry (within 3 %: the elementwise
  ops), and our MACs — every tap, the torchvision / fvcore convention — equal that count plus
  the padded taps exactly."""
  graphdef, state = nnx.split(build_model(spec))
  x = jnp.ones((1, spec.image_size, spec.image_size, spec.in_channels))
  flops = xla_flops(lambda s, x: nnx.merge(graphdef, s)(x), state, x)

  def taps(g, k, s):  # (taps inside the input, all taps) of a k-wide conv at stride s, pad k//2
    out = -(-g // s)
    inside = sum(0 <= o * s - k // 2 + t < g for o in range(out) for t in range(k))
    return inside**2, (out * k)**2

  convs = [(spec.grid * 2 if spec.patch_size == 4 else spec.grid, 7 if spec.patch_size == 4 else 3,
            2 if spec.patch_size == 4 else 1, spec.in_channels, spec.width)]
  convs[0] = (spec.image_size,) + convs[0][1:]
  for b, shape in spec.walk():
    g, g2, c = shape.grid, -(-shape.grid // b.stride), shape.width
    if b.kind == "basic":
      convs += [(g, 3, b.stride, c, b.planes), (g2, 3, 1, b.planes, b.out_width)]
    else:
      convs += [(g, 1, 1, c, b.planes), (g, 3, b.stride, b.planes, b.planes),
                (g2, 1, 1, b.planes, b.out_width)]
    if b.shortcut:
      convs.append((g, 1, b.stride, c, b.out_width))
  head = spec.out_shape.width * spec.num_classes
  valid = sum(taps(g, k, s)[0] * ci * co for g, k, s, ci, co in convs) + head
  every = sum(taps(g, k, s)[1] * ci * co for g, k, s, ci, co in convs) + head
  assert valid == pytest.approx(flops / 2, rel=0.03)
  assert count(spec).macs == every


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.replace(layers=(BasicSpec(planes=8, out_width=16),)),
     "layers[0]: a block from width 12 to 16 at stride 1 needs shortcut = True"),
    (lambda s: s.replace(layers=(BasicSpec(planes=8, out_width=12, stride=3),)),
     "layers[0].stride = 3: allowed are 1, 2"),
    (lambda s: s.replace(patch_size=2), "a ResNet stem is 4"),
    (lambda s: s.replace(class_token=True), "ResNet models have no class"),
    (lambda s: dense_spec("resnet18", depth=3), "model.depth = 3 does not apply to ResNet"),
])
def test_resnet_spec_errors_name_the_field(edit, message):
  with pytest.raises(UserError) as e:
    edit(ODD_BASIC)
  assert message in str(e.value)


def test_the_stem_and_maxpool_pad_as_pytorch_does():
  """A 7x7/2 conv and a 3x3/2 max-pool on an odd 9x9 image: the map is 3x3 (⌈⌈9/2⌉/2⌉)."""
  spec = ODD_BOTTLENECK.replace(image_size=12)
  model = build_model(spec)
  assert model.embed(jnp.ones((1, 12, 12, 2))).shape == (1, 3, 3, 8)


# Import parity -------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from jaxprune import convert  # noqa: E402


def _randomise_bn(model: "torch.nn.Module", seed: int) -> None:
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
      m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
      m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
      m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("layer_type, depths, hidden, embed, size, first", [
    ("basic", [1, 2, 1], [8, 12, 20], 8, 37, False),
    ("bottleneck", [2, 1], [16, 24], 6, 29, False),
    ("bottleneck", [1, 1], [12, 20], 12, 32, True)])
def test_hugging_face_resnet_logits(layer_type, depths, hidden, embed, size, first, tmp_path):
  config = transformers.ResNetConfig(num_channels=3, embedding_size=embed, hidden_sizes=hidden,
                                     depths=depths, layer_type=layer_type, num_labels=7,
                                     downsample_in_first_stage=first)
  torch.manual_seed(0)
  ref = transformers.ResNetForImageClassification(config).eval()
  _randomise_bn(ref, 1)
  ref.save_pretrained(tmp_path)
  x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).logits.numpy()
  ours = convert.import_checkpoint(str(tmp_path), image_size=size)
  assert ours.spec.family == "resnet"
  got = np.asarray(ours(jnp.asarray(x.transpose(0, 2, 3, 1))))
  assert np.abs(got - want).max() <= 1e-4


class _TorchBlock(torch.nn.Module):
  """torchvision's BasicBlock / Bottleneck (v1.5: stride on the 3x3), by its parameter names."""

  def __init__(self, kind, cin, planes, out, stride, shortcut):
    super().__init__()
    nn = torch.nn
    if kind == "basic":
      self.conv1, self.bn1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
      self.conv2, self.bn2 = nn.Conv2d(planes, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out)
      self.convs = [(self.conv1, self.bn1), (self.conv2, self.bn2)]
    else:
      self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
      self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
      self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
      self.convs = [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]
    self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                     nn.BatchNorm2d(out)) if shortcut else None)

  def forward(self, x):
    y = x
    for i, (conv, bn) in enumerate(self.convs):
      y = bn(conv(y))
      if i < len(self.convs) - 1:
        y = torch.relu(y)
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _TorchResNet(torch.nn.Module):
  """torchvision's ResNet layout (`conv1`, `bn1`, `layer<s>`, `fc`) with any stage widths."""

  def __init__(self, kind, depths, width, classes, cifar_stem=False):
    super().__init__()
    nn = torch.nn
    k, s = (3, 1) if cifar_stem else (7, 2)
    self.conv1 = nn.Conv2d(3, width, k, s, k // 2, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.pool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, 1)
    cin, exp = width, 1 if kind == "basic" else 4
    for si, d in enumerate(depths):
      planes, blocks = width * 2**si, []
      for i in range(d):
        stride = 2 if si and not i else 1
        blocks.append(_TorchBlock(kind, cin, planes, planes * exp, stride,
                                  i == 0 and (stride != 1 or cin != planes * exp)))
        cin = planes * exp
      setattr(self, f"layer{si + 1}", nn.Sequential(*blocks))
    self.depth = len(depths)
    self.fc = nn.Linear(cin, classes)

  def forward(self, x):
    x = self.pool(torch.relu(self.bn1(self.conv1(x))))
    for si in range(self.depth):
      x = getattr(self, f"layer{si + 1}")(x)
    return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("kind, depths, width, size, cifar", [
    ("basic", (2, 1, 1), 8, 35, False), ("bottleneck", (1, 2), 4, 27, False),
    ("basic", (1, 2), 6, 13, True)])
def test_torchvision_layout_logits(kind, depths, width, size, cifar):
  torch.manual_seed(1)
  ref = _TorchResNet(kind, depths, width, 6, cifar).eval()
  _randomise_bn(ref, 2)
  x = np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  ours = convert.import_checkpoint(sd, image_size=size)
  got = np.asarray(ours(jnp.asarray(x.transpose(0, 2, 3, 1))))
  assert np.abs(got - want).max() <= 1e-4


# DC-ViT and PRACTISE on ResNets ----------------------------------------------------------------------
def test_cnn_candidates_are_never_a_stages_first_block():
  from jaxprune.methods.dcvit.structure import candidate_units, stages
  spec = dense_spec("resnet34")
  assert [len(s) for s in stages(spec)] == [3, 4, 6, 3]
  firsts = {s[0] for s in stages(spec)}
  got = [u[0] for u in candidate_units(spec, 1)]
  assert len(got) == 16 - 4 and not firsts & set(got)
  for u in got:  # each can be dropped: the model stays valid
    spec.drop_blocks([u])


def test_bn_statistics_prior_is_deepinversions():
  """R_bn = 10·(‖μ − μ̂‖₂ + ‖σ² − σ̂²‖₂) for the first BatchNorm (the stem's here), from the batch
  statistics of its input, written out by hand."""
  from jaxprune.synth import InversionConfig, invert
  from jaxprune.train.mesh import make_mesh
  spec = ArchSpec(image_size=8, patch_size=1, width=4, num_heads=1, num_classes=3, layers=(),
                  in_channels=1, family="resnet", class_token=False)
  model = build_model(spec, seed=0)
  model.stem.bn.mean[...] = jnp.arange(4.0) * 0.1
  model.stem.bn.var[...] = jnp.arange(1.0, 5.0)
  x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1))
  clone = nnx.clone(model)
  clone.bn_layers()[0].stat_weight = 10.0
  clone(x)
  got = sum(jax.tree.leaves(nnx.pop(clone, nnx.Intermediate)))
  y = jax.lax.conv_general_dilated(x, model.stem.conv.kernel[...], (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  mu, var = np.asarray(y).mean((0, 1, 2)), np.asarray(y).var((0, 1, 2))
  want = 10 * (np.linalg.norm(mu - np.arange(4.0) * 0.1) + np.linalg.norm(var - np.arange(1, 5)))
  assert float(got) == pytest.approx(want, rel=1e-5)
  # and in the inversion: with the prior, the loss is higher by about its weight times R_bn
  cfg = InversionConfig(steps=2, warmup_steps=0, lr=0.0, jitter=0, flip=False, tv_weight=0,
                        l2_weight=0)
  labels = np.array([0, 1, 2, 0, 1])
  runs = [invert(model, labels, dataclasses.replace(cfg, bn_weight=w), make_mesh(), seed=0,
                 mean=(0.5,), std=(0.5,))["loss_curve"][0] for w in (0.0, 1.0)]
  assert runs[1] > runs[0]
  with pytest.raises(UserError, match="bn_weight = 1.0: the BatchNorm-statistics prior needs a "
                                      "CNN; a 'vit' model"):
    invert(build_model(dense_spec("test_micro", image_size=8, patch_size=4, num_classes=3,
                                  in_channels=1)),
           labels, dataclasses.replace(cfg, bn_weight=1.0), make_mesh(), seed=0, mean=(0.5,),
           std=(0.5,))


def test_drop_to_drops_progressively_in_rank_order(monkeypatch, tmp_path):
  """DC-ViT on CNNs: the top-ranked unit's trial student first, then each next unit dropped from
  the current model (indices shifted by the earlier drops), until the MACs reach the target."""
  from jaxprune.methods import dcvit
  from jaxprune.methods.dcvit.structure import candidate_units
  from jaxprune.surgery import drop_blocks
  dense = build_model(dense_spec("resnet_mini", image_size=8, num_classes=3))
  candidates = candidate_units(dense.spec, 1)  # blocks 1, 3, 5
  scores = {(1,): 0.3, (3,): 0.1, (5,): 0.2}

  class FakeTrials:
    def drop(self, unit):
      return {"unit": list(unit), "score": scores[tuple(unit)]}

    def recovered_drop(self, unit):
      return drop_blocks(dense, unit)

  steps = []
  monkeypatch.setattr(dcvit, "mimic", lambda config, w, phase, model, *a, **k: (
      steps.append((phase, model.spec.depth)) or (model, {})))
  import ml_collections
  config = ml_collections.ConfigDict({"dcvit": {"finetune_steps": 1}})
  target = count(dense.spec.drop_blocks([3, 5])).macs / count(dense.spec).macs
  model, info = dcvit.drop_to(config, str(tmp_path), dense, target, FakeTrials(), candidates,
                              None)
  assert model.spec == dense.spec.drop_blocks([3, 5])
  assert info["units"] == [[3], [5]] and info["dropped"] == [3, 5]
  assert steps == [("target%.3f_drop1" % target, 4)]
  with pytest.raises(UserError, match="unreachable by dropping the 3 candidate units"):
    dcvit.drop_to(config, str(tmp_path), dense, 0.1, FakeTrials(), candidates, None)


@pytest.mark.parametrize("spec, index", [(ODD_BASIC, 1), (ODD_BOTTLENECK, 1)],
                         ids=["basic", "bottleneck"])
def test_narrowing_a_block_is_exact_where_the_cut_channels_contribute_nothing(spec, index):
  """`narrow_block` keeps a seeded subset of the inner channels: with the other channels' inputs
  to the next conv(s) zeroed, the narrowed model computes the same logits; its spec, params and
  MACs are the narrowed block's."""
  from jaxprune.models.resnet import narrow_block
  model = build_model(spec, seed=2)
  planes = spec.blocks[index].planes
  width = planes // 2 + 1
  keep = np.sort(np.random.default_rng([7, index]).choice(planes, width, replace=False))
  cut = np.setdiff1d(np.arange(planes), keep)
  block = model.blocks[index]
  k2 = block.conv2.conv.kernel
  k2.set_value(k2[...].at[:, :, cut].set(0.0))
  if block.conv3 is not None:  # the 3x3's cut outputs feed conv3 only
    k3 = block.conv3.conv.kernel
    k3.set_value(k3[...].at[:, :, cut].set(0.0))
  narrowed = narrow_block(model, index, width, seed=7)
  assert narrowed.spec == spec.replace_block(index, planes=width)
  held = sum(v.size for v in jax.tree.leaves(nnx.state(narrowed, nnx.Param)))
  assert count(narrowed.spec).params == held < count(spec).params
  x = jax.random.normal(jax.random.key(0), (2, spec.image_size, spec.image_size,
                                             spec.in_channels))
  np.testing.assert_allclose(narrowed(x), model(x), rtol=1e-5, atol=1e-5)
  assert model.spec == spec  # the source model is untouched
  with pytest.raises(ValueError, match=f"width 0 is outside 1..{planes}"):
    narrow_block(model, index, 0, seed=7)


def test_narrow_to_narrows_progressively_in_rank_order(monkeypatch, tmp_path):
  """`dcvit.structure = "narrow"`: units' inner widths cut in the order of their narrow trials'
  KL until the MACs reach the target; the first is its trial's student."""
  import ml_collections

  from jaxprune.methods import dcvit
  from jaxprune.methods.dcvit.structure import candidate_units
  from jaxprune.models.resnet import narrow_block
  dense = build_model(dense_spec("resnet_mini", image_size=8, num_classes=3))
  candidates = candidate_units(dense.spec, 1)  # blocks 1, 3, 5 (planes 16, 32, 64)
  scores = {(1,): 0.3, (3,): 0.1, (5,): 0.2}
  config = ml_collections.ConfigDict({"seed": 0, "dcvit": {
      "finetune_steps": 1, "narrow_keep": 0.5, "width_multiple": 8}})

  class FakeTrials:
    def narrow(self, unit):
      return {"unit": list(unit), "score": scores[tuple(unit)]}

    def recovered_narrow(self, unit):
      return narrow_block(dense, unit[0], dense.spec.blocks[unit[0]].planes // 2, 0)

  steps = []
  monkeypatch.setattr(dcvit, "mimic", lambda config, w, phase, model, *a, **k: (
      steps.append(phase) or (model, {})))
  want = dense.spec.replace_block(3, planes=16).replace_block(5, planes=32)
  target = count(want).macs / count(dense.spec).macs
  model, info = dcvit.narrow_to(config, str(tmp_path), dense, target, FakeTrials(), candidates,
                                None)
  assert model.spec == want
  assert info["units"] == [[3], [5]] and info["narrowed"] == [3, 5]
  assert steps == ["target%.3f_narrow1" % target]
  assert dcvit.narrow_widths(config, dense.spec, (1, 3, 5)) == [8, 16, 32]
  with pytest.raises(UserError, match="unreachable by narrowing the 3 candidate units"):
    dcvit.narrow_to(config, str(tmp_path), dense, 0.1, FakeTrials(), candidates, None)


def test_narrow_structure_is_checked_before_any_work():
  from configs import dcvit as dcvit_config
  from configs import dcvit_resnet
  from jaxprune.methods import dcvit
  config = dcvit_resnet.get_config("runlocal")
  config.dcvit.structure = "narrow"
  dcvit.check(config)  # a ResNet narrows
  config.dcvit.structure = "rule"
  with pytest.raises(UserError, match="use 'drop' .* or 'narrow'"):
    dcvit.check(config)
  vit = dcvit_config.get_config("runlocal")
  vit.dcvit.structure = "narrow"
  with pytest.raises(UserError, match="'vit' blocks cannot be narrowed; allowed in families "
                                      "resnet"):
    dcvit.check(vit)


def test_practise_adaptors_sit_where_the_reference_puts_them_on_a_resnet():
  """`insert_one_block_adaptors_for_resnet` for block 9 of a ResNet-34 layout (stage 3 holds
  dense blocks 7-12): after the conv of block 7's shortcut and of the last conv of blocks 7, 8;
  before conv1 of blocks 10-12 (pruned 9-11); before conv1 and the shortcut of block 13 (pruned
  12), the next stage's first. The only weights the phase trains; at identity, the model is the
  dropped one."""
  from jaxprune.methods.practise import ADAPTORS_ONLY, with_adaptor
  from jaxprune.surgery import drop_blocks
  from jaxprune.train.optim import trainable_paths
  dense = build_model(dense_spec("resnet34", width=4, image_size=32, num_classes=3), seed=2)
  model = with_adaptor(dense, (9,), "around")
  got = sorted(p.split("/", 2)[2] for p in trainable_paths(model, ADAPTORS_ONLY, "test"))
  want = sorted(["7/shortcut/adaptor_post/practise_adaptor", "7/conv2/adaptor_post/practise_adaptor",
                 "8/conv2/adaptor_post/practise_adaptor"]
                + [f"{b}/conv1/adaptor_pre/practise_adaptor" for b in (9, 10, 11, 12)]
                + ["12/shortcut/adaptor_pre/practise_adaptor"])
  assert got == want
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  np.testing.assert_allclose(model(x), drop_blocks(dense, (9,))(x), atol=1e-5)


@pytest.mark.parametrize("kind, drop", [("basic", ()), ("bottleneck", (2,))])
def test_hf_export_loads_in_transformers_with_the_same_logits(kind, drop, tmp_path):
  """Dense and block-dropped ResNets (DC-ViT's and PRACTISE's) fit a Hugging Face ResNetConfig;
  a narrowed block or the CIFAR stem does not, in one line."""
  from jaxprune.deploy import hf_fit, main
  from jaxprune.surgery import drop_blocks
  from tests.test_deploy import _model
  spec = dense_spec("resnet50" if kind == "bottleneck" else "resnet18", width=8, image_size=36,
                    num_classes=4)
  model = _model(spec, seed=3)
  if drop:
    model = drop_blocks(model, drop)
  save_model(str(tmp_path / "m"), model, preprocessing={"mean": (0.5,) * 3, "std": (0.25,) * 3})
  assert main([str(tmp_path / "m"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
  hf = transformers.AutoModelForImageClassification.from_pretrained(str(tmp_path / "hf")).eval()
  x = np.random.default_rng(2).normal(size=(2, 36, 36, 3)).astype(np.float32)
  with torch.no_grad():
    got = hf(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
  np.testing.assert_allclose(got, np.asarray(model(x)), atol=1e-4)
  assert "planes 5" in hf_fit(spec.replace_block(1, planes=5))
  assert "CIFAR stem" in hf_fit(dense_spec("resnet_mini"))
