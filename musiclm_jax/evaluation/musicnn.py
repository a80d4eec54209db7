"""musicnn (Pons & Serra, 2019) in Flax, with the TensorFlow weights of the `musicnn` package.

The MagnaTagATune (MTT, 50 tags) and Million Song Dataset (MSD, 50 tags) taggers serve the
evaluation as frozen embedders: their penultimate layer for FAD, their tag posteriors for
KLD. The pip package `musicnn` ships the TF1 checkpoints (install it with --no-deps: its
pinned TensorFlow is not ours); `load_musicnn` reads them with TensorFlow's checkpoint
reader, no TF graph involved.

Input: log-compressed mel spectrograms as musicnn computes them (16 kHz, 512-point FFT, hop
256, 96 Slaney mel bands, power, log10(10000 x + 1)), [batch, frames, 96]. The model was
trained on 3 s patches (187 frames); `MusicnnTagger.embed_clips` cuts clips into such
patches and averages over them, as musicnn's extractor does.

Architecture (musicnn/models.py, `build_musicnn`): batch-normalised input; a front end of
timbral (7 x 38 and 7 x 67 time-frequency filters) and temporal (128, 64, 32 x 1) convolutions,
each max-pooled over frequency; a mid end of three 7-frame convolutions with residual
connections, densely concatenated with the front end; a back end pooling max and mean over
time, then dense 200 -> 50. Batch norms in inference mode (epsilon 1e-3, TF's default).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from musiclm_jax.audio import features

SAMPLE_RATE = 16000
FFT_SIZE = 512
HOP = 256
NUM_MELS = 96
PATCH_FRAMES = 187          # 3 s: librosa.time_to_frames(3, 16000, 256, 512) + 1
BN_EPSILON = 1e-3

MTT_LABELS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera",
    "male", "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute",
    "woman", "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic",
    "choir", "voice", "new age", "dance", "male voice", "female vocal", "beats", "harp",
    "cello", "no voice", "weird", "country", "metal", "female voice", "choral")
MSD_LABELS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s",
    "chill", "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic",
    "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock",
    "60s", "rnb", "indie pop", "sad", "House", "happy")
MODELS = {"MTT_musicnn": MTT_LABELS, "MSD_musicnn": MSD_LABELS}


# ---- input features ---------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def slaney_mel_filterbank() -> np.ndarray:
  """librosa's default mel matrix (Slaney scale and area normalisation, as musicnn used),
  float32 [FFT_SIZE // 2 + 1, NUM_MELS]."""
  import librosa  # pylint: disable=g-import-not-at-top  (host side, once)
  matrix = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=FFT_SIZE, n_mels=NUM_MELS).T
  matrix = np.ascontiguousarray(matrix, np.float32)
  matrix.setflags(write=False)
  return matrix


def mel_power(audio: jnp.ndarray) -> jnp.ndarray:
  """Audio float [B, samples] at 16 kHz -> mel power [B, 1 + samples // HOP, 96], as
  `librosa.feature.melspectrogram` (centred frames, zero padding, periodic Hann)."""
  spectrum = features.stft(audio, FFT_SIZE, HOP, FFT_SIZE, center=True)
  power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
  return power @ slaney_mel_filterbank()


def log_compress(mel: jnp.ndarray) -> jnp.ndarray:
  """musicnn's 'logC': log10(10000 x + 1), after rounding x to float16 as the training
  features were stored. (musicnn's extractor also multiplies in float16, which overflows
  to inf for loud bins; the product is taken in float32 here.)"""
  mel = mel.astype(jnp.float16).astype(jnp.float32)
  return jnp.log10(10000.0 * mel + 1.0)


@jax.jit
def log_mel(audio: jnp.ndarray) -> jnp.ndarray:
  """Audio [B, samples] at 16 kHz -> musicnn's input [B, frames, 96]."""
  return log_compress(mel_power(audio))


# ---- the network ------------------------------------------------------------------------

def _batch_norm(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name=name)


