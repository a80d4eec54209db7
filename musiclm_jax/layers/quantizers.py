"""Vector quantizers with EMA codebooks: VQ and residual VQ (SoundStream, MuLan tokens).

The codebook is not a parameter: it lives in the 'quantizer' collection and is updated in
the forward pass of a training step (pass `mutable=['quantizer']`):
  - k-means (k-means++ seeded) initialisation on the first training batch,
  - exponential moving averages of cluster sizes and sums (van den Oord et al. 2017),
  - dead-code replacement: codes whose average usage falls below a fraction of the mean
    usage are reset to vectors of the current batch (used from the next step on).
Every statistic is a sum over the *global* batch, computed inside the jitted step, and the
state is replicated; so on a 'data'-sharded mesh XLA all-reduces the statistics and every
device holds identical codebooks -- no per-device drift, no collective that one device can
skip. Dead-code randomness comes from the quantizer's own step counter, not an rng stream.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from musiclm_jax.layers import kmeans

COLLECTION = "quantizer"


class VectorQuantizer(nn.Module):
  """One codebook of `codebook_size` vectors of size `dim`.

  Attributes:
    codebook_size, dim: codebook shape.
    decay: EMA decay of the codebook statistics.
    epsilon: Laplace smoothing of cluster sizes.
    kmeans_iterations: Lloyd iterations of the first-batch initialisation, seeded with
      k-means++ (0: the k-means++ seeds alone).
    dead_code_threshold: a code whose EMA usage falls below this fraction of the mean
      usage is replaced by a vector of the current batch (0: never). With decay 0.99 and
      0.1, a code unused for ~230 steps is revived.
    seed: base of the dead-code sampling randomness (distinct per residual level).
  """
  codebook_size: int
  dim: int
  decay: float = 0.99
  epsilon: float = 1e-5
  kmeans_iterations: int = 10
  dead_code_threshold: float = 0.1
  seed: int = 0

  def setup(self):
    k, d = self.codebook_size, self.dim
    boxed = lambda init, shape, axes: nn.with_logical_partitioning(init, axes)(None, shape)
    zeros = lambda _, shape: jnp.zeros(shape, jnp.float32)
    self.codebook = self.variable(COLLECTION, "codebook", boxed, zeros, (k, d),
                                  ("codebook", "embed"))
    self.embed_sum = self.variable(COLLECTION, "embed_sum", boxed, zeros, (k, d),
                                   ("codebook", "embed"))
    self.cluster_size = self.variable(COLLECTION, "cluster_size", boxed, zeros, (k,),
                                      ("codebook",))
    self.initialized = self.variable(COLLECTION, "initialized", lambda: jnp.zeros((), bool))
    self.steps = self.variable(COLLECTION, "steps", lambda: jnp.zeros((), jnp.int32))

  def lookup(self, codes: jnp.ndarray) -> jnp.ndarray:
    """codes int [...] -> vectors [..., dim]."""
    return jnp.take(self.codebook.value, codes, axis=0)

  def encode(self, x: jnp.ndarray) -> jnp.ndarray:
    """x [..., dim] -> nearest code ids int32 [...]."""
    flat = x.reshape(-1, self.dim)
    return kmeans.assign(flat, self.codebook.value).reshape(x.shape[:-1])

  def __call__(self, x: jnp.ndarray, train: bool = False,
               weights: Optional[jnp.ndarray] = None
               ) -> Tuple[jnp.ndarray, jnp.ndarray, Dict[str, jnp.ndarray]]:
    """Quantizes x [..., dim].

    Args:
      x: vectors to quantize.
      train: update the codebook from x (needs the 'quantizer' collection mutable).
      weights: optional [...] 0/1 weights of the vectors in the codebook statistics.
    Returns:
      quantized [..., dim] with straight-through gradients to x, codes int32 [...],
      metrics: 'commitment_loss' (mean squared distance to the chosen code, gradient to x
      only), 'perplexity' and 'usage' (fraction of codes chosen in this batch).
    """
    x = jnp.asarray(x)
    flat = x.reshape(-1, self.dim).astype(jnp.float32)
    w = None if weights is None else weights.reshape(-1).astype(jnp.float32)
    training = train and not self.is_initializing()
    if training:
      self._initialise_once(jax.lax.stop_gradient(flat))
    # This step's output uses the codebook as it stands; the updates below only serve the
    # next step (so a code revived from this batch never quantizes its own vector exactly).
    codes = kmeans.assign(flat, self.codebook.value)
    quantized = jnp.take(self.codebook.value, codes, axis=0)
    if training:
      self._update(jax.lax.stop_gradient(flat), codes, w)
    counts = jnp.sum(jax.nn.one_hot(codes, self.codebook_size, dtype=jnp.float32)
                     * (1.0 if w is None else w[:, None]), axis=0)
    probs = counts / jnp.maximum(jnp.sum(counts), 1.0)
    err = jnp.sum(jnp.square(flat - jax.lax.stop_gradient(quantized)), axis=-1)
    commitment = (jnp.mean(err) if w is None else
                  jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)) / self.dim
    metrics = {"commitment_loss": commitment,
               "perplexity": jnp.exp(-jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-10)))),
               "usage": jnp.mean((counts > 0).astype(jnp.float32))}
    straight_through = flat + jax.lax.stop_gradient(quantized - flat)
    return (straight_through.reshape(x.shape).astype(x.dtype), codes.reshape(x.shape[:-1]),
            metrics)

  def _rng(self, purpose: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), self.steps.value),
                              purpose)

  def _initialise_once(self, flat: jnp.ndarray) -> None:
    """k-means (k-means++ seeded) on the first training batch; a no-op afterwards."""
    k = self.codebook_size

    def initialise(_):
      start = kmeans.kmeans_plusplus(self._rng(0), flat, k)
      centroids, _ = kmeans.lloyd(flat, start, self.kmeans_iterations)
      # Start every code at the mean usage, so none counts as dead on step one.
      size = jnp.full((k,), flat.shape[0] / k, jnp.float32)
      return centroids, centroids * size[:, None], size
    codebook, embed_sum, cluster_size = jax.lax.cond(
        self.initialized.value,
        lambda _: (self.codebook.value, self.embed_sum.value, self.cluster_size.value),
        initialise, None)
    self.codebook.value = codebook
    self.embed_sum.value = embed_sum
    self.cluster_size.value = cluster_size
    self.initialized.value = jnp.ones((), bool)

  def _update(self, flat: jnp.ndarray, codes: jnp.ndarray,
              weights: Optional[jnp.ndarray]) -> None:
    """EMA update from this step's assignment, then dead-code replacement."""
    k = self.codebook_size
    counts, sums = kmeans.cluster_sums(flat, codes, k, weights)
    cluster_size = self.decay * self.cluster_size.value + (1 - self.decay) * counts
    embed_sum = self.decay * self.embed_sum.value + (1 - self.decay) * sums
    total = jnp.sum(cluster_size)
    smoothed = (cluster_size + self.epsilon) / (total + k * self.epsilon) * total
    codebook = embed_sum / smoothed[:, None]

    if self.dead_code_threshold > 0:
      # Relative to the mean usage, so the rule means the same whatever the ratio of
      # vectors per batch to codes (an absolute count would call every code dead when a
      # batch has fewer vectors than the codebook has codes).
      mean_usage = total / k
      dead = cluster_size < self.dead_code_threshold * mean_usage
      replacement = kmeans.sample_vectors(self._rng(1), flat, k)
      codebook = jnp.where(dead[:, None], replacement, codebook)
      embed_sum = jnp.where(dead[:, None], replacement * mean_usage, embed_sum)
      cluster_size = jnp.where(dead, mean_usage, cluster_size)

    self.codebook.value = codebook
    self.embed_sum.value = embed_sum
    self.cluster_size.value = cluster_size
    self.steps.value = self.steps.value + 1


