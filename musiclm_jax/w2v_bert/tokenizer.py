"""Semantic tokens: mini-batch k-means over w2v-BERT embeddings, and the tokenizer it makes.

MusicLM's semantic tokens S are the ids of the nearest of 1024 k-means centroids to the
embeddings of the 7th layer of w2v-BERT's MLM module, 25 a second. Fitting the centroids
needs many more embeddings than fit in memory, so k-means runs on mini-batches:

  - seeding on a first sample that fits in memory: the best of a few k-means++ seedings
    (`layers.kmeans.kmeans_plusplus`), each refined by Lloyd iterations on that sample;
  - Sculley (2010) mini-batch updates: every centroid keeps the count v_k of the vectors
    ever assigned to it and moves to the running mean, c_k <- (v_k c_k + s_k) / (v_k + n_k)
    for the n_k vectors (sum s_k) of the batch assigned to it: Sculley's per-vector learning
    rate 1 / v_k, applied to the batch at once;
  - embeddings standardised per dimension first (zero mean, unit variance, statistics of
    the seeding sample), as AudioLM does before clustering w2v-BERT embeddings.

Every statistic is a global reduction (a sum over all the batch's vectors), so with the
batch sharded over the 'data' axis of a `Partitioner`'s mesh XLA inserts the all-reduces
and every device ends with the same centroids as one device over the whole batch.

The state (centroids, counts, step, mean, scale) is saved to an .npz atomically (a
temporary file renamed into place), so a fit can stop at any time and resume from its last
save; given a step-indexed batch source (`batch_fn(step)`), a resumed fit equals an
uninterrupted one. The same file is the tokenizer's centroids file.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping, Optional, Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import arrays_file
from musiclm_jax.layers import kmeans
from musiclm_jax.w2v_bert import model as model_lib

PAPER_LAYER = 7          # "embeddings of the 7th layer of the MLM module"
PAPER_NUM_CLUSTERS = 1024
_STATE_KEYS = ("centroids", "counts", "step", "mean", "scale")


@flax.struct.dataclass
class KMeansState:
  """Mini-batch k-means state.

  Attributes:
    centroids: float32 [K, D], in the standardised space.
    counts: float32 [K], vectors assigned to each centroid so far (Sculley's v).
    step: int32 [], mini-batches seen.
    mean, scale: float32 [D]: x is standardised as (x - mean) / scale.
  """
  centroids: jnp.ndarray
  counts: jnp.ndarray
  step: jnp.ndarray
  mean: jnp.ndarray
  scale: jnp.ndarray

  @property
  def num_clusters(self) -> int:
    return self.centroids.shape[0]

  @property
  def dim(self) -> int:
    return self.centroids.shape[1]


# ---------------------------------------------------------------------------------------
# Pure functions (jitted below; correct under 'data' sharding: global reductions only).


def standardize(x: jnp.ndarray, mean: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
  return (jnp.asarray(x, jnp.float32) - mean) / scale


def _initialize(rng: jax.Array, x: jnp.ndarray, num_clusters: int, standardise: bool,
                num_inits: int, lloyd_iterations: int) -> KMeansState:
  """Best of `num_inits` (k-means++ seeds + Lloyd iterations) on the seeding sample x."""
  x = jnp.asarray(x, jnp.float32)
  dim = x.shape[1]
  if standardise:
    mean = jnp.mean(x, axis=0)
    scale = jnp.sqrt(jnp.maximum(jnp.mean(jnp.square(x - mean), axis=0), 1e-10))
  else:
    mean, scale = jnp.zeros((dim,), jnp.float32), jnp.ones((dim,), jnp.float32)
  x = standardize(x, mean, scale)

  def one_init(_, r):
    centroids = kmeans.kmeans_plusplus(r, x, num_clusters)
    centroids, counts = kmeans.lloyd(x, centroids, lloyd_iterations)
    inertia = jnp.sum(jnp.maximum(jnp.min(kmeans.squared_distances(x, centroids), -1), 0.0))
    return None, (centroids, counts, inertia)

  # A scan, not a vmap: one set of [N, K] distances alive at a time.
  _, (centroids, counts, inertia) = jax.lax.scan(one_init, None,
                                                 jax.random.split(rng, num_inits))
  best = jnp.argmin(inertia)
  # The seeding sample's cluster sizes are the first counts: the running means go on from
  # the Lloyd solution instead of jumping to the first mini-batch's means.
  return KMeansState(centroids[best], counts[best], jnp.zeros((), jnp.int32), mean, scale)


def _update(state: KMeansState, x: jnp.ndarray, weights: jnp.ndarray
            ) -> Tuple[KMeansState, jnp.ndarray]:
  """One mini-batch step; x [N, D], weights [N] (0 for padding rows).

  Returns (new state, the batch's weighted sum of squared distances to the old centroids).
  """
  x = standardize(x, state.mean, state.scale)
  distances = kmeans.squared_distances(x, state.centroids)
  codes = jnp.argmin(distances, axis=-1)
  counts, sums = kmeans.cluster_sums(x, codes, state.num_clusters, weights)
  total = state.counts + counts
  centroids = jnp.where(
      counts[:, None] > 0,
      (state.counts[:, None] * state.centroids + sums) / jnp.maximum(total, 1e-9)[:, None],
      state.centroids)
  inertia = jnp.sum(jnp.maximum(jnp.min(distances, axis=-1), 0.0) * weights)
  return state.replace(centroids=centroids, counts=total, step=state.step + 1), inertia


def _inertia(state: KMeansState, x: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
  distances = kmeans.squared_distances(standardize(x, state.mean, state.scale),
                                       state.centroids)
  return jnp.sum(jnp.maximum(jnp.min(distances, axis=-1), 0.0) * weights)


def assign(state: KMeansState, x: jnp.ndarray) -> jnp.ndarray:
  """Nearest centroid ids int32 [N] of raw vectors x [N, D]."""
  return kmeans.assign(standardize(x, state.mean, state.scale), state.centroids)


# ---------------------------------------------------------------------------------------
# Saving and loading.


def save_state(path: str, state: KMeansState, **metadata: Any) -> None:
  """Writes the state (and scalar metadata, e.g. layer=7) to an .npz, atomically."""
  host = jax.device_get(state)
  arrays_file.save_arrays(path, {k: np.asarray(getattr(host, k)) for k in _STATE_KEYS},
                          **metadata)


def load_state(path: str) -> Tuple[KMeansState, dict]:
  """(state, metadata) from a file written by `save_state`; errors name the file."""
  arrays, metadata = arrays_file.load_arrays(path, "k-means state", _STATE_KEYS)
  state = KMeansState(arrays["centroids"].astype(np.float32),
                      arrays["counts"].astype(np.float32),
                      arrays["step"].astype(np.int32), arrays["mean"].astype(np.float32),
                      arrays["scale"].astype(np.float32))
  k, d = state.centroids.shape
  if state.counts.shape != (k,) or state.mean.shape != (d,) or state.scale.shape != (d,):
    raise ValueError(f"{path}: inconsistent shapes: centroids {state.centroids.shape}, counts "
                     f"{state.counts.shape}, mean {state.mean.shape}, scale {state.scale.shape}")
  if not np.all(np.isfinite(state.centroids)):
    raise ValueError(f"{path}: centroids hold NaN or infinite values")
  return state, metadata


# ---------------------------------------------------------------------------------------
# The fitter.


class MiniBatchKMeans:
  """Mini-batch k-means (module docstring), on one device or sharded over 'data'.

  Attributes:
    num_clusters: K.
    partitioner: shard each batch over its mesh's 'data' axis (None: default device).
    seed: k-means++ seeding randomness.
    standardize: standardise dimensions before clustering (statistics of the seeding
      sample); False clusters the raw vectors.
    num_inits, lloyd_iterations: seeding keeps the best (lowest inertia on the seeding
      sample) of num_inits k-means++ seedings, each refined by lloyd_iterations Lloyd
      steps on that sample (a single seeding lands in a poor local optimum now and then).
  """

  def __init__(self, num_clusters: int = PAPER_NUM_CLUSTERS, partitioner=None, seed: int = 0,
               standardize: bool = True, num_inits: int = 3, lloyd_iterations: int = 10):
    if num_clusters < 1:
      raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
    if num_inits < 1 or lloyd_iterations < 0:
      raise ValueError(f"need num_inits >= 1 and lloyd_iterations >= 0, got {num_inits}, "
                       f"{lloyd_iterations}")
    self.num_clusters = num_clusters
    self.partitioner = partitioner
    self.seed = seed
    self.standardize = standardize
    self.num_inits = num_inits
    self.lloyd_iterations = lloyd_iterations
    self._init = jax.jit(_initialize, static_argnums=(2, 3, 4, 5))
    self._update = jax.jit(_update)
    self._inertia = jax.jit(_inertia)

  # ---- moving data ----------------------------------------------------------------------

  @property
  def _shards(self) -> int:
    return 1 if self.partitioner is None else self.partitioner.data_parallel_size

  def _put(self, x: np.ndarray, pad: bool) -> Tuple[jax.Array, jax.Array]:
    """[N, D] host vectors -> (vectors, weights) on device, sharded over 'data'.

    pad: zero-weight rows fill N up to a multiple of the data-parallel size; otherwise the
    trailing N % shards rows are dropped (k-means++ seeding takes no weights).
    """
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
      raise ValueError(f"k-means needs vectors [N > 0, D], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
      raise ValueError("k-means input holds NaN or infinite values")
    shards = self._shards
    weights = np.ones((x.shape[0],), np.float32)
    extra = -x.shape[0] % shards
    if pad and extra:
      x = np.concatenate([x, np.zeros((extra, x.shape[1]), np.float32)])
      weights = np.concatenate([weights, np.zeros((extra,), np.float32)])
    elif not pad:
      keep = x.shape[0] - x.shape[0] % shards
      if keep == 0:
        raise ValueError(f"{x.shape[0]} vectors are fewer than the {shards} data shards")
      x, weights = x[:keep], weights[:keep]
    if self.partitioner is None:
      return jnp.asarray(x), jnp.asarray(weights)
    return (jax.device_put(x, self.partitioner.data_sharding(2)),
            jax.device_put(weights, self.partitioner.data_sharding(1)))

  def _replicate(self, state: KMeansState) -> KMeansState:
    if self.partitioner is None:
      return jax.tree.map(jnp.asarray, state)
    return jax.device_put(state, self.partitioner.replicated())

  # ---- the algorithm --------------------------------------------------------------------

  def initialize(self, sample: np.ndarray) -> KMeansState:
    """Seeded centroids, their counts and the standardisation statistics from sample
    [N >= K, D] (k-means++ and Lloyd, see the class docstring)."""
    if np.shape(sample)[0] < self.num_clusters:
      raise ValueError(f"seeding {self.num_clusters} clusters needs at least as many vectors, "
                       f"got {np.shape(sample)[0]}")
    x, _ = self._put(sample, pad=False)
    return self._replicate(self._init(jax.random.key(self.seed), x, self.num_clusters,
                                      self.standardize, self.num_inits,
                                      self.lloyd_iterations))

  def update(self, state: KMeansState, batch: np.ndarray) -> Tuple[KMeansState, float]:
    """One mini-batch step on batch [N, D]; returns (state, mean squared distance)."""
    if np.shape(batch)[-1] != state.dim:
      raise ValueError(f"batch vectors have {np.shape(batch)[-1]} dimensions, the centroids "
                       f"{state.dim}")
    x, weights = self._put(batch, pad=True)
    state, inertia = self._update(self._replicate(state), x, weights)
    return state, float(inertia) / np.shape(batch)[0]

  def inertia(self, state: KMeansState, x: np.ndarray) -> float:
    """Sum of squared distances of x [N, D] to their nearest centroids (standardised
    space, as scikit-learn's `inertia_`)."""
    x, weights = self._put(x, pad=True)
    return float(self._inertia(self._replicate(state), x, weights))

  def fit(self, batch_fn: Callable[[int], np.ndarray], num_steps: int,
          state_path: Optional[str] = None, save_every: int = 100,
          init_sample: Optional[np.ndarray | Callable[[], np.ndarray]] = None,
          metadata: Optional[Mapping] = None,
          log_fn: Optional[Callable[[int, float], None]] = None) -> KMeansState:
    """Runs mini-batch steps until `num_steps`, resuming from `state_path` if it exists.

    Args:
      batch_fn: step -> vectors [N, D] of that mini-batch. Make it a function of the step
        alone (e.g. a seeded sampler) and a resumed fit sees the batches an uninterrupted
        one would.
      num_steps: total mini-batches (including those of a resumed state).
      state_path: .npz to resume from and save to (every `save_every` steps and at the end).
      init_sample: seeding vectors, or a function returning them (called only when there
        is no state to resume); default: batch_fn(0).
      metadata: scalars saved with the state (e.g. {'layer': 7}).
      log_fn: called with (step, mean squared distance) after each step.
    """
    state = None
    if state_path and os.path.exists(state_path):
      state, _ = load_state(state_path)
      if state.num_clusters != self.num_clusters:
        raise ValueError(f"{state_path} holds {state.num_clusters} clusters, not "
                         f"{self.num_clusters}")
    if state is None:
      if init_sample is None:
        init_sample = batch_fn(0)
      state = self.initialize(init_sample() if callable(init_sample) else init_sample)
    save = lambda s: save_state(state_path, s, **dict(metadata or {})) if state_path else None
    step = int(state.step)
    while step < num_steps:
      state, distance = self.update(state, batch_fn(step))
      step += 1
      if log_fn is not None:
        log_fn(step, distance)
      if save_every and step % save_every == 0:
        save(state)
    save(state)
    return state


# ---------------------------------------------------------------------------------------
# The tokenizer.


# Jitted on (config, layer): tokenizers of one model share their compilations.
@functools.partial(jax.jit, static_argnums=(0, 1))
def _embed(config: model_lib.W2vBertConfig, layer: int, params, audio: jnp.ndarray
           ) -> jnp.ndarray:
  return model_lib.W2vBert(config).apply({"params": params}, audio, layer,
                                         method=model_lib.W2vBert.embed)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _tokenize(config: model_lib.W2vBertConfig, layer: int, params, state: KMeansState,
              audio: jnp.ndarray) -> jnp.ndarray:
  emb = _embed(config, layer, params, audio)
  return assign(state, emb.reshape(-1, emb.shape[-1])).reshape(emb.shape[:2])


class SemanticTokenizer:
  """Audio -> semantic tokens: k-means ids of a w2v-BERT MLM layer's embeddings.

    tokenizer = SemanticTokenizer.load('runs/w2v_bert', 'centroids.npz')
    tokens = tokenizer.tokenize(audio)   # float32 [B, T] at 16 kHz -> int32 [B, T // 640]
  """

  def __init__(self, config: model_lib.W2vBertConfig, params: Any, layer: int,
               centroids: KMeansState | np.ndarray):
    """Args:
      config: the w2v-BERT configuration.
      params: the network's parameters (W2vBertModel params, unboxed).
      layer: MLM layer (1-based; PAPER_LAYER = 7) whose embeddings are clustered.
      centroids: a `KMeansState` (standardisation included) or raw centroids [K, emb_dim].
    """
    if not 0 <= layer <= config.num_mlm_layers:
      raise ValueError(f"layer={layer}: the MLM module has layers 1..{config.num_mlm_layers}")
    if not isinstance(centroids, KMeansState):
      centroids = np.asarray(centroids, np.float32)
      dim = centroids.shape[-1]
      centroids = KMeansState(centroids, np.zeros(centroids.shape[:1], np.float32),
                              np.zeros((), np.int32), np.zeros((dim,), np.float32),
                              np.ones((dim,), np.float32))
    if centroids.dim != config.emb_dim:
      raise ValueError(f"centroids have {centroids.dim} dimensions, the model's embeddings "
                       f"{config.emb_dim}")
    self.config = config
    self.layer = layer
    self.state = jax.device_get(centroids)
    self.params = params

  @property
  def num_clusters(self) -> int:
    return self.state.num_clusters

  @property
  def token_rate(self) -> float:
    """Tokens per second (25 at the paper's settings)."""
    return self.config.frame_rate

  def embed(self, audio: np.ndarray) -> jnp.ndarray:
    """[B, T] -> the clustered embeddings [B, T // hop_length, emb_dim]."""
    return _embed(self.config, self.layer, self.params, jnp.asarray(audio, jnp.float32))

  def tokenize(self, audio: np.ndarray) -> np.ndarray:
    """float32 [B, T] (or [T]) at config.sample_rate -> int32 [B, T // hop_length] in [0, K).

    Trailing samples that make no whole frame (T % hop_length) are ignored. Jitted; one
    compilation per input shape.
    """
    audio = np.asarray(audio, np.float32)
    single = audio.ndim == 1
    audio = audio[None] if single else audio
    if audio.ndim != 2:
      raise ValueError(f"audio must be [batch, samples], got shape {audio.shape}")
    if audio.shape[1] < self.config.hop_length:
      raise ValueError(f"{audio.shape[1]} samples make no token (hop "
                       f"{self.config.hop_length})")
    if not np.all(np.isfinite(audio)):
      raise ValueError("audio holds NaN or infinite samples")
    tokens = np.asarray(_tokenize(self.config, self.layer, self.params, self.state, audio),
                        np.int32)
    return tokens[0] if single else tokens

  # ---- files ----------------------------------------------------------------------------

  def save_centroids(self, path: str) -> None:
    """The centroids file (k-means state with the layer), written atomically."""
    save_state(path, self.state, layer=self.layer)

  @classmethod
  def from_centroids_file(cls, config: model_lib.W2vBertConfig, params: Any, path: str,
                          layer: Optional[int] = None) -> "SemanticTokenizer":
    """Tokenizer for given params and a centroids file (its saved layer unless given)."""
    state, metadata = load_state(path)
    if layer is None:
      if "layer" not in metadata:
        raise ValueError(f"{path} names no layer: pass layer=")
      layer = int(metadata["layer"])
    return cls(config, params, layer, state)

  @classmethod
  def load(cls, model_dir: str, centroids_path: str, layer: Optional[int] = None,
           step: Optional[int] = None, use_ema: bool = True) -> "SemanticTokenizer":
    """From a w2v-BERT training run (its config.gin and checkpoint) and a centroids file."""
    config, params = load_w2v_bert(model_dir, step, use_ema)
    return cls.from_centroids_file(config, params, centroids_path, layer)


def load_w2v_bert(model_dir: str, step: Optional[int] = None, use_ema: bool = True
                  ) -> Tuple[model_lib.W2vBertConfig, Any]:
  """(config, params) of a training run: W2vBertConfig from its config.gin, the params
  (EMA ones when saved and `use_ema`) of its newest (or `step`) checkpoint."""
  from musiclm_jax.training import runs  # pylint: disable=g-import-not-at-top
  run = runs.load_run(model_dir, model_lib.W2vBertConfig, step, use_ema)
  return run.config, run.params
