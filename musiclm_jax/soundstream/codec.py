"""The trained codec for inference: encode, decode, stream; saved as a portable bundle.

A bundle is a folder with `config.json` (the `SoundStreamConfig`) and `variables.msgpack`
(the generator's parameters and codebooks, Flax-serialised): everything needed to turn
audio into tokens and back, without the training state, the discriminators or gin; and,
where known, `provenance.json` (how it was trained: the run's gin config, step, data),
which a MusicLM bundle's manifest carries on.

    codec = Codec.load('soundstream_bundle/')
    codes = codec.encode(wave)              # [batch, samples] -> int32 [batch, frames, 12]
    audio = codec.decode(codes[..., :4])    # any number of levels: bitrate set at decode time
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Optional

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax import atomic
from musiclm_jax.layers import quantizers
from musiclm_jax.soundstream import model as model_lib

CONFIG_FILE = "config.json"
VARIABLES_FILE = "variables.msgpack"
PROVENANCE_FILE = "provenance.json"
# Bundles shipped in the package, named 'pretrained:<name>' wherever a bundle path is taken.
PRETRAINED_PREFIX = "pretrained:"
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


def bundle_path(bundle: str) -> str:
  """A bundle folder from a path or 'pretrained:<name>' (a bundle shipped in the package)."""
  if not bundle.startswith(PRETRAINED_PREFIX):
    return bundle
  name = bundle[len(PRETRAINED_PREFIX):]
  shipped = sorted(n for n in os.listdir(PRETRAINED_DIR)
                   if os.path.isfile(os.path.join(PRETRAINED_DIR, n, CONFIG_FILE)))
  if name not in shipped:
    raise FileNotFoundError(f"no pretrained codec {name!r}; the package ships {shipped}")
  return os.path.join(PRETRAINED_DIR, name)


def fold_weight_norm(params: Mapping[str, Any]) -> dict:
  """Replaces every weight-normalised conv's (kernel v, scale g) by its effective kernel
  g * v / ||v|| (as torch's remove_weight_norm): the same function, less work per call."""
  def fold(tree):
    if not isinstance(tree, Mapping):
      return tree
    tree = {k: fold(v) for k, v in tree.items()}
    kernel, scale = tree.get("kernel"), tree.get("scale")
    if kernel is not None and scale is not None and np.ndim(kernel) == 3:
      norm = jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(kernel)), axis=(0, 1)))
      tree["kernel"] = jnp.asarray(kernel) * (jnp.asarray(scale) / jnp.maximum(norm, 1e-12))
      del tree["scale"]
    return tree
  return fold(params)


