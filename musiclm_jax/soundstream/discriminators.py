"""SoundStream's discriminators: one on the complex STFT, three on the waveform.

Both return, per sub-discriminator, `(logits, features)`: the logits (float32, any shape;
the hinge losses average them) and the list of intermediate activations that the
feature-matching loss compares between real and decoded audio. So the losses take
`stft_out + wave_out`, a flat list of (logits, features) pairs, whatever the mix.

- `STFTDiscriminator` (SoundStream, Fig. 4): the STFT (window 1024, hop 256) as two real
  channels (real, imaginary), a 7x7 conv, then residual units that halve the frequency axis
  every unit and the time axis every second one (strides (1, 2), (2, 2), ...; kernels
  (s_t + 2) x (s_f + 2)) while the channels grow, and a final conv spanning all remaining
  frequency bins: one logit per time step. The residual skips are strided s_t x s_f convs.
- `MultiScaleWaveDiscriminator` (MelGAN): three identical-architecture discriminators on
  the wave, 2x and 4x average-pooled; each a k=15 conv, four grouped strided k=41 convs
  (channels x4 up to a cap, groups = in_channels / 4), a k=5 conv, and a k=3 conv to one
  logit per (down-sampled) time step. LeakyReLU(0.2) after every conv but the last.

Convs here are not causal (a discriminator sees the whole clip) and not weight-normalised.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from musiclm_jax.audio import features

DiscriminatorOutput = List[Tuple[jnp.ndarray, List[jnp.ndarray]]]


def _conv(features_out: int, kernel_size: Sequence[int], dtype, strides=None,
          padding="SAME", name: str | None = None) -> nn.Conv:
  """nn.Conv with float32 params and logical axes: kernel (*spatial, conv_in, conv_out)."""
  spatial = (None,) * len(kernel_size)
  return nn.Conv(
      features_out, tuple(kernel_size), strides=strides, padding=padding,
      dtype=dtype, param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                               spatial + ("conv_in", "conv_out")),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
      name=name)


def grouped_strided_conv1d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int,
                           groups: int) -> jnp.ndarray:
  """'SAME'-padded grouped strided 1-D convolution, computed in polyphase form.

  x [batch, time, in], kernel [taps, in // groups, out] -> [batch, ceil(time / stride), out]:
  the numbers of `lax.conv_general_dilated(x, kernel, (stride,), 'SAME',
  feature_group_count=groups)` (as `nn.Conv`), without its slow paths. XLA:CPU runs grouped
  strided convolutions, and above all their gradients (input-dilated and window-dilated
  convolutions), on generic code: forward + backward of the four k=41 stride-4 convolutions
  of one wave discriminator, batch 16 x 1 s, on a 2-core Xeon (benchmarks/conv_speed.py):
  SoundStream `small` 2.01 s with lax, 0.66 s in this form; `paper` 10.7 s vs 1.66 s.

  The form: `stride` consecutive samples become one frame of stride * in channels, so the
  stride-s conv with `taps` taps is a stride-1 conv with ceil(taps / s) taps over frames;
  with the groups moved to the front, each tap is one batched matrix product
  [groups, batch * frames, s * in / groups] x [groups, s * in / groups, out / groups].
  """
  batch, time, channels = x.shape
  taps, group_in, features = kernel.shape
  if channels != groups * group_in or features % groups or stride < 1:
    raise ValueError(
        f"grouped_strided_conv1d: input channels {channels} must be groups ({groups}) x the "
        f"kernel's {group_in} inputs per group, and its {features} outputs a multiple of "
        f"groups; stride {stride} must be >= 1")
  out_frames = -(-time // stride)
  pad = max((out_frames - 1) * stride + taps - time, 0)   # 'SAME', as lax computes it
  frame_taps = -(-taps // stride)
  frames = out_frames + frame_taps - 1
  x = jnp.pad(x, ((0, 0), (pad // 2, frames * stride - time - pad // 2), (0, 0)))
  # [groups, batch, frames, stride * group_in]; channel index = phase * group_in + input.
  x = x.reshape(batch, frames, stride, groups, group_in).transpose(3, 0, 1, 2, 4)
  x = x.reshape(groups, batch, frames, stride * group_in)
  # Kernel taps padded to whole frames: [frame_taps, groups, stride * group_in, out / groups].
  kernel = jnp.pad(kernel, ((0, frame_taps * stride - taps), (0, 0), (0, 0)))
  kernel = kernel.reshape(frame_taps, stride, group_in, groups, features // groups)
  kernel = kernel.transpose(0, 3, 1, 2, 4).reshape(
      frame_taps, groups, stride * group_in, features // groups)
  y = sum(jnp.einsum("gbti,gio->gbto", x[:, :, m:m + out_frames], kernel[m])
          for m in range(frame_taps))
  return y.transpose(1, 2, 0, 3).reshape(batch, out_frames, features)


class GroupedStridedConv1D(nn.Module):
  """A grouped strided 'SAME' conv with `nn.Conv`'s parameters (names, shapes, init and
  logical axes: checkpoints of either load in the other), computed by
  `grouped_strided_conv1d`. [batch, time, in] -> [batch, ceil(time / stride), features]."""
  features: int
  kernel_size: int
  stride: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.lecun_normal(), (None, "conv_in", "conv_out")),
                        (self.kernel_size, x.shape[-1] // self.groups, self.features),
                        jnp.float32)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                           ("conv_out",)),
                      (self.features,), jnp.float32)
    y = grouped_strided_conv1d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                               self.groups)
    return y + bias.astype(self.dtype)


class STFTResidualUnit(nn.Module):
  """3x3 conv, LeakyReLU, strided (s_t + 2) x (s_f + 2) conv; plus a strided skip conv.

  [batch, time, freq, in] -> [batch, ceil(time / s_t), ceil(freq / s_f), features].
  """
  features: int
  strides: Tuple[int, int]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    st, sf = self.strides
    h = _conv(x.shape[-1], (3, 3), self.dtype, name="conv")(x)
    h = _conv(self.features, (st + 2, sf + 2), self.dtype, strides=(st, sf),
              name="down")(nn.leaky_relu(h, 0.2))
    skip = _conv(self.features, (st, sf), self.dtype, strides=(st, sf), name="skip")(x)
    return nn.leaky_relu(h + skip, 0.2)


class STFTDiscriminator(nn.Module):
  """Discriminator on the complex STFT (a single sub-discriminator).

  Attributes:
    channels: C; unit i outputs C * channel_multipliers[i] channels.
    channel_multipliers: one per residual unit.
    unit_strides: (time, frequency) stride per residual unit.
    frame_length, frame_step: the STFT's window and hop (centred frames).
    dtype: computation dtype (parameters stay float32).
  """
  channels: int = 32
  channel_multipliers: Sequence[int] = (1, 2, 4, 4, 8, 8)
  unit_strides: Sequence[Tuple[int, int]] = ((1, 2), (2, 2)) * 3
  frame_length: int = 1024
  frame_step: int = 256
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, wave: jnp.ndarray) -> DiscriminatorOutput:
    """Args:
      wave: [batch, samples] (or [batch, samples, 1]).
    Returns:
      [(logits [batch, time'], [feature maps [batch, time_i, freq_i, channels_i]])].
    """
    if len(self.channel_multipliers) != len(self.unit_strides):
      raise ValueError(f"STFTDiscriminator: {len(self.channel_multipliers)} channel "
                       f"multipliers for {len(self.unit_strides)} unit strides")
    if wave.ndim == 3:
      wave = wave[..., 0]
    spectrum = features.stft(wave, self.frame_length, self.frame_step, center=True)
    h = jnp.stack([spectrum.real, spectrum.imag], axis=-1).astype(self.dtype)
    h = nn.leaky_relu(_conv(self.channels, (7, 7), self.dtype, name="stem")(h), 0.2)
    feature_maps = [h]
    for i, (mult, strides) in enumerate(zip(self.channel_multipliers, self.unit_strides)):
      h = STFTResidualUnit(self.channels * mult, tuple(strides), self.dtype,
                           name=f"unit_{i}")(h)
      feature_maps.append(h)
    # One conv over every remaining frequency bin: [batch, time', 1, 1].
    logits = _conv(1, (1, h.shape[2]), self.dtype, padding="VALID", name="logits")(h)
    return [(logits[:, :, 0, 0].astype(jnp.float32), feature_maps)]


class WaveDiscriminator(nn.Module):
  """MelGAN's waveform discriminator: [batch, samples, 1] -> (logits, feature maps).

  Attributes:
    channels: width of the first conv.
    max_channels: cap on the width.
    downsample_factors: stride of each grouped conv (its kernel is 10 * stride + 1).
    group_size: input channels per group in the grouped convs.
    dtype: computation dtype.
  """
  channels: int = 16
  max_channels: int = 1024
  downsample_factors: Sequence[int] = (4, 4, 4, 4)
  group_size: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, wave: jnp.ndarray) -> Tuple[jnp.ndarray, List[jnp.ndarray]]:
    act = lambda x: nn.leaky_relu(x, 0.2)
    h = act(_conv(self.channels, (15,), self.dtype, name="stem")(wave.astype(self.dtype)))
    feature_maps = [h]
    width = self.channels
    for i, factor in enumerate(self.downsample_factors):
      out = min(width * factor, self.max_channels)
      groups = max(1, width // self.group_size)
      if width % groups or out % groups:
        raise ValueError(f"WaveDiscriminator: {width} -> {out} channels do not split into "
                         f"{groups} groups")
      h = act(GroupedStridedConv1D(out, 10 * factor + 1, factor, groups, self.dtype,
                                   name=f"down_{i}")(h))
      feature_maps.append(h)
      width = out
    h = act(_conv(width, (5,), self.dtype, name="conv")(h))
    feature_maps.append(h)
    logits = _conv(1, (3,), self.dtype, name="logits")(h)
    return logits[..., 0].astype(jnp.float32), feature_maps


class MultiScaleWaveDiscriminator(nn.Module):
  """`num_scales` WaveDiscriminators on the wave, then 2x, 4x, ... average-pooled.

  Pooling: window 4, stride 2, 'SAME' padding, padding not counted in the average (MelGAN's).
  Attributes are those of `WaveDiscriminator`, shared by every scale, plus num_scales.
  """
  num_scales: int = 3
  channels: int = 16
  max_channels: int = 1024
  downsample_factors: Sequence[int] = (4, 4, 4, 4)
  group_size: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, wave: jnp.ndarray) -> DiscriminatorOutput:
    """Args:
      wave: [batch, samples] (or [batch, samples, 1]).
    Returns:
      num_scales x (logits [batch, time_k], [feature maps [batch, time_kl, channels_kl]]).
    """
    x = wave[..., None] if wave.ndim == 2 else wave
    x = x.astype(jnp.float32)
    outputs = []
    for k in range(self.num_scales):
      if k:
        x = nn.avg_pool(x, (4,), strides=(2,), padding="SAME", count_include_pad=False)
      outputs.append(WaveDiscriminator(self.channels, self.max_channels,
                                       tuple(self.downsample_factors), self.group_size,
                                       self.dtype, name=f"scale_{k}")(x))
    return outputs
