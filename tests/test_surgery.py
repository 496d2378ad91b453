"""`surgery.transplant`, the one way weights move between models of different structure."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxprune import build_model, dense_spec
from jaxprune.surgery import block_states, drop_blocks, transplant

SPEC = dense_spec("test_micro", image_size=16, patch_size=4, num_classes=3, depth=3)


def test_transplant_copies_everything_outside_the_blocks_and_the_given_block_states():
  a, b = build_model(SPEC, seed=1), build_model(SPEC, seed=2)
  states = block_states(a)
  want_b = nnx.to_pure_dict(nnx.state(b))  # before: b's arrays are reused by the result
  out = transplant(a, b, [states[0], {}, states[2]])  # block 1 keeps b's own weights
  got = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(out)))
  for (path, x), ya, yb in zip(got, jax.tree.leaves(nnx.to_pure_dict(nnx.state(a))),
                               jax.tree.leaves(want_b)):
    from_b = jax.tree_util.keystr(path).startswith("['blocks'][1]")
    np.testing.assert_array_equal(x, yb if from_b else ya, err_msg=jax.tree_util.keystr(path))
  assert not np.array_equal(out.blocks[0].attn.qkv.kernel[...], b.blocks[0].attn.qkv.kernel[...])


def test_transplant_errors_name_the_entry():
  a = build_model(SPEC, seed=1)
  abstract = nnx.eval_shape(lambda: build_model(SPEC))
  with pytest.raises(ValueError, match=r"no weights given for \[\"\['blocks'\]\[1\]"):
    transplant(a, abstract, [block_states(a)[0], {}, block_states(a)[2]])
  narrow = nnx.eval_shape(lambda: build_model(SPEC.replace_block(0, mlp=8)))
  with pytest.raises(ValueError, match="transplant: blocks/0/mlp/fc1/(bias|kernel) has shape"):
    transplant(a, narrow)
  with pytest.raises(ValueError, match="2 block states for 3 target blocks"):
    transplant(a, build_model(SPEC), block_states(drop_blocks(a, [0])))
