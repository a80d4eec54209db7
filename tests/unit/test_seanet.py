"""Causal convs and the SEANet codec backbone: shapes, causality, streaming == whole clip."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.layers import conv
from musiclm_jax.soundstream import seanet

STRIDES = (2, 4)
HOP = 8


def tiny_encoder(**kw):
  return seanet.SEANetEncoder(channels=4, strides=STRIDES, embedding_dim=6, **kw)


def tiny_decoder(**kw):
  return seanet.SEANetDecoder(channels=4, strides=STRIDES, **kw)


def key(seed):
  # 'rbg' keys: initialising a net compiles several times faster on CPU than with threefry.
  return jax.random.key(seed, impl="rbg")


def random(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def stream(module, variables, x, chunk_lengths):
  """Feeds x [batch, time, ...] in chunks with streaming=True; returns the concatenation."""
  state, outputs, start = {}, [], 0
  for length in chunk_lengths:
    y, state = module.apply({**variables, **state}, x[:, start:start + length],
                            streaming=True, mutable=["stream"])
    outputs.append(y)
    start += length
  assert start == x.shape[1]
  return jnp.concatenate(outputs, axis=1)


@pytest.fixture(scope="module")
def codec():
  wave = 0.5 * random((2, 12 * HOP))
  encoder, decoder = tiny_encoder(), tiny_decoder()
  enc_vars = jax.jit(encoder.init)(key(0), wave)
  embeddings = encoder.apply(enc_vars, wave)
  dec_vars = jax.jit(decoder.init)(key(1), embeddings)
  return encoder, enc_vars, decoder, dec_vars, wave, embeddings


# ---- the conv layers ------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_size,stride,dilation", [(7, 1, 3), (4, 2, 1), (5, 5, 1)])
def test_causal_conv_frames_causality_and_streaming(kernel_size, stride, dilation):
  layer = conv.CausalConv1D(3, kernel_size, stride=stride, dilation=dilation,
                            weight_norm=True)
  x = random((2, 6 * stride + stride - 1, 2))  # a partial block at the end is dropped
  variables = layer.init(key(0), x)
  y = layer.apply(variables, x)
  assert y.shape == (2, 6, 3)
  # Frame i ends at sample (i + 1) * stride - 1: changing sample 3 * stride leaves frames
  # 0..2 alone and changes frame 3.
  changed = layer.apply(variables, x.at[:, 3 * stride].add(1.0))
  np.testing.assert_array_equal(changed[:, :3], y[:, :3])
  assert not np.allclose(changed[:, 3], y[:, 3])
  whole = x[:, :6 * stride]
  streamed = stream(layer, variables, whole, [stride, 2 * stride, 3 * stride])
  np.testing.assert_allclose(streamed, layer.apply(variables, whole), atol=1e-5)


def test_causal_conv_transpose_upsamples_causally_and_streams():
  layer = conv.CausalConvTranspose1D(3, kernel_size=6, stride=3)
  x = random((2, 5, 4))
  variables = layer.init(key(0), x)
  y = layer.apply(variables, x)
  assert y.shape == (2, 15, 3)
  changed = layer.apply(variables, x.at[:, 2].add(1.0))
  np.testing.assert_array_equal(changed[:, :6], y[:, :6])  # samples before frame 2's
  assert not np.allclose(changed[:, 6:9], y[:, 6:9])
  np.testing.assert_allclose(stream(layer, variables, x, [1, 3, 1]), y, atol=1e-5)


def test_conv_rejects_bad_shapes():
  layer = conv.CausalConv1D(2, 4, stride=2)
  x = random((1, 8, 1))
  variables = layer.init(key(0), x)
  with pytest.raises(ValueError, match="multiple of the stride"):
    layer.apply(variables, x[:, :3], streaming=True, mutable=["stream"])
  with pytest.raises(ValueError, match="shorter than the stride"):
    conv.CausalConv1D(2, 2, stride=3).init(key(0), x)


def test_every_param_is_float32_with_logical_axes(codec):
  encoder, enc_vars, decoder, dec_vars, *_ = codec
  for variables in (enc_vars, dec_vars):
    leaves = jax.tree.leaves(variables["params"],
                             is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(l, nn.LogicallyPartitioned) for l in leaves)
    for leaf in leaves:
      assert leaf.value.dtype == jnp.float32
      assert len(leaf.names) == leaf.value.ndim
  kernel = enc_vars["params"]["block_0_down"]["kernel"]
  assert kernel.names == (None, "conv_in", "conv_out") and kernel.value.shape == (4, 4, 8)
  assert enc_vars["params"]["block_0_down"]["scale"].names == ("conv_out",)


# ---- SEANet ---------------------------------------------------------------------------------

def test_shapes(codec):
  encoder, enc_vars, decoder, dec_vars, wave, embeddings = codec
  assert encoder.hop_length == decoder.hop_length == HOP
  assert embeddings.shape == (2, 12, 6) and embeddings.dtype == jnp.float32
  np.testing.assert_allclose(encoder.apply(enc_vars, wave[..., None]), embeddings)
  out = decoder.apply(dec_vars, embeddings)
  assert out.shape == wave.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(out)) and np.std(out) > 0
  with pytest.raises(ValueError, match="multiple of the hop length 8"):
    encoder.apply(enc_vars, wave[:, :-3])


def test_default_config_is_musiclm_rate():
  encoder = seanet.SEANetEncoder()
  decoder = seanet.SEANetDecoder()
  assert encoder.hop_length == decoder.hop_length == 480  # 50 frames/s at 24 kHz


def test_bfloat16_compute_keeps_float32_outputs(codec):
  _, enc_vars, _, dec_vars, wave, embeddings = codec
  emb16 = tiny_encoder(dtype=jnp.bfloat16).apply(enc_vars, wave)
  assert emb16.dtype == jnp.float32
  np.testing.assert_allclose(emb16, embeddings, atol=0.1 * float(np.abs(embeddings).max()))
  assert tiny_decoder(dtype=jnp.bfloat16).apply(dec_vars, embeddings).dtype == jnp.float32


def test_encoder_is_causal(codec):
  encoder, enc_vars, _, _, wave, embeddings = codec
  t = 5 * HOP + 3  # inside frame 5
  changed = encoder.apply(enc_vars, wave.at[:, t:].add(random(wave[:, t:].shape, 1)))
  np.testing.assert_array_equal(changed[:, :5], embeddings[:, :5])
  assert not np.allclose(changed[:, 5], embeddings[:, 5])


def test_decoder_is_causal(codec):
  _, _, decoder, dec_vars, _, embeddings = codec
  out = decoder.apply(dec_vars, embeddings)
  changed = decoder.apply(dec_vars, embeddings.at[:, 5:].add(1.0))
  np.testing.assert_array_equal(changed[:, :5 * HOP], out[:, :5 * HOP])
  assert not np.allclose(changed[:, 5 * HOP:6 * HOP], out[:, 5 * HOP:6 * HOP])


@pytest.mark.parametrize("frames_per_chunk", [[1] * 12, [2] * 6, [3] * 4, [1, 3, 2, 6]])
def test_streaming_equals_whole_clip(codec, frames_per_chunk):
  encoder, enc_vars, decoder, dec_vars, wave, embeddings = codec
  streamed = stream(encoder, enc_vars, wave, [n * HOP for n in frames_per_chunk])
  np.testing.assert_allclose(streamed, embeddings, atol=1e-5)
  out = decoder.apply(dec_vars, embeddings)
  np.testing.assert_allclose(stream(decoder, dec_vars, embeddings, frames_per_chunk), out,
                             atol=1e-5)


def test_streaming_under_jit(codec):
  encoder, enc_vars, _, _, wave, embeddings = codec
  step = jax.jit(lambda variables, chunk: encoder.apply(variables, chunk, streaming=True,
                                                        mutable=["stream"]))
  _, state = encoder.apply(enc_vars, wave[:, :2 * HOP], streaming=True, mutable=["stream"])
  state = jax.tree.map(jnp.zeros_like, state)  # a fresh stream, with its shapes known
  outputs = []
  for start in range(0, wave.shape[1], 2 * HOP):
    y, state = step({**enc_vars, **state}, wave[:, start:start + 2 * HOP])
    outputs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outputs, 1), embeddings, atol=1e-5)
