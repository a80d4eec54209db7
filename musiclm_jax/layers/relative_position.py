"""T5 relative position biases: one learned scalar per (head, log-spaced distance bucket).

Computed once per forward pass and shared by every layer (as in T5), so the cost is one
[heads, q_len, k_len] tensor, not one per layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def relative_position_bucket(relative_position: jnp.ndarray, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jnp.ndarray:
  """Bucket ids of `key_position - query_position` (int array of any shape).

  Half the buckets hold exact small distances, the other half log-spaced distances up to
  `max_distance`; farther keys share the last bucket. Causal models (bidirectional=False)
  only ever see keys at or before the query, so all buckets go to the past.
  """
  n = -relative_position
  bucket = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    bucket += (n < 0).astype(n.dtype) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Guard log(0): small distances take the exact branch anyway.
  scaled = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
            / np.log(max_distance / max_exact) * (num_buckets - max_exact))
  large = jnp.minimum(max_exact + scaled.astype(n.dtype), num_buckets - 1)
  return bucket + jnp.where(is_small, n, large)


class RelativePositionBiases(nn.Module):
  """Attention logit biases [1, heads, q_len, k_len] from query and key positions."""
  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query_positions: jnp.ndarray, key_positions: jnp.ndarray) -> jnp.ndarray:
    """query_positions [q_len], key_positions [k_len] (int) -> bias [1, heads, q_len, k_len]
    in `dtype`."""
    table = self.param("rel_embedding",
                       nn.with_logical_partitioning(nn.initializers.normal(0.1),
                                                    ("heads", "relpos_buckets")),
                       (self.num_heads, self.num_buckets), jnp.float32)
    # Every distance from max_distance on falls in the last bucket (of its side), so the
    # bias is a function of the distance clipped to +-max_distance: bucket and look up those
    # 2 * max_distance + 1 distances (one-hot matmul: shards over 'heads', MXU-friendly),
    # then index them by each (query, key) pair. No [q_len, k_len, buckets] one-hot, and
    # nothing float of [q_len, k_len] but the bias itself.
    distances = jnp.arange(-self.max_distance, self.max_distance + 1)
    buckets = relative_position_bucket(distances, self.bidirectional, self.num_buckets,
                                       self.max_distance)
    one_hot = jnp.asarray(buckets[:, None] == jnp.arange(self.num_buckets), jnp.float32)
    by_distance = jnp.einsum("hn,dn->hd", table, one_hot).astype(self.dtype)
    relative = key_positions[None, :] - query_positions[:, None]
    index = jnp.clip(relative, -self.max_distance, self.max_distance) + self.max_distance
    return jnp.take(by_distance, index, axis=1)[None]
