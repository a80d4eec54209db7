"""Spectral features, SoundStream's discriminators and losses (tiny configs)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musiclm_jax.audio import features
from musiclm_jax.soundstream import discriminators, losses, seanet

RATE = 16000


def sine(freq, samples=RATE // 4, batch=1):
  t = np.arange(samples) / RATE
  return jnp.asarray(np.tile(0.5 * np.sin(2 * np.pi * freq * t), (batch, 1)), jnp.float32)


def key(seed):
  # 'rbg' keys: initialising a net compiles several times faster on CPU than with threefry.
  return jax.random.key(seed, impl="rbg")


def noise(shape, seed=0, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape), jnp.float32)


# ---- features -------------------------------------------------------------------------------

def test_stft_matches_tensorflow():
  import tensorflow as tf
  wave = noise((2, 1000))
  ours = features.stft(wave, frame_length=100, frame_step=25, fft_length=128)
  theirs = tf.signal.stft(np.asarray(wave), 100, 25, 128).numpy()
  assert ours.shape == theirs.shape == (2, 37, 65)
  np.testing.assert_allclose(ours, theirs, atol=1e-3)
  centred = features.stft(wave, 100, 25, center=True)
  assert features.num_frames(1000, 100, 25, center=True) == 41
  assert centred.shape == (2, 41, 65)
  with pytest.raises(ValueError, match="fewer than one frame"):
    features.stft(wave[:, :50], 100, 25)


def test_mel_filterbank_shape_and_cache():
  matrix = features.mel_filterbank(40, 512, RATE, 20.0, 8000.0)
  assert matrix.shape == (257, 40) and matrix.dtype == np.float32
  assert features.mel_filterbank(40, 512, RATE, 20.0, 8000.0) is matrix
  assert np.all(matrix >= 0) and np.all(matrix.sum(0) > 0)
  with pytest.raises(ValueError, match="fmax"):
    features.mel_filterbank(40, 512, RATE, 0.0, 9000.0)


@pytest.mark.parametrize("num_mels,fft_length,sample_rate,fmin,fmax", [
    (40, 512, RATE, 20.0, 8000.0), (64, 1024, 24000, 0.0, None), (80, 512, 16000, 0.0, None),
    (128, 2048, 24000, 30.0, 11000.0)])
def test_mel_filterbank_is_tensorflows(num_mels, fft_length, sample_rate, fmin, fmax):
  """The NumPy filterbank is tf.signal.linear_to_mel_weight_matrix (the reference the
  codec and w2v-BERT features were first built on), both computed in float64: equal to
  float32 rounding. (TensorFlow's float32 matrix differs from both by up to 2e-5.)"""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ours = features.mel_filterbank(num_mels, fft_length, sample_rate, fmin, fmax)
  theirs = tf.signal.linear_to_mel_weight_matrix(
      num_mel_bins=num_mels, num_spectrogram_bins=fft_length // 2 + 1,
      sample_rate=sample_rate, lower_edge_hertz=fmin,
      upper_edge_hertz=sample_rate / 2 if fmax is None else fmax, dtype=tf.float64).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-7)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_log_mel_of_a_sine_peaks_at_its_band(freq):
  num_mels, fmin, fmax = 40, 0.0, RATE / 2
  log_mel = features.log_mel_spectrogram(sine(freq), RATE, frame_length=1024, frame_step=256,
                                         num_mels=num_mels, fmin=fmin, fmax=fmax)
  assert log_mel.shape == (1, 1 + (RATE // 4 - 1024) // 256, num_mels)
  peak = np.bincount(np.argmax(np.asarray(log_mel[0]), axis=-1)).argmax()
  # Band centres on the HTK mel scale (TensorFlow's).
  mel = lambda f: 1127.0 * np.log1p(f / 700.0)
  centres_mel = np.linspace(mel(fmin), mel(fmax), num_mels + 2)[1:-1]
  expected = np.argmin(np.abs(centres_mel - mel(freq)))
  assert abs(int(peak) - int(expected)) <= 1, (peak, expected)


@pytest.mark.parametrize("midi", [40, 57, 69, 81, 100])
def test_log_semitone_spectrogram_of_a_sine_peaks_at_its_semitone(midi):
  """Band k is MIDI note 36 + k (fmin = C2); every band, even the lowest, sees a bin."""
  freq = 440.0 * 2 ** ((midi - 69) / 12)
  matrix = features.semitone_filterbank(84, 4096, RATE, 65.41)
  assert matrix.shape == (2049, 84) and np.all(matrix.sum(0) > 0)
  spectrum = features.log_semitone_spectrogram(sine(freq, RATE), RATE, 4096, 640)
  assert spectrum.shape == (1, 1 + RATE // 640, 84)
  assert int(np.argmax(np.asarray(spectrum[0, 12]))) == midi - 36
  with pytest.raises(ValueError, match="Nyquist"):
    features.semitone_filterbank(96, 4096, RATE, 65.41)
  with pytest.raises(ValueError, match="fmin > 0"):
    features.semitone_filterbank(84, 4096, RATE, 0.0)


def test_features_jit_and_differentiate():
  wave = noise((1, 2000))
  fn = jax.jit(lambda w: jnp.sum(features.log_mel_spectrogram(w, RATE, 256, 64, num_mels=16)))
  grad = jax.grad(fn)(wave)
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  assert np.all(np.isfinite(jax.grad(fn)(jnp.zeros_like(wave))))  # |0| has a finite gradient


# ---- losses ---------------------------------------------------------------------------------

def test_hinge_losses():
  ones, zeros = jnp.ones((2, 5)), jnp.zeros((2, 5))
  # A discriminator that is right by a margin has zero loss; undecided costs 1 + 1.
  assert float(losses.discriminator_hinge_loss([2 * ones, ones], [-ones, -3 * ones])) == 0.0
  assert float(losses.discriminator_hinge_loss([zeros], [zeros])) == pytest.approx(2.0)
  assert float(losses.discriminator_hinge_loss([ones], [ones])) == pytest.approx(2.0)
  assert float(losses.generator_hinge_loss([ones, 5 * ones])) == 0.0
  assert float(losses.generator_hinge_loss([zeros, -ones])) == pytest.approx(1.5)
  with pytest.raises(ValueError):
    losses.discriminator_hinge_loss([ones], [])


def test_feature_matching():
  real = [[noise((2, 8, 3), 0), noise((2, 4, 5), 1)], [noise((2, 6, 2), 2)]]
  fake = [[f + noise(f.shape, 9, 0.5) for f in maps] for maps in real]
  assert float(losses.feature_matching_loss(real, real)) == 0.0
  value = float(losses.feature_matching_loss(real, fake))
  assert 0.1 < value < 1.0  # relative error of noise at half the features' scale
  # Invariant to the scale of a layer (normalised by the real map's magnitude).
  scaled = lambda maps_list, c: [[c * f for f in maps] for maps in maps_list]
  np.testing.assert_allclose(losses.feature_matching_loss(scaled(real, 10.0),
                                                          scaled(fake, 10.0)), value, rtol=1e-5)


def test_spectral_loss_zero_when_equal_and_grows_with_noise():
  wave = sine(440.0, samples=4000, batch=2) + noise((2, 4000), 1, 0.05)
  loss = jax.jit(lambda w, r: losses.multi_scale_spectral_loss(w, r, RATE))
  assert float(loss(wave, wave)) == 0.0
  small = float(loss(wave, wave + noise(wave.shape, 2, 0.01)))
  large = float(loss(wave, wave + noise(wave.shape, 2, 0.1)))
  assert 0.0 < small < large
  # Gradients at identical inputs are finite (the L2 norm's sqrt is guarded).
  grad = jax.jit(jax.grad(loss, argnums=1))(wave, wave)
  assert np.all(np.isfinite(grad))


# ---- discriminators and the whole generator loss --------------------------------------------

def tiny_stft_discriminator():
  return discriminators.STFTDiscriminator(channels=4, channel_multipliers=(1, 2),
                                          unit_strides=((1, 2), (2, 2)), frame_length=64,
                                          frame_step=16)


def tiny_wave_discriminator():
  return discriminators.MultiScaleWaveDiscriminator(channels=4, max_channels=16,
                                                    downsample_factors=(4, 4))


def test_discriminator_outputs():
  wave = noise((2, 1600), 0, 0.3)
  stft_d, wave_d = tiny_stft_discriminator(), tiny_wave_discriminator()
  stft_vars = stft_d.init(key(0), wave)
  wave_vars = wave_d.init(key(1), wave)
  for variables in (stft_vars, wave_vars):
    leaves = jax.tree.leaves(variables["params"],
                             is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(l, nn.LogicallyPartitioned) and l.value.dtype == jnp.float32
               for l in leaves)

  (logits, maps), = stft_d.apply(stft_vars, wave)
  # 101 centred frames x 33 bins -> units with strides (1, 2), (2, 2) -> 51 x 9 -> 51 logits.
  assert logits.shape == (2, 51) and np.all(np.isfinite(logits))
  assert [m.shape for m in maps] == [(2, 101, 33, 4), (2, 101, 17, 4), (2, 51, 9, 8)]

  outputs = wave_d.apply(wave_vars, wave)
  assert len(outputs) == 3
  for k, (logits, maps) in enumerate(outputs):
    samples = 1600 // 2 ** k
    assert logits.shape == (2, samples // 16) and np.all(np.isfinite(logits))
    assert [m.shape for m in maps] == [(2, samples, 4), (2, samples // 4, 16),
                                       (2, samples // 16, 16), (2, samples // 16, 16)]


@pytest.mark.parametrize("time,channels,features,taps,stride,groups", [
    (1600, 4, 16, 41, 4, 1),     # a wave discriminator's first grouped conv
    (403, 16, 32, 41, 4, 4),     # length not a multiple of the stride
    (97, 32, 32, 21, 2, 8),
    (50, 8, 8, 3, 1, 2),         # stride 1
    (9, 8, 16, 41, 4, 2),        # kernel far longer than the clip
])
def test_grouped_strided_conv_matches_lax(time, channels, features, taps, stride, groups):
  x = noise((2, time, channels), 0)
  kernel = noise((taps, channels // groups, features), 1, 0.1)
  lax_conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (stride,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"),
      feature_group_count=groups)
  ours = lambda x, k: discriminators.grouped_strided_conv1d(x, k, stride, groups)
  expected = lax_conv(x, kernel)
  got = jax.jit(ours)(x, kernel)
  assert got.shape == expected.shape == (2, -(-time // stride), features)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  # And the gradients (what training uses) for both inputs.
  cotangent = noise(expected.shape, 2)
  grads = lambda f: jax.grad(lambda x, k: jnp.sum(f(x, k) * cotangent), argnums=(0, 1))(
      x, kernel)
  for g_ours, g_lax in zip(jax.jit(lambda: grads(ours))(), grads(lax_conv)):
    np.testing.assert_allclose(g_ours, g_lax, rtol=1e-4, atol=1e-4)


def test_grouped_strided_conv_rejects_mismatched_groups():
  x = noise((1, 64, 8), 0)
  with pytest.raises(ValueError, match="input channels 8 must be groups \\(4\\)"):
    discriminators.grouped_strided_conv1d(x, noise((5, 4, 8), 1), 2, 4)
  with pytest.raises(ValueError, match="its 6 outputs a multiple of groups"):
    discriminators.grouped_strided_conv1d(x, noise((5, 2, 6), 1), 2, 4)


def test_grouped_strided_conv_module_has_nn_conv_params():
  """Same names, shapes, initial values and logical axes as the nn.Conv it replaced, so
  discriminator checkpoints from before load unchanged."""
  x = noise((2, 64, 8), 0)
  ours = discriminators.GroupedStridedConv1D(16, 41, 4, 2)
  conv = nn.Conv(16, (41,), strides=(4,), padding="SAME", feature_group_count=2,
                 kernel_init=nn.with_logical_partitioning(
                     nn.initializers.lecun_normal(), (None, "conv_in", "conv_out")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)))
  ours_vars, conv_vars = ours.init(key(0), x), conv.init(key(0), x)
  assert jax.tree.structure(ours_vars) == jax.tree.structure(conv_vars)
  for a, b in zip(jax.tree.leaves(ours_vars, is_leaf=lambda v: isinstance(
      v, nn.LogicallyPartitioned)), jax.tree.leaves(conv_vars, is_leaf=lambda v: isinstance(
          v, nn.LogicallyPartitioned))):
    assert a.names == b.names
    np.testing.assert_array_equal(a.value, b.value)
  np.testing.assert_allclose(ours.apply(ours_vars, x), conv.apply(conv_vars, x),
                             rtol=1e-5, atol=1e-5)


def test_discriminator_loss_gradients():
  wave, fake = noise((2, 800), 0, 0.3), noise((2, 800), 1, 0.3)
  wave_d = tiny_wave_discriminator()
  params = nn.meta.unbox(wave_d.init(key(0), wave))
  loss_fn = lambda p: losses.discriminator_loss(wave_d.apply(p, wave), wave_d.apply(p, fake))
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  assert 0.0 < float(loss) and np.isfinite(float(loss))
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
    # (The last bias cancels while real and fake logits are inside the margin: -1 + 1.)
    if path[-1].key == "kernel":
      assert np.any(g != 0), jax.tree_util.keystr(path)


def test_generator_loss_gradients_reach_every_codec_param():
  wave = sine(440.0, samples=800, batch=2) + noise((2, 800), 3, 0.05)
  # One residual unit per block keeps the compilation short; the losses are what is tested.
  encoder = seanet.SEANetEncoder(channels=4, strides=(2, 4), embedding_dim=8, dilations=(3,))
  decoder = seanet.SEANetDecoder(channels=4, strides=(2, 4), dilations=(3,))
  stft_d, wave_d = tiny_stft_discriminator(), tiny_wave_discriminator()

  @jax.jit
  def init(wave):  # one compilation instead of many op-by-op ones
    return (encoder.init(key(0), wave), decoder.init(key(1), jnp.zeros((2, 100, 8))),
            stft_d.init(key(2), wave), wave_d.init(key(3), wave))

  enc_p, dec_p, stft_p, wave_p = nn.meta.unbox(init(wave))
  run_discriminators = lambda w: stft_d.apply(stft_p, w) + wave_d.apply(wave_p, w)

  def loss_fn(codec_params):
    recon = decoder.apply(codec_params["dec"], encoder.apply(codec_params["enc"], wave))
    return losses.generator_loss(run_discriminators(wave), run_discriminators(recon), wave,
                                 recon, RATE, window_sizes=(64, 256))

  params = {"enc": enc_p, "dec": dec_p}
  (total, terms), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert np.isfinite(float(total)) and all(float(v) > 0 for v in terms.values())
  np.testing.assert_allclose(
      total, terms["adversarial"] + 100 * terms["feature_matching"] + terms["reconstruction"],
      rtol=1e-5)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)
