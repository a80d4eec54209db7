"""The codec as a TensorFlow SavedModel (jax2tf), for serving outside JAX.

  export_savedmodel(codec, "codec_savedmodel/")
  m = tf.saved_model.load("codec_savedmodel/")
  codes = m.encode(audio)      # float32 [batch, samples] (samples a multiple of hop) -> int32
                               # [batch, samples / hop, levels]
  audio = m.decode(codes)      # int32 [batch, frames, levels] -> float32 [batch, frames * hop]

Batch and length are symbolic (one SavedModel for every clip length); the computation is
the JAX codec's, serialised as StableHLO (jax2tf native serialisation), so TF runs the same
XLA program. `m.sample_rate`, `m.hop_length` and `m.num_quantizers` are saved with it.
"""

from __future__ import annotations

from musiclm_jax import atomic


def export_savedmodel(codec, path: str) -> None:
  """Writes the codec's encoder and decoder as a SavedModel at `path` (atomically)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  cfg = codec.config
  variables = codec.variables

  def encode(wave):
    return codec.module.apply(variables, wave, method=type(codec.module).encode)

  def decode(codes):
    return codec.module.apply(variables, codes, method=type(codec.module).decode)

  hop = cfg.hop_length
  module = tf.Module()
  module.encode = tf.function(
      jax2tf.convert(encode, polymorphic_shapes=[f"(b, {hop} * t)"], with_gradient=False),
      autograph=False, input_signature=[tf.TensorSpec([None, None], tf.float32)])
  module.decode = tf.function(
      jax2tf.convert(decode, polymorphic_shapes=[f"(b, f, {cfg.num_quantizers})"],
                     with_gradient=False),
      autograph=False,
      input_signature=[tf.TensorSpec([None, None, cfg.num_quantizers], tf.int32)])
  # Variables, not constants: only trackable objects are saved with the module.
  for name, value in (("sample_rate", cfg.sample_rate), ("hop_length", hop),
                      ("num_quantizers", cfg.num_quantizers)):
    setattr(module, name, tf.Variable(value, trainable=False, dtype=tf.int32, name=name))
  with atomic.atomic_directory(path, ".tmp-savedmodel-") as tmp:
    tf.saved_model.save(module, tmp)
