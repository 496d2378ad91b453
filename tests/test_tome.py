"""Token merging (ToMe): the matching against a plain numpy reading of the paper, proportional
attention, shapes, MACs against XLA, and the architecture rules."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import ArchSpec, BlockSpec, build_model, count, dense_spec
from jaxprune.accounting import xla_flops
from jaxprune.errors import UserError
from jaxprune.models.blocks import Block
from jaxprune.models.tome import bipartite_merge


def merged_spec(spec, r):
  rs = [r] * spec.depth if isinstance(r, int) else r
  return spec.replace(blocks=[dataclasses.replace(b, merge_r=k) for b, k in zip(spec.blocks, rs)])


def reference_merge(x, size, metric, r, cls, dist):
  """One image, loops: ToMe's bipartite soft matching as the paper describes it."""
  n = len(x)
  a, b = list(range(0, n, 2)), list(range(1, n, 2))
  unit = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
  best = []
  for i, ai in enumerate(a):
    sims = [-np.inf if (cls and i == 0) or (dist and j == 0) else unit[ai] @ unit[bj]
            for j, bj in enumerate(b)]
    best.append((max(sims), int(np.argmax(sims)), i))
  merged = sorted(best, key=lambda t: -t[0])[:r]
  sources = {i for _, _, i in merged}
  acc = {j: (x[bj] * size[bj], size[bj].copy()) for j, bj in enumerate(b)}
  for _, j, i in merged:
    xs, ss = acc[j]
    acc[j] = (xs + x[a[i]] * size[a[i]], ss + size[a[i]])
  unm = [i for i in range(len(a)) if i not in sources]
  rows = [(x[a[i]], size[a[i]]) for i in unm]
  dst = [(xs / ss, ss) for xs, ss in (acc[j] for j in range(len(b)))]
  order = rows[:1] + dst[:1] + rows[1:] + dst[1:] if dist else rows + dst
  return np.stack([t for t, _ in order]), np.stack([s for _, s in order])


@pytest.mark.parametrize("n, r, cls, dist", [(17, 5, True, False), (18, 8, True, True),
                                             (16, 3, False, False), (11, 5, True, False)])
def test_merge_matches_reference_reading(n, r, cls, dist):
  rng = np.random.default_rng(n + r)
  x = rng.normal(size=(3, n, 6)).astype(np.float32)
  size = rng.integers(1, 4, size=(3, n, 1)).astype(np.float32)
  metric = rng.normal(size=(3, n, 4)).astype(np.float32)
  got, got_size = bipartite_merge(jnp.asarray(x), jnp.asarray(size), jnp.asarray(metric), r,
                                  cls, dist)
  assert got.shape == (3, n - r, 6)
  for i in range(3):
    want, want_size = reference_merge(x[i], size[i], metric[i], r, cls, dist)
    np.testing.assert_allclose(np.asarray(got[i]), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got_size[i]), want_size)
  if cls:  # the class token stays first, unchanged (up to x·size / size rounding, as ToMe's)
    np.testing.assert_allclose(np.asarray(got[:, 0]), x[:, 0], rtol=1e-6)


def test_merge_refuses_more_than_half():
  x = jnp.zeros((1, 9, 2))
  with pytest.raises(ValueError, match="r = 5 for 9 tokens"):
    bipartite_merge(x, None, x, 5, True, False)


SPEC = dense_spec("test_small", image_size=32, patch_size=4, num_classes=10)


def test_r0_is_the_plain_model_bit_for_bit():
  assert merged_spec(SPEC, 0) == SPEC
  model = build_model(SPEC)
  x = jax.random.normal(jax.random.key(0), (2, SPEC.num_tokens, SPEC.width))
  block = model.blocks[0]
  plain = block(x)
  with_sizes, size = block.forward(x, jnp.ones((2, SPEC.num_tokens, 1)))  # log 1 = 0
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(with_sizes))
  assert size.shape == (2, SPEC.num_tokens, 1)


def test_duplicate_tokens_merge_without_changing_the_class_token():
  """Two identical patch tokens merged into one of size 2 are, to the next attention, the same
  as the pair: proportional attention makes merging them lossless for every other token."""
  spec = SPEC.replace(blocks=SPEC.blocks[:2])
  rngs = nnx.Rngs(0)
  first = Block(spec, dataclasses.replace(spec.blocks[0], merge_r=1), rngs=rngs)
  second = Block(spec, spec.blocks[1], rngs=rngs)
  plain_first = Block(spec, spec.blocks[0], rngs=nnx.Rngs(1))
  nnx.update(plain_first, nnx.state(first))
  x = jax.random.normal(jax.random.key(1), (1, 9, spec.width))
  # Make the attention output of tokens 5 and 6 (A and B) identical: identical inputs.
  x = x.at[:, 6].set(x[:, 5])
  y, size = second.forward(*first.forward(x, None))
  want = second(plain_first(x))
  assert y.shape[1] == 8 and float(size.max()) == 2.0
  np.testing.assert_allclose(np.asarray(y[:, 0]), np.asarray(want[:, 0]), rtol=1e-5, atol=1e-5)


def test_shapes_tokens_and_logits():
  spec = merged_spec(dense_spec("test_small", image_size=32, patch_size=4, num_classes=10,
                                distilled=True), 8)
  assert [s.tokens for s in spec.block_shapes()] == [66, 58, 50, 42]
  assert spec.out_shape.tokens == 34
  model = build_model(spec)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  assert model.features(images).shape == (2, 34, 64)
  logits, dist = model(images, return_dist=True)
  assert logits.shape == dist.shape == (2, 10)
  # r beyond half the tokens is clipped, as the reference does: 64 → 32 → 16 → 8 → 4 patches.
  big = merged_spec(SPEC, 100)
  assert [s.patches for s in big.block_shapes()] + [big.out_shape.patches] == [64, 32, 16, 8, 4]
  assert build_model(big)(images).shape == (2, 10)