class ResidualVectorQuantizer(nn.Module):
  """`num_quantizers` VQ levels, each quantizing the residual the previous ones left.

  Quantizer dropout (SoundStream): in training, each example uses only its first n levels,
  n ~ Uniform{1..num_quantizers}, so one model decodes at every bitrate. It follows
  `dropout_rng`, not `train`: a GAN's discriminator step must judge the fakes the
  generator step makes (quantizer dropout on) without updating the codebooks.
  """
  num_quantizers: int
  codebook_size: int
  dim: int
  decay: float = 0.99
  kmeans_iterations: int = 10
  dead_code_threshold: float = 0.1
  quantizer_dropout: bool = True
  seed: int = 0

  def setup(self):
    self.levels = [VectorQuantizer(self.codebook_size, self.dim, decay=self.decay,
                                   kmeans_iterations=self.kmeans_iterations,
                                   dead_code_threshold=self.dead_code_threshold,
                                   seed=self.seed * 1000 + i, name=f"level_{i}")
                   for i in range(self.num_quantizers)]

  def __call__(self, x: jnp.ndarray, train: bool = False, dropout_rng: Optional[jax.Array] = None,
               num_levels: Optional[int] = None
               ) -> Tuple[jnp.ndarray, jnp.ndarray, Dict[str, jnp.ndarray]]:
    """Quantizes x [batch, frames, dim].

    Args:
      train: update codebooks (mutable 'quantizer').
      dropout_rng: with quantizer_dropout, draws each example's level count; None = every
        example uses all levels.
      num_levels: use only the first levels (lower bitrate); None = all.
    Returns:
      quantized [batch, frames, dim], codes int32 [batch, frames, levels], metrics (summed
      commitment loss over levels; mean perplexity and usage; per-level values).
    """
    levels = self.num_quantizers if num_levels is None else num_levels
    batch = x.shape[0]
    active = jnp.ones((batch, levels), jnp.float32)
    if self.quantizer_dropout and dropout_rng is not None:
      n = jax.random.randint(dropout_rng, (batch,), 1, levels + 1)
      active = (jnp.arange(levels)[None, :] < n[:, None]).astype(jnp.float32)
    residual = x
    quantized = jnp.zeros_like(x)
    all_codes, metrics = [], {}
    commitment = 0.0
    for i in range(levels):
      weight = jnp.broadcast_to(active[:, i:i + 1], x.shape[:2])
      q, codes, m = self.levels[i](residual, train=train, weights=weight)
      quantized = quantized + q * active[:, i, None, None].astype(x.dtype)
      residual = residual - jax.lax.stop_gradient(q)
      all_codes.append(codes)
      commitment = commitment + m["commitment_loss"]
      for name in ("perplexity", "usage"):
        metrics[f"{name}_level_{i}"] = m[name]
    metrics["commitment_loss"] = commitment
    metrics["perplexity"] = jnp.mean(jnp.stack(
        [metrics[f"perplexity_level_{i}"] for i in range(levels)]))
    metrics["usage"] = jnp.mean(jnp.stack([metrics[f"usage_level_{i}"] for i in range(levels)]))
    return quantized, jnp.stack(all_codes, axis=-1), metrics

  def encode(self, x: jnp.ndarray, num_levels: Optional[int] = None) -> jnp.ndarray:
    """x [batch, frames, dim] -> codes int32 [batch, frames, levels] (no state change)."""
    return self(x, train=False, num_levels=num_levels)[1]

  def decode(self, codes: jnp.ndarray) -> jnp.ndarray:
    """codes [batch, frames, q] (q <= num_quantizers: any bitrate) -> [batch, frames, dim]."""
    if codes.shape[-1] > self.num_quantizers:
      raise ValueError(f"codes have {codes.shape[-1]} levels; this quantizer has "
                       f"{self.num_quantizers}")
    return sum(self.levels[i].lookup(codes[..., i]) for i in range(codes.shape[-1]))
