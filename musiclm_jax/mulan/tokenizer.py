"""The MuLan tokenizer: embeddings of audio and text, and their residual-VQ tokens.

MusicLM conditions its stages on 12 MuLan tokens: the 128-d MuLan embedding quantized by a
residual VQ of 12 levels x 1024 codes, fitted on *audio* embeddings (training uses audio
tokens; generation text tokens, which live in the same space).

  tok = MuLanTokenizer.load(model_dir, rvq_path)
  tok.embed_audio(wave [B, samples])  -> [B, 128]   windows of clip_seconds every
                                                    window_stride_seconds, averaged
  tok.embed_text(["calm piano"])      -> [B, 128]
  tok.audio_tokens(wave) / tok.text_tokens(texts) -> int32 [B, levels]

The RVQ is `layers.quantizers.ResidualVectorQuantizer` (k-means initialisation, EMA
updates, dead-code revival) trained on the embeddings by `fit_rvq`.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import arrays_file
from musiclm_jax.layers import quantizers
from musiclm_jax.mulan import model as model_lib

PAPER_LEVELS = 12
PAPER_CODEBOOK_SIZE = 1024


# ---------------------------------------------------------------------------------------
# Audio windows.


def window_offsets(num_samples: int, window: int, stride: int) -> np.ndarray:
  """Start offsets of the windows covering a clip: every `stride` samples, plus a last one
  ending at the clip's end. A clip no longer than one window is one window at 0."""
  if num_samples <= window:
    return np.zeros(1, np.int64)
  offsets = np.arange(0, num_samples - window + 1, stride)
  if offsets[-1] != num_samples - window:
    offsets = np.append(offsets, num_samples - window)
  return offsets


# ---------------------------------------------------------------------------------------
# Fitting the residual VQ.


