"""k-means in JAX: Lloyd iterations over arrays that may be sharded over 'data'.

Written with global reductions only (sums over all vectors), so under `jax.jit` with the
vectors sharded across devices XLA inserts the all-reduces, and every device ends with the
same centroids as one device computing over the whole set.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp


def squared_distances(x: jnp.ndarray, centroids: jnp.ndarray) -> jnp.ndarray:
  """||x_n - c_k||^2 for x [N, D], centroids [K, D] -> [N, K] (float32)."""
  x = x.astype(jnp.float32)
  centroids = centroids.astype(jnp.float32)
  return (jnp.sum(x * x, axis=-1, keepdims=True) - 2.0 * x @ centroids.T
          + jnp.sum(centroids * centroids, axis=-1)[None, :])


def assign(x: jnp.ndarray, centroids: jnp.ndarray) -> jnp.ndarray:
  """Nearest centroid id per vector: [N, D], [K, D] -> int32 [N]."""
  return jnp.argmin(squared_distances(x, centroids), axis=-1).astype(jnp.int32)


def cluster_sums(x: jnp.ndarray, codes: jnp.ndarray, k: int,
                 weights: jnp.ndarray | None = None) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """(counts [K], sums [K, D]) of the vectors assigned to each cluster (optionally weighted)."""
  one_hot = jax.nn.one_hot(codes, k, dtype=jnp.float32)
  if weights is not None:
    one_hot = one_hot * weights[:, None]
  return jnp.sum(one_hot, axis=0), one_hot.T @ x.astype(jnp.float32)


def sample_vectors(rng: jax.Array, x: jnp.ndarray, k: int) -> jnp.ndarray:
  """k rows of x [N, D] drawn uniformly (with replacement when N < k)."""
  index = jax.random.randint(rng, (k,), 0, x.shape[0])
  return jnp.take(jnp.asarray(x, jnp.float32), index, axis=0)


def lloyd(x: jnp.ndarray, centroids: jnp.ndarray, iterations: int
          ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """`iterations` Lloyd steps from `centroids`; empty clusters keep their centroid.

  Returns (centroids [K, D], counts [K] of the vectors nearest to each final centroid).
  """
  k = centroids.shape[0]

  def step(c, _):
    counts, sums = cluster_sums(x, assign(x, c), k)
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], c), None

  centroids, _ = jax.lax.scan(step, centroids.astype(jnp.float32), None, length=iterations)
  counts, _ = cluster_sums(x, assign(x, centroids), k)
  return centroids, counts


def kmeans_plusplus(rng: jax.Array, x: jnp.ndarray, k: int) -> jnp.ndarray:
  """k-means++ seeding (Arthur & Vassilvitskii 2007): [N, D] -> centroids [k, D].

  Each new centroid is drawn with probability proportional to the squared distance to the
  nearest one chosen so far; with fewer distinct vectors than k, the rest are drawn
  uniformly (the distances are all zero).
  """
  x = jnp.asarray(x, jnp.float32)
  rng, first_rng = jax.random.split(rng)
  first = x[jax.random.randint(first_rng, (), 0, x.shape[0])]
  centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(first)
  nearest = jnp.sum(jnp.square(x - first), axis=-1)

  def add_one(i, carry):
    centroids, nearest = carry
    pick = jax.random.categorical(jax.random.fold_in(rng, i), jnp.log(nearest + 1e-12))
    chosen = x[pick]
    nearest = jnp.minimum(nearest, jnp.sum(jnp.square(x - chosen), axis=-1))
    return centroids.at[i].set(chosen), nearest

  centroids, _ = jax.lax.fori_loop(1, k, add_one, (centroids, nearest))
  return centroids