def test_merged_model_trains_under_jit():
  spec = merged_spec(SPEC, [4, 4, 0, 2])
  graphdef, state = nnx.split(build_model(spec))
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))

  @jax.jit
  def loss(state):
    return nnx.merge(graphdef, state)(images, train=True).sum()

  grads = jax.grad(loss)(state)
  assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("r", [4, 16])
def test_merging_block_macs_agree_with_xla(r):
  """As test_accounting's blocks: the block's analytic MACs (attention at its input tokens,
  the matching scores, MLP at its output tokens) against XLA's count, within 8 %."""
  wide = dense_spec("test_small", width=256, num_heads=4, image_size=32, patch_size=4,
                    num_classes=10, depth=1)

  def flops(spec):
    graphdef, state = nnx.split(build_model(spec))
    x = jnp.ones((1, 32, 32, 3))
    return xla_flops(lambda s, x: nnx.merge(graphdef, s)(x), state, x)

  merged = merged_spec(wide, r)
  tail = count(merged).macs - count(merged).block_macs[0]  # stem + head at the merged tokens
  xla = flops(merged) / 2 - tail
  assert count(merged).block_macs[0] == pytest.approx(xla, rel=0.08)
  assert count(merged).block_macs[0] < count(wide).block_macs[0]


def test_architecture_rules():
  with pytest.raises(UserError, match=r"blocks\[0\].merge_r = 2: token merging needs attn"):
    SPEC.replace_block(0, attn="conv3", heads=0, conv_dim=8, merge_r=2)
  with pytest.raises(UserError, match=r"blocks\[1\]: attn 'conv3' .* needs the patch grid"):
    SPEC.replace_block(0, merge_r=2).replace_block(1, attn="conv3", heads=0, conv_dim=8)
  # After the last conv block, merging is fine (an SPViT-pruned model can merge).
  ok = SPEC.replace_block(0, attn="conv3", heads=0, conv_dim=8).replace_block(2, merge_r=4)
  assert ok.out_shape.tokens == SPEC.num_tokens - 4
  with pytest.raises(UserError, match="merge_r = -1"):
    SPEC.replace_block(0, merge_r=-1)
  swin = dense_spec("swin_test", image_size=32, num_classes=10)
  with pytest.raises(UserError, match=r"merge_r = 2: .*family 'swin'"):
    swin.replace_block(0, merge_r=2)


def test_spec_round_trips_and_old_files_load():
  spec = merged_spec(SPEC, [0, 3, 0, 5])
  again = ArchSpec.from_json(spec.to_json())
  assert again == spec and again.blocks[1].merge_r == 3
  old = SPEC.to_dict()
  for layer in old["layers"]:
    del layer["merge_r"]
  assert ArchSpec.from_dict(old) == SPEC
  assert BlockSpec().merge_r == 0


@pytest.mark.parametrize("r, inflection, layers", [(8, 0.0, 12), (8, -1.0, 12), (13, 0.5, 6),
                                                   (3, 1.0, 4)])
def test_schedule_as_the_reference_parses_r(r, inflection, layers):
  from jaxprune.methods.tome import schedule
  lo = int(r * (1.0 - inflection))
  step = (2 * r - lo - lo) / (layers - 1)
  assert schedule(r, layers, inflection) == [int(lo + step * i) for i in range(layers)]
  assert schedule(r, layers) == [r] * layers


def test_with_merging_starts_after_the_last_grid_block():
  from jaxprune.methods.tome import with_merging
  pruned = SPEC.replace_block(1, attn="conv3", heads=0, conv_dim=8).replace_block(
      2, attn="none", heads=0)
  got = with_merging(pruned, 4)
  assert [b.merge_r for b in got.blocks] == [0, 0, 0, 4]
  assert with_merging(SPEC, 0) is SPEC
  only_conv = SPEC.replace_block(3, attn="conv1", heads=0, conv_dim=8)
  with pytest.raises(UserError, match="no block that can merge"):
    with_merging(only_conv, 2)


def test_method_checks_before_any_work():
  from configs import tome as tome_config
  from jaxprune import methods
  from jaxprune.validate import check_fields
  config = tome_config.get_config("runlocal")
  config.tome.finetune_r = 5
  with pytest.raises(UserError, match=r"tome.finetune_r = 5: must be one of tome.r_values"):
    methods.get("tome").check(config)
  config.tome.finetune_r = 0
  config.tome.inflection = 2.0
  with pytest.raises(UserError, match="tome.inflection"):
    check_fields(config)


def test_merging_stacks_on_dcvit_and_practise_models():
  """A DC-ViT-compressed model (attention removed, MLP narrowed) and a PRACTISE-dropped one
  merge in their remaining attention blocks; the compressed block carries the merged tokens."""
  from jaxprune.methods.dcvit.structure import compress_block
  from jaxprune.methods.tome import merged_model, with_merging
  from jaxprune.surgery import drop_blocks
  dense = build_model(SPEC, seed=0)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  for pruned in (compress_block(dense, 1, 32, seed=0), drop_blocks(dense, [2])):
    spec = with_merging(pruned.spec, 6)
    assert [b.merge_r for b in spec.blocks] == [6 if b.attn == "msa" else 0
                                                for b in pruned.spec.blocks]
    merged = merged_model(pruned, spec)
    assert merged(images).shape == (2, 10)
    assert count(spec).macs < count(pruned.spec).macs