class Codec:
  """SoundStream inference with jitted, shape-cached encode and decode."""

  def __init__(self, config: model_lib.SoundStreamConfig, variables: Mapping[str, Any],
               provenance: Optional[Mapping[str, Any]] = None):
    """Args:
      config: the codec's configuration.
      variables: {'params': generator params, 'quantizer': generator codebook state}.
        Weight-normalised kernels are folded once here (inference needs no reparameter-
        isation), so the codec's config says weight_norm=False.
      provenance: how the weights were made (JSON-able), saved beside them.
    """
    self.provenance = dict(provenance) if provenance is not None else None
    params = variables["params"]
    if config.weight_norm:
      params = fold_weight_norm(params)
      config = dataclasses.replace(config, weight_norm=False)
    self.config = config
    self.module = model_lib.SoundStream(config)
    self.variables = {"params": params,
                      quantizers.COLLECTION: variables[quantizers.COLLECTION]}

  # ---- whole clips ------------------------------------------------------------------------

  @functools.partial(jax.jit, static_argnums=(0, 3))
  def _encode(self, variables, wave, num_levels):
    return self.module.apply(variables, wave, num_levels, method=model_lib.SoundStream.encode)

  @functools.partial(jax.jit, static_argnums=0)
  def _decode(self, variables, codes):
    return self.module.apply(variables, codes, method=model_lib.SoundStream.decode)

  def pad_to_hop(self, wave: np.ndarray) -> np.ndarray:
    """Zero-pads [batch, samples] at the end to a whole number of frames."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim == 1:
      wave = wave[None]
    if wave.ndim != 2:
      raise ValueError(f"audio must be [samples] or [batch, samples], got shape {wave.shape}")
    if not np.all(np.isfinite(wave)):
      raise ValueError("audio contains NaN or Inf samples")
    short = -wave.shape[1] % self.config.hop_length
    return np.pad(wave, ((0, 0), (0, short))) if short else wave

  def encode(self, wave: np.ndarray, num_levels: Optional[int] = None) -> np.ndarray:
    """Audio [batch, samples] (or [samples]) at config.sample_rate -> int32 codes
    [batch, ceil(samples / hop), levels] (the tail is zero-padded to a whole frame)."""
    if num_levels is not None and not 1 <= num_levels <= self.config.num_quantizers:
      raise ValueError(f"num_levels {num_levels}: this codec has 1.."
                       f"{self.config.num_quantizers} levels")
    wave = self.pad_to_hop(wave)
    if wave.shape[1] == 0:
      raise ValueError("cannot encode empty audio")
    return np.asarray(self._encode(self.variables, jnp.asarray(wave), num_levels))

  def decode(self, codes: np.ndarray) -> np.ndarray:
    """int codes [batch, frames, q], q <= num_quantizers -> audio [batch, frames * hop]."""
    codes = np.asarray(codes)
    if codes.ndim != 3:
      raise ValueError(f"codes must be [batch, frames, levels], got shape {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
      raise ValueError(f"codes must be integers, got {codes.dtype}")
    if codes.shape[-1] > self.config.num_quantizers or codes.shape[-1] < 1:
      raise ValueError(f"codes have {codes.shape[-1]} levels; this codec has 1.."
                       f"{self.config.num_quantizers}")
    if codes.size and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
      raise ValueError(f"code ids must be in [0, {self.config.codebook_size}), got "
                       f"[{codes.min()}, {codes.max()}]")
    return np.asarray(self._decode(self.variables, jnp.asarray(codes, jnp.int32)))

  # ---- streaming --------------------------------------------------------------------------

  def stream_encoder(self, num_levels: Optional[int] = None) -> "StreamingEncoder":
    return StreamingEncoder(self, num_levels)

  def stream_decoder(self) -> "StreamingDecoder":
    return StreamingDecoder(self)

  # ---- persistence ------------------------------------------------------------------------

  def save(self, bundle_dir: str) -> None:
    """Writes the bundle atomically (a temporary folder renamed into place)."""
    with atomic.atomic_directory(bundle_dir, ".tmp-bundle-") as tmp:
      with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(dataclasses.asdict(self.config), f, indent=2)
      host = jax.device_get(self.variables)
      with open(os.path.join(tmp, VARIABLES_FILE), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(host))
      if self.provenance is not None:
        with open(os.path.join(tmp, PROVENANCE_FILE), "w", encoding="utf-8") as f:
          json.dump(self.provenance, f, indent=1)

  @classmethod
  def load(cls, bundle_dir: str) -> "Codec":
    """Reads a bundle written by `save` (a folder, or 'pretrained:<name>'); errors name the
    missing or damaged file."""
    bundle_dir = bundle_path(bundle_dir)
    config_path = os.path.join(bundle_dir, CONFIG_FILE)
    variables_path = os.path.join(bundle_dir, VARIABLES_FILE)
    for path in (config_path, variables_path):
      if not os.path.isfile(path):
        raise FileNotFoundError(f"codec bundle {bundle_dir!r} has no {os.path.basename(path)}")
    try:
      with open(config_path, encoding="utf-8") as f:
        raw = json.load(f)
      raw["strides"] = tuple(raw["strides"])
      config = model_lib.SoundStreamConfig(**raw)
    except (ValueError, TypeError, KeyError) as e:
      raise ValueError(f"{config_path}: not a SoundStream config ({e})") from e
    try:
      with open(variables_path, "rb") as f:
        variables = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several types on damaged input
      raise ValueError(f"{variables_path}: unreadable ({type(e).__name__}: {e})") from e
    provenance = None
    provenance_path = os.path.join(bundle_dir, PROVENANCE_FILE)
    if os.path.isfile(provenance_path):
      try:
        with open(provenance_path, encoding="utf-8") as f:
          provenance = json.load(f)
      except ValueError as e:
        raise ValueError(f"{provenance_path}: unreadable ({e})") from e
    codec = cls(config, variables, provenance)
    codec._check_shapes(variables_path)
    return codec

  @classmethod
  def from_train_state(cls, config: model_lib.SoundStreamConfig, params: Mapping,
                       flax_mutables: Mapping) -> "Codec":
    """The generator part of a `SoundStreamModel` training state."""
    return cls(config, {"params": params["generator"],
                        quantizers.COLLECTION: flax_mutables[quantizers.COLLECTION]["generator"]})

  def _check_shapes(self, source: str) -> None:
    """Compares the loaded variables with what the config implies."""
    expected = model_lib.abstract_variables(self.config)
    expected = {k: expected[k] for k in self.variables}
    got = jax.tree.map(lambda x: tuple(np.shape(x)), self.variables)
    want = jax.tree.map(lambda x: tuple(x.shape), expected)
    if got != want:
      raise ValueError(f"{source}: variables do not match the bundle's config")


class StreamingEncoder:
  """Feeds audio chunk by chunk; the codes equal those of the whole clip."""

  def __init__(self, codec: Codec, num_levels: Optional[int]):
    self._codec, self._levels = codec, num_levels
    self._state = {}

  def push(self, chunk: np.ndarray) -> np.ndarray:
    """[batch, samples] with samples a multiple of the hop -> codes [batch, frames, levels]."""
    chunk = np.asarray(chunk, np.float32)
    hop = self._codec.config.hop_length
    if chunk.ndim != 2 or chunk.shape[1] == 0 or chunk.shape[1] % hop:
      raise ValueError(f"stream chunks must be [batch, k * {hop}] samples, got shape "
                       f"{chunk.shape}")
    codes, self._state = _stream_encode(self._codec, self._codec.variables, self._state,
                                        jnp.asarray(chunk), self._levels)
    return np.asarray(codes)


class StreamingDecoder:
  """Feeds codes chunk by chunk; the audio equals that of the whole sequence."""

  def __init__(self, codec: Codec):
    self._codec = codec
    self._state = {}

  def push(self, codes: np.ndarray) -> np.ndarray:
    """codes [batch, frames, q] -> audio [batch, frames * hop]."""
    audio, self._state = _stream_decode(self._codec, self._codec.variables, self._state,
                                        jnp.asarray(codes, jnp.int32))
    return np.asarray(audio)


# One compiled step per (codec, shapes), shared by every stream: a new stream costs nothing.
@functools.partial(jax.jit, static_argnums=(0, 4))
def _stream_encode(codec, variables, state, chunk, num_levels):
  return codec.module.apply({**variables, **state}, chunk, num_levels, True,
                            method=model_lib.SoundStream.encode, mutable=["stream"])


@functools.partial(jax.jit, static_argnums=0)
def _stream_decode(codec, variables, state, codes):
  return codec.module.apply({**variables, **state}, codes, True,
                            method=model_lib.SoundStream.decode, mutable=["stream"])
