"""A tiny MuLan and real captioned clips (sonic-pi-samples one-shots and loops, 16 kHz)."""

from __future__ import annotations

import functools
import os

import numpy as np
import optax

from musiclm_jax.audio import debian_music, io as audio_io
from musiclm_jax.mulan import model as model_lib

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000  # 1 s, the tiny config's window
TEXT_LENGTH = 16
# Real samples (all at least 1 s long) with captions written from what they are.
CAPTIONED = {
    "ambi_piano": "ambient piano chords with reverb",
    "ambi_choir": "a soft ambient choir",
    "bass_hard_c": "a hard synth bass note in c",
    "drum_splash_hard": "a loud crash cymbal",
    "loop_amen": "the amen break drum loop",
    "loop_tabla": "a tabla percussion loop",
    "guit_harmonics": "guitar harmonics",
    "elec_chime": "an electronic chime",
    "perc_bell": "a ringing bell",
    "bass_voxy_c": "a vocal synth bass in c",
    "ambi_glass_rub": "rubbed glass drone",
    "loop_garzul": "an electronic groove loop",
}


def tiny_config(**overrides) -> model_lib.MuLanConfig:
  kw = dict(clip_seconds=1.0, num_mels=32, ast_emb_dim=32, ast_num_heads=2, ast_head_dim=16,
            ast_mlp_dim=64, ast_num_layers=1, text_pretrained=False, text_hidden_size=32,
            text_num_layers=1, text_num_heads=2, text_mlp_dim=64,
            text_max_length=TEXT_LENGTH, embed_dim=16, dropout_rate=0.0)
  kw.update(overrides)
  return model_lib.MuLanConfig(**kw)


def tiny_model(optimizer=None, **overrides) -> model_lib.MuLanModel:
  return model_lib.MuLanModel(model_lib.MuLan(tiny_config(**overrides)),
                              optimizer or optax.adam(3e-3))


def sample_paths() -> dict:
  root = os.path.join(debian_music.fetch("sonic-pi-samples"), "usr/share/sonic-pi/samples")
  return {name: os.path.join(root, name + ".flac") for name in CAPTIONED}


@functools.lru_cache(maxsize=None)
def captioned_batch(count: int = 8, samples: int = CLIP_SAMPLES):
  """{'audio': float32 [count, samples] (zero-padded), 'text_tokens': int32 [count, 16]} and
  the captions, from the first `count` captioned samples."""
  paths = sample_paths()
  names = list(CAPTIONED)[:count]
  audio = np.zeros((count, samples), np.float32)
  for i, name in enumerate(names):
    wave = audio_io.load_audio(paths[name], sample_rate=SAMPLE_RATE)[:samples]
    audio[i, :wave.shape[0]] = wave
  captions = [CAPTIONED[n] for n in names]
  tokens = tiny_config().text_tokenizer().encode_batch(captions, TEXT_LENGTH)
  return {"audio": audio, "text_tokens": tokens}, captions
