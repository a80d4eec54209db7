"""The codec exported as a TensorFlow SavedModel (jax2tf) computes what the JAX codec does,
for any batch and clip length."""

import flax.linen as nn
import jax
import numpy as np
import tensorflow as tf

from musiclm_jax.layers import quantizers
from musiclm_jax.soundstream import codec as codec_lib, model as model_lib, savedmodel
from tests import soundstream_fixtures as fx


def test_savedmodel_agrees_with_jax(tmp_path):
  clips = fx.real_clips(4)
  config = fx.tiny_config()
  module = model_lib.SoundStream(config)
  variables = nn.meta.unbox(module.init(jax.random.key(0), clips[:1]))
  # One training-mode pass: k-means initialises the codebooks on real audio.
  _, state = module.apply(variables, clips, train=True, mutable=[quantizers.COLLECTION])
  codec = codec_lib.Codec(config, {**variables, **state})
  path = str(tmp_path / "codec_savedmodel")
  savedmodel.export_savedmodel(codec, path)
  loaded = tf.saved_model.load(path)
  assert int(loaded.hop_length) == config.hop_length
  for batch in (clips[:2], clips[:3, :1600]):
    codes = loaded.encode(tf.constant(batch)).numpy()
    expected = codec.encode(batch)
    np.testing.assert_array_equal(codes, expected)
    assert len(np.unique(codes[..., 0])) > 1          # real codes, not one id
    audio = loaded.decode(tf.constant(codes, tf.int32)).numpy()
    np.testing.assert_allclose(audio, codec.decode(expected), atol=1e-5)
