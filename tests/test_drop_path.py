"""Stochastic depth (drop-path): per-sample branch dropping, the linear rate rule, training only."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxprune import build_model, dense_spec
from jaxprune.arch import swin_spec
from jaxprune.models.blocks import apply_layers, drop_path


def test_drop_path_keeps_samples_with_probability_and_rescales():
  x = jnp.ones((4000, 3, 2))
  y = np.asarray(drop_path(x, (0.25, jax.random.key(0))))
  per_sample = y.reshape(4000, -1)
  np.testing.assert_allclose(np.unique(per_sample), [0.0, 1 / 0.75], rtol=1e-6)  # rescaled
  assert (per_sample == per_sample[:, :1]).all()
  assert abs((per_sample[:, 0] > 0).mean() - 0.75) < 0.03
  np.testing.assert_array_equal(drop_path(x, None), x)


class _Probe:
  def __init__(self, log):
    self.log = log

  def __call__(self, x, train=False, drop=None):
    self.log.append(None if drop is None else drop[0])
    return x


def test_rates_grow_linearly_over_blocks_and_only_in_training():
  log = []
  apply_layers([_Probe(log) for _ in range(5)], jnp.ones((2, 3)), True, drop_rate=0.2,
               drop_key=jax.random.key(0))
  assert log[0] is None and np.allclose(log[1:], [0.05, 0.1, 0.15, 0.2])
  log.clear()
  apply_layers([_Probe(log) for _ in range(3)], jnp.ones((2, 3)), False, drop_rate=0.2,
               drop_key=jax.random.key(0))
  assert log == [None, None, None]


def test_models_train_with_drop_path_and_evaluate_without_it():
  from jaxprune.methods.common import supervised_loss
  for spec in (dense_spec("test_micro", image_size=16, patch_size=4, num_classes=4),
               swin_spec("swin_test", image_size=16, patch_size=2, num_classes=4, window=4)):
    model = build_model(spec, seed=0)
    x = jax.random.normal(jax.random.key(1), (8, 16, 16, 3))
    kw = {"drop_rate": 0.5, "drop_key": jax.random.key(2)}
    np.testing.assert_array_equal(model(x, **kw), model(x))  # eval: no dropping
    assert not np.allclose(model(x, train=True, **kw), model(x, train=True))
    config = ml_collections.ConfigDict({
        "data": {"mean": (0.5,) * 3, "std": (0.25,) * 3,
                 "augment": {"crop_scale_min": 1.0, "shift": 0, "flip": False, "mixup": 0.0}},
        "train": {"label_smoothing": 0.0, "drop_path": 0.0}})
    batch = {"image": jnp.zeros((8, 16, 16, 3), jnp.uint8), "label": jnp.arange(8) % 4}
    base, _ = supervised_loss(config, 4)(model, batch, jax.random.key(3))
    config.train.drop_path = 0.5
    dropped, _ = supervised_loss(config, 4)(model, batch, jax.random.key(3))
    assert np.isfinite(dropped) and dropped != base
