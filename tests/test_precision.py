"""bfloat16 compute over float32 parameters (models/precision.py, train.compute_dtype)."""

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from jaxprune.arch import dense_spec
from jaxprune.errors import UserError
from jaxprune.models import build_model
from jaxprune.models.precision import compute_dtype, set_compute_dtype
from jaxprune.train.mesh import make_mesh
from jaxprune.train.step import init_state, make_train_step, place, soft_cross_entropy

# bfloat16 keeps 8 mantissa bits (relative step 2^-8 ≈ 0.4 %); through a few blocks the logits
# of these small random models move by well under 5 % of their largest magnitude.
LOGIT_TOLERANCE = 0.05


@pytest.mark.parametrize("variant", ["deit_tiny", "swin_test"])
def test_bfloat16_logits_are_close_to_float32(variant):
  spec = dense_spec(variant, image_size=32, patch_size=4, num_classes=10,
                    **({"depth": 4} if variant == "deit_tiny" else {}))
  graphdef, state = nnx.split(build_model(spec, seed=0))
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))

  def forward(dtype):
    fn = lambda st, x: set_compute_dtype(nnx.merge(graphdef, st), dtype)(x, train=False)  # noqa: E731
    return jax.jit(fn)(state, x), jax.jit(fn).lower(state, x).as_text()

  f32, text32 = forward(None)
  bf16, text16 = forward(jnp.bfloat16)
  assert "bf16" not in text32 and text16.count("bf16") > 50  # the matmuls really run in bf16
  assert bf16.dtype == jnp.float32  # heads stay float32
  scale = float(jnp.abs(f32).max())
  assert 0 < float(jnp.abs(f32 - bf16).max()) < LOGIT_TOLERANCE * scale


def test_bfloat16_train_step_keeps_float32_parameters_and_optimizer_state():
  spec = dense_spec("deit_tiny", image_size=16, patch_size=4, num_classes=4, depth=2)
  mesh = make_mesh()
  batch = {"image": jax.random.normal(jax.random.key(2), (8, 16, 16, 3)),
           "label": jnp.arange(8) % 4}

  def loss_fn(model, batch, key):
    logits = model(batch["image"], train=True)
    return soft_cross_entropy(logits, jax.nn.one_hot(batch["label"], 4)), {}

  losses = {}
  for name in ("float32", "bfloat16", "bfloat16_matmul"):
    graphdef, state, tx = init_state(build_model(spec, seed=0), lambda p: optax.adam(1e-3))
    step = make_train_step(graphdef, tx, loss_fn, mesh, seed=0, compute_dtype=compute_dtype(name))
    state, metrics = step(place(state, mesh), batch)
    dtypes = {x.dtype for x in jax.tree.leaves((state["params"], state["opt"]))
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    losses[name] = float(metrics["loss"])
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
  assert losses["bfloat16_matmul"] == pytest.approx(losses["float32"], rel=0.02)
  with pytest.raises(UserError, match="train.compute_dtype = 'float16': allowed are float32"):
    compute_dtype("float16")


@pytest.mark.parametrize("variant", ["test_micro", "swin_test", "resnet_test"])
def test_bfloat16_search_and_cnn_forwards_run(variant):
  """The SPViT search model (its conv candidates' kernels are collapsed in float32) and a ResNet
  (its convs written with lax) compute in bfloat16: this crashed the SPViT search under
  `train.compute_dtype = "bfloat16"` until the collapsed kernels were cast."""
  from configs import spvit as spvit_config
  from jaxprune.methods.spvit import search_options
  from jaxprune.models.spvit import build_search_model
  spec = dense_spec(variant, image_size=16, patch_size=1 if variant == "resnet_test" else 4,
                    num_classes=5, **({"window": 4} if variant == "swin_test" else {}))
  model = build_model(spec, seed=0)
  if variant != "resnet_test":
    model = build_search_model(model, search_options(spvit_config.get_config()))
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  graphdef, state = nnx.split(set_compute_dtype(model, jnp.bfloat16))
  for train in (False, True):
    fn = jax.jit(lambda st, x: nnx.merge(graphdef, st)(x, train=train))  # noqa: B023
    assert bool(jnp.all(jnp.isfinite(fn(state, x))))
    assert "bf16" in fn.lower(state, x).as_text()  # the layers do compute in bfloat16


def test_bfloat16_mlp_activations_stay_bfloat16():
  """Nothing of MLP-hidden width is kept in float32 for the backward pass under bfloat16
  compute (a float32 constant in the GELU once promoted the whole activation)."""
  spec = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=3, mlp_ratio=5)
  hidden = spec.blocks[0].mlp
  graphdef, state = nnx.split(build_model(spec))
  x = jnp.zeros((2, 16, 16, 3))

  def loss(s):
    return jnp.mean(set_compute_dtype(nnx.merge(graphdef, s), jnp.bfloat16)(x, train=True)**2)

  kept = jax.eval_shape(lambda s: jax.tree.leaves(jax.vjp(loss, s)[1]), state)
  wide = [r for r in kept if r.ndim == 3 and r.shape[-1] == hidden]
  assert wide and all(r.dtype == jnp.bfloat16 for r in wide), [(r.shape, r.dtype) for r in wide]


