"""Randomly initialised parts at the gin sizes, for speed benchmarks (speed does not depend
on training): `gin_config`, `codec`, `mulan`."""

from __future__ import annotations

import numpy as np


def gin_config(files, make, bindings=()):
  """`make()` under the gin files (+ bindings), with gin's state cleared around it."""
  import gin
  from musiclm_jax import configurables, gin_config
  gin.clear_config()
  configurables.import_configurables()
  gin_config.parse_gin_flags(list(files), ["TRAIN_STEPS = 1", *bindings], finalize=False)
  try:
    return make()
  finally:
    gin.clear_config()


def init(module, *args):
  import flax.linen as nn
  import jax
  return nn.meta.unbox(module.init(jax.random.key(0), *args))


def codec(size: str):
  """A `Codec` at soundstream/<size>.gin."""
  from musiclm_jax.soundstream import codec as codec_lib, model as ss_model
  config = gin_config([f"soundstream/{size}.gin"], ss_model.SoundStreamConfig)
  return codec_lib.Codec(config, init(ss_model.SoundStream(config),
                                      np.zeros((1, config.hop_length * 8), np.float32)))


def mulan(size: str, levels: int, codes: int, seed: int = 0):
  """A `MuLanTokenizer` at mulan/<size>.gin (random text tower) with random RVQ codebooks."""
  from musiclm_jax.mulan import model as mulan_model, tokenizer as mulan_tokenizer
  config = gin_config([f"mulan/{size}.gin"], mulan_model.MuLanConfig,
                      ["MuLanConfig.text_pretrained = False"])
  params = init(mulan_model.MuLan(config), np.zeros((1, config.window_samples), np.float32),
                np.ones((1, config.text_max_length), np.int32))["params"]
  codebooks = np.random.default_rng(seed).normal(size=(levels, codes, config.embed_dim))
  return mulan_tokenizer.MuLanTokenizer(config, params, codebooks.astype(np.float32))