class Musicnn(nn.Module):
  """musicnn: log-mel [B, frames, 96] -> dict of
    logits [B, num_classes], tags (sigmoid) [B, num_classes], penultimate [B, 200],
    mean_pool, max_pool [B, 753] (temporal pooling of the front + mid end features).
  """
  num_classes: int = 50
  num_mels: int = NUM_MELS
  frontend_scale: float = 1.6
  midend_filters: int = 64
  backend_units: int = 200

  @nn.compact
  def __call__(self, mel: jnp.ndarray) -> Dict[str, jnp.ndarray]:
    x = _batch_norm("input_bn")(mel[..., None])              # [B, T, F, 1]

    def conv_pool(inputs, features_, kernel, padding, name):
      y = nn.relu(nn.Conv(features_, kernel, padding=padding, name=f"{name}_conv")(inputs))
      return _batch_norm(f"{name}_bn")(y).max(axis=2)         # max over frequency: [B, T, C]

    # Timbral filters span 40% and 70% of the mel axis; time is padded so T is kept.
    timbral_in = jnp.pad(x, ((0, 0), (3, 3), (0, 0), (0, 0)))
    timbral = int(self.frontend_scale * 128)
    temporal = int(self.frontend_scale * 32)
    front = [conv_pool(timbral_in, timbral, (7, int(0.4 * self.num_mels)), "VALID", "timbral74"),
             conv_pool(timbral_in, timbral, (7, int(0.7 * self.num_mels)), "VALID", "timbral77")]
    front += [conv_pool(x, temporal, (length, 1), "SAME", f"temporal{length}")
              for length in (128, 64, 32)]
    front = jnp.concatenate(front, axis=-1)                   # [B, T, 561]

    # Mid end: 7-frame convolutions across all channels, residual after the first.
    mid = [front]
    y = front
    for i in range(3):
      conv = nn.Conv(self.midend_filters, (7,), padding=((3, 3),), name=f"midend{i + 1}_conv")
      out = _batch_norm(f"midend{i + 1}_bn")(nn.relu(conv(y)))
      y = out if i == 0 else out + y
      mid.append(y)
    mid = jnp.concatenate(mid, axis=-1)                       # [B, T, 753]

    max_pool, mean_pool = mid.max(axis=1), mid.mean(axis=1)
    # TF concatenates [B, C, 1] maxima and means on the last axis and flattens: interleaved.
    pooled = jnp.stack([max_pool, mean_pool], axis=-1).reshape(mid.shape[0], -1)
    pooled = _batch_norm("pool_bn")(pooled)
    hidden = nn.relu(nn.Dense(self.backend_units, name="penultimate_dense")(pooled))
    penultimate = _batch_norm("penultimate_bn")(hidden)
    logits = nn.Dense(self.num_classes, name="logits_dense")(penultimate)
    return {"logits": logits, "tags": jax.nn.sigmoid(logits), "penultimate": penultimate,
            "mean_pool": mean_pool, "max_pool": max_pool}


# Our layer names, in the order TF created (and numbered) its conv2d / batch_normalization /
# dense variables in musicnn/models.py.
_CONVS = ("timbral74", "timbral77", "temporal128", "temporal64", "temporal32", "midend1",
          "midend2", "midend3")
_BATCH_NORMS = ("input", "timbral74", "timbral77", "temporal128", "temporal64", "temporal32",
                "midend1", "midend2", "midend3", "pool", "penultimate")
_DENSES = ("penultimate", "logits")


def _tf_name(kind: str, index: int) -> str:
  return kind if index == 0 else f"{kind}_{index}"


# ---- weights ----------------------------------------------------------------------------

def package_checkpoint(model: str = "MTT_musicnn") -> str:
  """Checkpoint prefix of one of the `musicnn` package's models (the files are named
  '<dir>/.index' etc., so the prefix ends with the separator)."""
  if model not in MODELS:
    raise ValueError(f"musicnn model {model!r}: choose one of {sorted(MODELS)}")
  spec = importlib.util.find_spec("musicnn")   # located, not imported (it imports TF1 code)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the musicnn package is not installed: pip install --no-deps "
                            "musicnn (the Makefile does)")
  return os.path.join(list(spec.submodule_search_locations)[0], model, "")