def test_bfloat16_matmul_linear_and_its_backward_products():
  """The "bfloat16_matmul" product: y = bf(x)·bf(w), dx = bf(ct)·bf(w)ᵀ, dw = bf(x)ᵀ·bf(ct)
  (bf: rounded to bfloat16), each accumulated and returned in float32."""
  import numpy as np
  from jaxprune.models.precision import bf16_dot_general
  x, w, ct = (jax.random.normal(jax.random.key(i), s) for i, s in
              enumerate([(3, 5, 24), (24, 40), (3, 5, 40)]))
  dims = (((2,), (0,)), ((), ()))
  y, vjp = jax.vjp(lambda x, w: bf16_dot_general(x, w, dims), x, w)
  dx, dw = vjp(ct)
  bf = lambda a: np.asarray(a.astype(jnp.bfloat16).astype(jnp.float32), np.float64)  # noqa: E731
  want = (bf(x) @ bf(w), bf(ct) @ bf(w).T, np.einsum("rsi,rso->io", bf(x), bf(ct)))
  for got, ref in zip((y, dx, dw), want):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(y - x @ w).max()) > 1e-4  # the operands really were rounded
  with pytest.raises(ValueError, match="only nnx.Linear's product"):
    bf16_dot_general(x, w, (((2,), (1,)), ((), ())))


def test_bfloat16_matmul_model_gradients():
  """Every dense layer but the head multiplies bfloat16 operands into float32 (8 layers: 8
  forward and 16 backward products), nothing else is bfloat16, and the gradients stay near
  float32's."""
  from jaxprune.models.precision import BF16_MATMUL
  spec = dense_spec("deit_tiny", image_size=16, patch_size=4, num_classes=4, depth=2)
  graphdef, state = nnx.split(build_model(spec, seed=0))
  x = jax.random.normal(jax.random.key(3), (4, 16, 16, 3))

  def loss(st, dtype):
    return jnp.mean(set_compute_dtype(nnx.merge(graphdef, st), dtype)(x, train=True)**2)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  hlo = grad.lower(state, BF16_MATMUL).as_text()
  mixed = [line for line in hlo.splitlines() if "dot_general" in line and "bf16" in line]
  assert len(mixed) == 24 and all(m.split("->")[-1].strip().endswith("xf32>") for m in mixed)
  ours, f32 = grad(state, BF16_MATMUL), grad(state, None)
  for a, c in zip(jax.tree.leaves(ours), jax.tree.leaves(f32)):
    assert a.dtype == jnp.float32
    assert float(jnp.abs(a - c).max()) <= LOGIT_TOLERANCE * (float(jnp.abs(c).max()) + 1e-9)
  with pytest.raises(UserError, match="allowed are float32, bfloat16, bfloat16_matmul"):
    compute_dtype("bf16")
