"""A tiny SoundStream and a real clip (sonic-pi-samples' amen break) for codec tests."""

from __future__ import annotations

import functools

import numpy as np
import optax

from musiclm_jax.audio import debian_music, io as audio_io
from musiclm_jax.soundstream import model as model_lib

SAMPLE_RATE = 16000
CLIP_SAMPLES = 3200  # 0.2 s: 80 frames of hop 40 (the 1.75 s loop holds 8 of them)


def tiny_config(**overrides) -> model_lib.SoundStreamConfig:
  kw = dict(sample_rate=SAMPLE_RATE, channels=8, strides=(2, 4, 5), embedding_dim=16,
            num_quantizers=4, codebook_size=32, stft_channels=4, stft_frame_length=256,
            stft_frame_step=64, wave_channels=4, wave_max_channels=32, wave_scales=2)
  kw.update(overrides)
  return model_lib.SoundStreamConfig(**kw)


def tiny_model(warmup_steps: int = 0, generator_optimizer=None,
               **overrides) -> model_lib.SoundStreamModel:
  return model_lib.SoundStreamModel(
      model_lib.SoundStreamGAN(tiny_config(**overrides)),
      {"generator": generator_optimizer or optax.adam(3e-3),
       "discriminator": optax.adam(1e-3)},
      spectral_windows=(64, 128, 256), discriminator_warmup_steps=warmup_steps)


@functools.lru_cache(maxsize=None)
def real_clips(count: int = 8) -> np.ndarray:
  """[count, CLIP_SAMPLES] consecutive crops of a real drum loop, float32 at 16 kHz."""
  root = debian_music.fetch("sonic-pi-samples")
  path = next(f for f in debian_music.audio_files(root) if f.endswith("loop_amen.flac"))
  wave = audio_io.load_audio(path, sample_rate=SAMPLE_RATE)
  return np.stack([wave[i * CLIP_SAMPLES:(i + 1) * CLIP_SAMPLES] for i in range(count)])
