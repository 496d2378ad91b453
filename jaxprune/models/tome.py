"""Token merging (ToMe): bipartite soft matching between a block's attention and its MLP.

Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman, "Token Merging: Your ViT But Faster", ICLR 2023
(arXiv:2210.09461); reference code facebookresearch/ToMe (`tome/merge.py`, `tome/patch/timm.py`).

In a block with `merge_r` = r > 0 (`BlockSpec.merge_r`), after the attention sub-layer:

  1. metric: the attention's keys averaged over heads, [B, N, head_dim], L2-normalised;
  2. split the tokens alternately into A (even positions) and B (odd positions);
  3. score every A token against every B token (cosine similarity); the class token (A's first)
     is never a source and the distillation token (B's first) never a destination;
  4. each A token's best B match; the r A tokens with the highest best score are merged into
     their matches, the others stay;
  5. merge by size-weighted average (`size` = how many patches a token stands for; sums of
     x·size and of size, then x / size);
  6. the output is the unmerged A tokens (in their original order), then B: prefix tokens
     first, so heads keep reading tokens 0 (and 1).

Later attention layers add log(size) of the keys to their logits (proportional attention), so a
merged token counts as many as the patches it holds. r is clipped to (N − prefix) // 2 as in the
reference (`BlockSpec.merged`). Every shape is static: r is part of the architecture, not of the
data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bipartite_merge(x: jax.Array, size: jax.Array | None, metric: jax.Array, r: int,
                    class_token: bool, dist_token: bool) -> tuple[jax.Array, jax.Array]:
  """Merges `r` tokens of x [B, N, C] by bipartite soft matching on `metric` [B, N, D] (the
  module docstring's steps 2–6); `size` [B, N, 1] (None: every token one patch). Returns the
  merged tokens [B, N − r, C] and their sizes [B, N − r, 1] (float32). r ≤ half the tokens
  that are not class or distillation tokens (`BlockSpec.merged` clips it)."""
  b, n, c = x.shape
  if not 0 <= r <= (n - int(class_token) - int(dist_token)) // 2:
    raise ValueError(f"bipartite_merge: r = {r} for {n} tokens; at most half the unprotected")
  if size is None:
    size = jnp.ones((b, n, 1), jnp.float32)
  if r == 0:
    return x, size
  m = jax.lax.stop_gradient(metric.astype(jnp.float32))
  m = m / jnp.linalg.norm(m, axis=-1, keepdims=True)
  scores = jnp.einsum("bid,bjd->bij", m[:, ::2], m[:, 1::2])
  if class_token or dist_token:  # one fused select instead of two scattered copies
    rows = jax.lax.broadcasted_iota(jnp.int32, scores.shape[1:], 0)
    cols = jax.lax.broadcasted_iota(jnp.int32, scores.shape[1:], 1)
    protected = ((rows == 0) & class_token) | ((cols == 0) & dist_token)
    scores = jnp.where(protected, -jnp.inf, scores)
  best, match = scores.max(axis=-1), scores.argmax(axis=-1)         # [B, Na]
  order = jnp.argsort(-best, axis=-1)
  src_idx, unm_idx = order[:, :r], jnp.sort(order[:, r:], axis=-1)
  dst_idx = jnp.take_along_axis(match, src_idx, axis=-1)            # [B, r]

  def merge(t: jax.Array) -> jax.Array:
    """Sums each merged A token into its B match; [B, N, K] → [B, N − r, K]."""
    a, bb = t[:, ::2], t[:, 1::2]
    unm = jnp.take_along_axis(a, unm_idx[..., None], axis=1)
    src = jnp.take_along_axis(a, src_idx[..., None], axis=1)
    # The scatter-add as a one-hot matmul: exact (one 1 per row), exportable to ONNX (its
    # converters have no scatter-add), and cheap beside the block (Nb·r·K MACs).
    into = jax.nn.one_hot(dst_idx, bb.shape[1], dtype=src.dtype)    # [B, r, Nb]
    dst = bb + jnp.einsum("brn,brk->bnk", into, src, precision=jax.lax.Precision.HIGHEST)
    if dist_token:  # class, distillation, then the rest
      return jnp.concatenate([unm[:, :1], dst[:, :1], unm[:, 1:], dst[:, 1:]], axis=1)
    return jnp.concatenate([unm, dst], axis=1)

  # x·size and size merged together: one set of gathers and one matmul
  both = merge(jnp.concatenate([x.astype(jnp.float32) * size, size], axis=-1))
  weighted, size = both[..., :c], both[..., c:]
  return (weighted / size).astype(x.dtype), size
