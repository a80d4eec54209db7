"""A tiny w2v-BERT and real 16 kHz clips (sonic-pi-samples loops) for w2v-BERT tests."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np
import optax

from musiclm_jax.audio import debian_music, io as audio_io
from musiclm_jax.training import partitioning
from musiclm_jax.w2v_bert import model as model_lib

SAMPLE_RATE = 16000
CLIP_SAMPLES = 12800  # 0.8 s: 20 frames at 25 frames/s
LOOPS = ("loop_amen.flac", "loop_compus.flac", "loop_tabla.flac", "loop_garzul.flac")


def tiny_config(**overrides) -> model_lib.W2vBertConfig:
  kw = dict(num_mels=32, subsampling_channels=8, emb_dim=32, num_heads=2, head_dim=16,
            mlp_dim=64, conv_kernel_size=5, num_contrastive_layers=1, num_mlm_layers=1,
            dropout_rate=0.0, relpos_num_buckets=8, relpos_max_distance=32,
            codebook_size=32, codevector_dim=16, contrastive_dim=16, mask_prob=0.15,
            mask_length=3, num_negatives=8)
  kw.update(overrides)
  return model_lib.W2vBertConfig(**kw)


def tiny_model(learning_rate: float = 3e-3, **overrides) -> model_lib.W2vBertModel:
  return model_lib.W2vBertModel(model_lib.W2vBert(tiny_config(**overrides)),
                                optax.adam(learning_rate))


@functools.lru_cache(maxsize=None)
def real_clips(count: int = 4, samples: int = CLIP_SAMPLES) -> np.ndarray:
  """[count, samples] float32 16 kHz crops, cycling over the real loops that are long enough."""
  root = debian_music.fetch("sonic-pi-samples")
  files = debian_music.audio_files(root)
  waves = [audio_io.load_audio(next(f for f in files if f.endswith(name)),
                               sample_rate=SAMPLE_RATE) for name in LOOPS]
  waves = [w for w in waves if w.shape[0] >= samples]
  if not waves:
    raise ValueError(f"no loop in {LOOPS} has {samples} samples")
  clips = []
  for i in range(count):
    wave = waves[i % len(waves)]
    start = (i // len(waves)) * samples
    if start + samples > wave.shape[0]:
      start = 0
    clips.append(wave[start:start + samples])
  return np.stack(clips).astype(np.float32)


@functools.lru_cache(maxsize=None)
def tiny_params(seed: int = 0):
  """Freshly initialised (untrained) parameters of `tiny_model()`, unboxed; cached."""
  model = tiny_model()
  options = partitioning.run_once_compiler_options(jax.default_backend())
  init = jax.jit(lambda rng: nn.meta.unbox(
      model.get_initial_variables(rng, {"audio": (1, CLIP_SAMPLES)})["params"]),
      compiler_options=options)
  return init(jax.random.key(seed))