def variables_from_checkpoint(prefix: str, num_mels: int = NUM_MELS) -> dict:
  """Flax variables {'params', 'batch_stats'} of `Musicnn` from a musicnn TF checkpoint.

  Raises ValueError naming the checkpoint for a missing or mis-shaped tensor.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not os.path.exists(prefix + ".index"):
    raise FileNotFoundError(f"no TensorFlow checkpoint at {prefix!r} ({prefix}.index missing)")
  try:
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
  except Exception as e:  # TF raises its own DataLossError etc. for damaged files
    raise ValueError(f"unreadable TensorFlow checkpoint {prefix!r}: {e}") from e
  shapes = reader.get_variable_to_shape_map()

  def get(name):
    if name not in shapes:
      raise ValueError(f"checkpoint {prefix!r} lacks the tensor {name!r}: not a musicnn "
                       "model?")
    return np.asarray(reader.get_tensor(name), np.float32)

  params, stats = {}, {}
  for i, layer in enumerate(_CONVS):
    kernel = get(f"{_tf_name('conv2d', i)}/kernel")
    if layer.startswith("midend"):     # [7, C, 1, F]: a 1-D convolution over time
      kernel = kernel.reshape(kernel.shape[0], kernel.shape[1], kernel.shape[3])
    params[f"{layer}_conv"] = {"kernel": kernel, "bias": get(f"{_tf_name('conv2d', i)}/bias")}
  for i, layer in enumerate(_BATCH_NORMS):
    tf_name = _tf_name("batch_normalization", i)
    params[f"{layer}_bn"] = {"scale": get(f"{tf_name}/gamma"), "bias": get(f"{tf_name}/beta")}
    stats[f"{layer}_bn"] = {"mean": get(f"{tf_name}/moving_mean"),
                            "var": get(f"{tf_name}/moving_variance")}
  for i, layer in enumerate(_DENSES):
    params[f"{layer}_dense"] = {"kernel": get(f"{_tf_name('dense', i)}/kernel"),
                                "bias": get(f"{_tf_name('dense', i)}/bias")}
  variables = {"params": params, "batch_stats": stats}
  expected = jax.eval_shape(
      functools.partial(Musicnn(num_classes=params["logits_dense"]["bias"].shape[0],
                                num_mels=num_mels).init, jax.random.key(0)),
      jnp.zeros((1, PATCH_FRAMES, num_mels)))
  got = jax.tree_util.tree_map(np.shape, variables)
  want = jax.tree_util.tree_map(lambda s: tuple(s.shape), expected)
  if got != want:
    raise ValueError(f"checkpoint {prefix!r}: tensor shapes do not fit musicnn "
                     f"({got} vs {want})")
  return variables


# ---- clip-level embedder -----------------------------------------------------------------

@dataclasses.dataclass
class MusicnnTagger:
  """A frozen musicnn: clips -> patch-averaged features.

    tagger = MusicnnTagger.load("MTT_musicnn")
    out = tagger.embed_clips(audio_16k)     # [B, samples] -> {'penultimate': [B, 200], ...}
  """
  name: str
  labels: Tuple[str, ...]
  variables: dict

  sample_rate: int = SAMPLE_RATE

  @classmethod
  def load(cls, model: str = "MTT_musicnn") -> "MusicnnTagger":
    return cls(model, MODELS[model], variables_from_checkpoint(package_checkpoint(model)))

  @functools.cached_property
  def _apply(self):
    module = Musicnn(num_classes=len(self.labels))
    return jax.jit(lambda variables, mel: module.apply(variables, mel))

  def apply_mel(self, mel: np.ndarray) -> Dict[str, np.ndarray]:
    """musicnn's input [B, frames, 96] -> the network's outputs (see `Musicnn`)."""
    out = self._apply(self.variables, jnp.asarray(mel, jnp.float32))
    return {k: np.asarray(v) for k, v in out.items()}

  def patches(self, audio: np.ndarray) -> Tuple[np.ndarray, int]:
    """Audio [B, samples] at 16 kHz -> non-overlapping 3 s patches [B * P, 187, 96] (a clip
    shorter than 3 s is one patch of its own length) and P."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 2 or audio.shape[1] < FFT_SIZE:
      raise ValueError(f"audio must be [batch, samples >= {FFT_SIZE}] at {SAMPLE_RATE} Hz, "
                       f"got shape {audio.shape}")
    if not np.all(np.isfinite(audio)):
      raise ValueError("audio holds NaN or infinite samples")
    mel = np.asarray(log_mel(jnp.asarray(audio)))
    frames = mel.shape[1]
    count = max(1, frames // PATCH_FRAMES)
    length = min(frames, PATCH_FRAMES)
    patches = np.stack([mel[:, i * length:(i + 1) * length] for i in range(count)], axis=1)
    return patches.reshape(-1, length, NUM_MELS), count

  def embed_clips(self, audio: np.ndarray, batch_patches: int = 64,
                  outputs: Sequence[str] = ("penultimate", "tags", "logits")
                  ) -> Dict[str, np.ndarray]:
    """Audio [B, samples] at 16 kHz -> each output averaged over the clip's 3 s patches,
    [B, dim] (tags: the mean posterior, as musicnn's taggram averaged over time)."""
    patches, count = self.patches(audio)
    chunks = [self.apply_mel(patches[i:i + batch_patches])
              for i in range(0, patches.shape[0], batch_patches)]
    return {k: np.concatenate([c[k] for c in chunks]).reshape(len(audio), count, -1)
            .mean(axis=1) for k in outputs}