def fit_rvq(embeddings: np.ndarray, num_levels: int = PAPER_LEVELS,
            codebook_size: int = PAPER_CODEBOOK_SIZE, num_steps: int = 200,
            batch_size: int = 4096, seed: int = 0, decay: float = 0.95
            ) -> Tuple[np.ndarray, Dict[str, float]]:
  """Trains a residual VQ on embeddings [N, dim].

  The first batch initialises every level by k-means (so it needs at least codebook_size
  embeddings); each step then updates the EMA codebooks on a random batch.
  Returns (codebooks float32 [levels, codebook_size, dim], report) where the report has the
  relative squared quantization error of all N embeddings and the mean code usage.
  """
  x = np.asarray(embeddings, np.float32)
  if x.ndim != 2:
    raise ValueError(f"embeddings must be [N, dim], got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("embeddings hold NaN or infinite values")
  if x.shape[0] < codebook_size:
    raise ValueError(f"{x.shape[0]} embeddings cannot initialise {codebook_size} codes: "
                     "embed more audio or use a smaller codebook")
  rvq = quantizers.ResidualVectorQuantizer(num_levels, codebook_size, x.shape[1],
                                           decay=decay, quantizer_dropout=False, seed=seed)
  batch_size = min(batch_size, x.shape[0])
  rng = np.random.default_rng(seed)
  first = jnp.asarray(x[rng.choice(x.shape[0], batch_size, replace=False)])[:, None, :]
  variables = nn.meta.unbox(rvq.init(jax.random.key(seed), first))

  @jax.jit
  def step(state, batch):
    _, updated = rvq.apply({quantizers.COLLECTION: state}, batch, train=True,
                           mutable=[quantizers.COLLECTION])
    return updated[quantizers.COLLECTION]

  state = variables[quantizers.COLLECTION]
  for i in range(max(num_steps, 1)):
    batch = first if i == 0 else jnp.asarray(
        x[rng.choice(x.shape[0], batch_size, replace=False)])[:, None, :]
    state = step(state, batch)
  state = jax.device_get(state)
  codebooks = np.stack([np.asarray(state[f"level_{i}"]["codebook"])
                        for i in range(num_levels)])
  codes = encode_rvq(codebooks, x)
  error = np.sum((x - decode_rvq(codebooks, codes)) ** 2) / np.sum(x ** 2)
  usage = np.mean([len(np.unique(codes[:, i])) / codebook_size for i in range(num_levels)])
  return codebooks, {"relative_squared_error": float(error), "code_usage": float(usage),
                     "num_embeddings": int(x.shape[0])}


def encode_rvq(codebooks: np.ndarray, x: np.ndarray) -> np.ndarray:
  """Embeddings [B, dim] -> int32 codes [B, levels] (greedy residual nearest codes)."""
  return np.asarray(_encode_rvq(jnp.asarray(codebooks), jnp.asarray(x, jnp.float32)))


def decode_rvq(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
  """codes [B, q <= levels] -> [B, dim]: the sum of the first q levels' code vectors."""
  codes = np.asarray(codes)
  return sum(codebooks[i][codes[:, i]] for i in range(codes.shape[1]))


@jax.jit
def _encode_rvq(codebooks: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  def level(residual, codebook):
    distances = (jnp.sum(residual ** 2, -1, keepdims=True) - 2 * residual @ codebook.T
                 + jnp.sum(codebook ** 2, -1)[None, :])
    codes = jnp.argmin(distances, axis=-1).astype(jnp.int32)
    return residual - codebook[codes], codes
  _, codes = jax.lax.scan(level, x, codebooks)
  return codes.T


def save_rvq(path: str, codebooks: np.ndarray, **metadata: Any) -> None:
  """Codebooks [levels, codes, dim] (+ scalar metadata) to an .npz, atomically."""
  arrays_file.save_arrays(path, {"codebooks": np.asarray(codebooks, np.float32)}, **metadata)


def load_rvq(path: str) -> np.ndarray:
  """Codebooks [levels, codes, dim] from `save_rvq`'s file; errors name the file."""
  arrays, _ = arrays_file.load_arrays(path, "MuLan RVQ file", ["codebooks"])
  codebooks = arrays["codebooks"].astype(np.float32)
  if codebooks.ndim != 3 or not np.all(np.isfinite(codebooks)):
    raise ValueError(f"{path}: codebooks must be finite [levels, codes, dim], got "
                     f"shape {codebooks.shape}")
  return codebooks


# ---------------------------------------------------------------------------------------
# The tokenizer.


@functools.partial(jax.jit, static_argnums=0)
def _embed_windows(config: model_lib.MuLanConfig, params, windows: jnp.ndarray):
  return model_lib.MuLan(config).apply({"params": params}, windows,
                                       method=model_lib.MuLan.embed_audio)


@functools.partial(jax.jit, static_argnums=0)
def _embed_tokens(config: model_lib.MuLanConfig, params, token_ids: jnp.ndarray):
  return model_lib.MuLan(config).apply({"params": params}, token_ids,
                                       method=model_lib.MuLan.embed_text)


class MuLanTokenizer:
  """Frozen MuLan towers (+ optional RVQ codebooks [levels, codes, dim])."""

  def __init__(self, config: model_lib.MuLanConfig, params: Any,
               codebooks: Optional[np.ndarray] = None, max_windows_per_call: int = 64):
    self.config = config
    self.params = jax.device_put(params)
    self.text_tokenizer = config.text_tokenizer()
    self.max_windows_per_call = max_windows_per_call
    self.codebooks = None
    if codebooks is not None:
      self.set_codebooks(codebooks)

  def set_codebooks(self, codebooks: np.ndarray) -> None:
    codebooks = np.asarray(codebooks, np.float32)
    if codebooks.ndim != 3 or codebooks.shape[-1] != self.config.embed_dim:
      raise ValueError(f"RVQ codebooks {codebooks.shape} do not fit MuLan's "
                       f"{self.config.embed_dim}-d embeddings")
    self.codebooks = codebooks

  @property
  def num_levels(self) -> int:
    self._require_codebooks()
    return self.codebooks.shape[0]

  def window_embeddings(self, audio: np.ndarray) -> np.ndarray:
    """Audio [B, samples] (or [samples]) at config.sample_rate -> unit [B, windows,
    embed_dim]: windows of clip_seconds, window_stride_seconds apart (`window_offsets`; a
    clip no longer than one window is one window)."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 1:
      audio = audio[None]
    if audio.ndim != 2 or audio.shape[1] < self.config.mel_frame_length:
      raise ValueError(f"audio must be [batch, samples >= {self.config.mel_frame_length}], "
                       f"got shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
      raise ValueError("audio holds NaN or infinite samples")
    window = min(self.config.window_samples, audio.shape[1])
    offsets = window_offsets(audio.shape[1], window, self.config.window_stride_samples)
    flat = np.stack([audio[:, o:o + window] for o in offsets], axis=1).reshape(-1, window)
    chunks = [np.asarray(_embed_windows(self.config, self.params,
                                        jnp.asarray(flat[i:i + self.max_windows_per_call])))
              for i in range(0, flat.shape[0], self.max_windows_per_call)]
    return np.concatenate(chunks).reshape(audio.shape[0], len(offsets), -1)

  def embed_audio(self, audio: np.ndarray) -> np.ndarray:
    """Audio [B, samples] (or [samples]) -> unit [B, embed_dim]: the renormalised mean of
    its window embeddings (the paper's clip embedding)."""
    mean = self.window_embeddings(audio).mean(axis=1)
    return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)

  def embed_text(self, texts: Sequence[str]) -> np.ndarray:
    """Texts -> unit [B, embed_dim]."""
    if isinstance(texts, str):
      texts = [texts]
    ids = self.text_tokenizer.encode_batch(list(texts), self.config.text_max_length)
    return np.asarray(_embed_tokens(self.config, self.params, jnp.asarray(ids)))

  def audio_tokens(self, audio: np.ndarray) -> np.ndarray:
    """Audio -> MuLan tokens int32 [B, levels]."""
    self._require_codebooks()
    return encode_rvq(self.codebooks, self.embed_audio(audio))

  def text_tokens(self, texts: Sequence[str]) -> np.ndarray:
    """Texts -> MuLan tokens int32 [B, levels]."""
    self._require_codebooks()
    return encode_rvq(self.codebooks, self.embed_text(texts))

  def score(self, texts: Sequence[str], audio: np.ndarray) -> np.ndarray:
    """Cosine of text i and audio i, [B] (MCC's core)."""
    return np.sum(self.embed_text(texts) * self.embed_audio(audio), axis=-1)

  def _require_codebooks(self) -> None:
    if self.codebooks is None:
      raise ValueError("this MuLan tokenizer has no RVQ codebooks: fit them with "
                       "`musiclm-jax mulan fit-rvq` and load them (--rvq)")

  @classmethod
  def load(cls, model_dir: str, rvq_path: Optional[str] = None, step: Optional[int] = None,
           use_ema: bool = True) -> "MuLanTokenizer":
    """From a MuLan training run (config.gin + checkpoint) and optionally an RVQ file."""
    from musiclm_jax.training import runs  # pylint: disable=g-import-not-at-top
    run = runs.load_run(model_dir, model_lib.MuLanConfig, step, use_ema)
    return cls(run.config, run.params, load_rvq(rvq_path) if rvq_path else None)
