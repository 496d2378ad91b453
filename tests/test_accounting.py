import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxprune import BlockSpec, build_model, count, dense_spec, macs, measure_latency, params
from jaxprune.accounting import compare_latency, xla_flops


@pytest.mark.parametrize("variant, expected", [
    ("deit_tiny", 5_717_416), ("deit_small", 22_050_664), ("deit_base", 86_567_656)])
def test_published_deit_param_counts(variant, expected):
  # Published: 5.72M / 22.05M / 86.57M at 224, 1000 classes.
  assert params(dense_spec(variant)) == expected


def test_param_count_matches_model_for_every_block_kind():
  spec = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5, distilled=True)
  spec = spec.replace(blocks=(BlockSpec("msa", heads=1, mlp=7), BlockSpec("conv1", conv_dim=3),
                              BlockSpec("conv3", mlp=16, conv_dim=8), BlockSpec("none", mlp=9),
                              BlockSpec("none")))
  model = build_model(spec)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  c = count(spec)
  assert c.params == n
  assert c.macs == sum(c.block_macs) + macs(spec.replace(blocks=()))


WIDE = dense_spec("test_small", width=256, num_heads=4, image_size=32, patch_size=4,
                  num_classes=10, depth=1)


@pytest.mark.parametrize("block", [
    BlockSpec("msa", heads=4, mlp=1024), BlockSpec("msa", heads=2, mlp=0),
    BlockSpec("conv1", conv_dim=64), BlockSpec("conv3", mlp=512, conv_dim=64),
    BlockSpec("none", mlp=256)], ids=lambda b: f"{b.attn}-{b.mlp}")
def test_block_macs_agree_with_xla_cost_analysis(block):
  """XLA counts 2 FLOPs per multiply-add plus elementwise work (GELU, softmax, norms): the
  analytic MACs of one block must match XLA's count for that block within 8 %."""
  def block_flops(spec):
    graphdef, state = nnx.split(build_model(spec))
    x = jnp.ones((1, spec.image_size, spec.image_size, 3))
    return xla_flops(lambda s, x: nnx.merge(graphdef, s)(x), state, x)

  base = WIDE.replace(blocks=())
  xla_block_macs = (block_flops(WIDE.replace(blocks=(block,))) - block_flops(base)) / 2
  ours = count(WIDE.replace(blocks=(block,))).block_macs[0]
  assert ours == pytest.approx(xla_block_macs, rel=0.08)


def test_attention_matmul_convention():
  spec = dense_spec("deit_small")
  n, d = spec.num_tokens, spec.width
  assert macs(spec) - macs(spec, attention_matmuls=False) == spec.depth * 2 * n * n * d
  assert macs(spec) / 1e9 == pytest.approx(4.60, abs=0.01)  # DeiT-S: 4.6 GFLOPs as published


def test_measure_latency_reports_median_and_spread():
  model = build_model(dense_spec("test_micro", image_size=16, patch_size=4, num_classes=3))
  r = measure_latency(model, batch=4, warmup=1, iters=3)
  assert r["batch"] == 4 and r["iters"] == 3
  assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
  assert r["images_per_s"] == pytest.approx(4 / r["median_ms"] * 1e3)


def test_compare_latency_times_every_model():
  a = build_model(dense_spec("test_micro", image_size=16, patch_size=4, num_classes=3))
  b = build_model(dense_spec("test_micro", image_size=16, patch_size=4, num_classes=3, depth=1))
  r = compare_latency({"a": a, 1: b}, batch=2, rounds=2, iters=2, warmup=1)
  assert set(r) == {"a", 1} and all(v > 0 for v in r.values())


def test_describe_rows_share_one_interleaved_timing(monkeypatch):
  from jaxprune import accounting
  from jaxprune.methods import common
  a = build_model(dense_spec("test_micro", image_size=16, patch_size=4, num_classes=3))
  b = build_model(dense_spec("test_micro", image_size=16, patch_size=4, num_classes=3, depth=1))
  calls = []
  real = accounting.compare_latency
  monkeypatch.setattr(accounting, "compare_latency",
                      lambda models, **kw: calls.append(len(models)) or real(models, **kw))
  rows = common.describe([(a, 0.5), (b, 0.25)], latency_batch=2)
  assert calls == [2]  # both models timed in one interleaved measurement
  assert [r["accuracy"] for r in rows] == [0.5, 0.25]
  assert [r["macs"] for r in rows] == [macs(a.spec), macs(b.spec)] and rows[0]["macs"] > rows[1]["macs"]
  assert all(r["latency_ms"] > 0 and r["latency"]["timed_with"] == 2 for r in rows)
