"""The registries: a new attention kind or method is one registration, and core code asks them."""

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune import accounting, methods, registry
from jaxprune.arch import ArchSpec, BlockSpec, dense_spec
from jaxprune.errors import UserError
from jaxprune.models import build_model
from jaxprune.models.blocks import layer_norm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MeanMixer(nnx.Module):
  """A toy token mixer: every token gets the mean of all tokens (no parameters)."""

  def __call__(self, y, train=False):
    return jnp.broadcast_to(y.mean(axis=1, keepdims=True), y.shape)


@pytest.fixture
def mean_kind():
  kind = registry.AttentionKind(
      "mean", macs=lambda b, shape, hd, am, norm: norm * shape.tokens * shape.width,
      params=lambda b, shape, hd: 2 * shape.width,
      build=lambda spec, b, shape, rngs: (layer_norm(shape.width, spec.ln_eps, rngs),
                                          MeanMixer()))
  registry.register_attention(kind)
  yield kind
  del registry._ATTENTION["mean"]


def test_a_registered_attention_kind_works_everywhere_without_core_changes(mean_kind):
  dense = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=5)
  spec = dense.replace_block(1, attn="mean", heads=0)
  assert ArchSpec.from_json(spec.to_json()) == spec
  model = build_model(spec, seed=1)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  # the block computes x + mean(LN1(x)) then its MLP: written out by hand
  b = model.blocks[1]
  t = model.blocks[0](model.embed(x))
  y = b.norm1(t)
  t = t + y.mean(axis=1, keepdims=True)
  t = t + b.mlp(b.norm2(t))
  np.testing.assert_allclose(model(x), model.logits(model.norm(t)), atol=1e-5)
  # counted by the kind's formulas, and the model holds exactly the parameters counted
  c = accounting.count(spec)
  n, w = spec.num_tokens, spec.width
  assert c.block_macs[1] == n * w + 2 * n * w * spec.blocks[1].mlp + n * w
  held = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert c.params == held


def test_unknown_kinds_and_families_name_what_is_registered(mean_kind):
  dense = dense_spec("test_micro", image_size=16, patch_size=4)
  with pytest.raises(UserError, match=r"attn = 'pool': allowed are .*'?mean"):
    dense.replace_block(0, attn="pool", heads=0)
  with pytest.raises(UserError, match=r"family = 'convnext': allowed are vit, swin, resnet"):
    dense.replace(family="convnext")
  with pytest.raises(UserError, match=r"heads = 2 is only allowed with attn 'msa'"):
    dense.replace_block(0, attn="mean")


def test_a_family_owns_where_its_blocks_live_and_its_unit():
  vit = registry.family("vit")
  swin = registry.family("swin")
  spec = dense_spec("swin_mini", image_size=28, patch_size=2)
  assert (vit.collection, vit.block_unit, swin.collection, swin.block_unit) == (
      "blocks", 1, "layers", 2)
  assert swin.slots(spec) == [0, 1, 3, 4, 5, 6, 7, 8, 10, 11]


def test_every_method_is_a_package_declaring_itself():
  found = methods.all_methods()
  assert set(found) == {"pretrain", "spvit", "spvit_random", "dcvit", "practise", "tome",
                        "vitslim"}
  for name in ("spvit", "dcvit", "practise", "tome", "vitslim"):
    module = __import__(found[name].compress.__module__, fromlist=["_"])
    assert os.path.basename(module.__file__) == "__init__.py", name  # methods/<name>/
    assert re.search(r"arXiv:\d{4}\.\d{5}", module.__doc__), name  # cites its paper
    assert re.search(r"arXiv:\d{4}\.\d{5}", found[name].paper), name


def test_a_new_method_needs_no_core_edit(tmp_path, monkeypatch):
  """A method declared in one place brings its config rules, outputs and resume defaults."""
  from jaxprune import validate
  from jaxprune.train import workdir
  toy = methods.Method("toy", compress=lambda c, w, writer: methods.Outcome({"ok": 1}),
                       rules=(("toy.steps", validate.POSITIVE),), outputs=frozenset({"toyout"}),
                       neutral=frozenset({"toy.verbose"}), added_defaults={"toy.mode": "a"})
  methods.all_methods()
  monkeypatch.setitem(methods._METHODS, "toy", toy)
  assert validate.rule_for("toy.steps")(0) == "must be an integer >= 1"
  assert "toyout" in workdir.run_entries() and "toy.verbose" in workdir.neutral()
  assert workdir.added_defaults()["toy.mode"] == "a"
  assert methods.get("toy").run(None, str(tmp_path)) == {"ok": 1}
  assert (tmp_path / "summary.json").exists()


# Core modules never test a family or an attention kind by name: that knowledge lives with the
# family (models/vit.py, models/swin.py), the kind (models/blocks.py) or the method.
CORE = ["jaxprune/arch.py", "jaxprune/accounting.py", "jaxprune/models/build.py",
        "jaxprune/validate.py", "jaxprune/methods/common.py", "jaxprune/methods/phase.py",
        "jaxprune/methods/mimicking.py", "jaxprune/train/workdir.py", "jaxprune/train/optim.py",
        "jaxprune/deploy.py", "jaxprune/surgery.py"]
NAME_TEST = re.compile(r"""family\s*[!=]=|\.family\s+(not\s+)?in\b|[!=]=\s*["'](vit|swin)["']"""
                       r"""|attn\s*[!=]=\s*["']|attn\s+(not\s+)?in\s*\(""")


@pytest.mark.parametrize("path", CORE)
def test_core_modules_do_not_test_family_or_kind_names(path):
  code = [line for line in open(os.path.join(ROOT, path)).read().splitlines()
          if not line.lstrip().startswith("#")]
  hits = [line.strip() for line in code if NAME_TEST.search(line.split("#")[0])]
  assert not hits, hits
