"""Clip embedders for the metrics, by name: a small registry.

    embedder = embedders.get("musicnn_mtt")            # built in: the musicnn package
    emb = embedder.embed(audio)                         # [N, samples] at embedder.sample_rate -> [N, D]

Built in: 'musicnn_mtt' / 'musicnn_msd' (penultimate layer, 200-d; their tags feed KLD)
and 'mulan' (the MuLan audio tower, `mulan_model_dir=`). The paper's FAD_VGG and FAD_TRILL
use VGGish and TRILL, distributed as TensorFlow SavedModels: with the weights on disk,

    embedders.register("vggish", lambda: embedders.SavedModelEmbedder(
        "/models/vggish", sample_rate=16000, per_clip=True))

or on the command line `--embedder savedmodel:/models/vggish@16000`. Nothing is fetched
at run time.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Protocol

import numpy as np


class Embedder(Protocol):
  name: str
  sample_rate: int

  def embed(self, audio: np.ndarray) -> np.ndarray:
    """float32 [N, samples] at `sample_rate` -> [N, D]."""


@dataclasses.dataclass
class MusicnnEmbedder:
  """A musicnn tagger's clip features: `output` ('penultimate', 'mean_pool', ...)."""
  model: str = "MTT_musicnn"
  output: str = "penultimate"

  sample_rate: int = 16000

  @property
  def name(self) -> str:
    return f"{self.model}.{self.output}"

  @property
  def tagger(self):
    if not hasattr(self, "_tagger"):
      from musiclm_jax.evaluation import musicnn  # pylint: disable=g-import-not-at-top
      self._tagger = musicnn.MusicnnTagger.load(self.model)
    return self._tagger

  def embed(self, audio: np.ndarray) -> np.ndarray:
    return self.tagger.embed_clips(audio, outputs=(self.output,))[self.output]


@dataclasses.dataclass
class MuLanEmbedder:
  """MuLan's clip embedding (windows averaged, unit length)."""
  tokenizer: object   # mulan.tokenizer.MuLanTokenizer

  name: str = "mulan"

  @property
  def sample_rate(self) -> int:
    return self.tokenizer.config.sample_rate

  def embed(self, audio: np.ndarray) -> np.ndarray:
    return self.tokenizer.embed_audio(audio)


@dataclasses.dataclass
class SavedModelEmbedder:
  """Any TensorFlow SavedModel mapping audio to embeddings (VGGish, TRILL, ...).

  Args:
    path: the SavedModel folder.
    sample_rate: the rate it expects.
    per_clip: call it on one 1-D waveform at a time (VGGish's interface) instead of the
      batch [N, samples].
    output_key: for models that return a dict (TRILL: 'embedding').
  Outputs [frames, D] (per clip) or [N, frames, D] are averaged over frames.
  """
  path: str
  sample_rate: int = 16000
  per_clip: bool = False
  output_key: Optional[str] = None

  @property
  def name(self) -> str:
    return f"savedmodel:{self.path}"

  def _call(self, audio: np.ndarray) -> np.ndarray:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not hasattr(self, "_model"):
      try:
        self._model = tf.saved_model.load(self.path)
      except (OSError, ValueError) as e:
        raise ValueError(f"cannot load the SavedModel {self.path!r}: {e}") from e
    out = self._model(tf.constant(audio, tf.float32))
    if isinstance(out, dict):
      if self.output_key not in out:
        raise ValueError(f"SavedModel {self.path!r} returns {sorted(out)}: set output_key")
      out = out[self.output_key]
    return np.asarray(out)

  def embed(self, audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, np.float32)
    if self.per_clip:
      outs = [self._call(clip) for clip in audio]
      return np.stack([o.reshape(-1, o.shape[-1]).mean(axis=0) for o in outs])
    out = self._call(audio)
    return out.mean(axis=1) if out.ndim == 3 else out


_REGISTRY: Dict[str, Callable[..., Embedder]] = {}


def register(name: str, factory: Callable[..., Embedder]) -> None:
  """Makes `get(name, **kwargs)` return `factory(**kwargs)` (a later call replaces)."""
  _REGISTRY[name] = factory


def _mulan(mulan_model_dir: str, **kwargs) -> MuLanEmbedder:
  from musiclm_jax.mulan import tokenizer  # pylint: disable=g-import-not-at-top
  return MuLanEmbedder(tokenizer.MuLanTokenizer.load(mulan_model_dir, **kwargs))


register("musicnn_mtt", lambda: MusicnnEmbedder("MTT_musicnn"))
register("musicnn_msd", lambda: MusicnnEmbedder("MSD_musicnn"))
register("mulan", _mulan)


def get(spec: str, **kwargs) -> Embedder:
  """A registered name, or 'savedmodel:PATH[@RATE]' for a SavedModel on disk."""
  if spec.startswith("savedmodel:"):
    body = spec[len("savedmodel:"):]
    path, at, rate = body.rpartition("@")
    if not at:
      path, rate = body, "16000"
    if not rate.isdigit():
      raise ValueError(f"embedder {spec!r}: the rate after '@' must be a number of Hz")
    return SavedModelEmbedder(path, int(rate), **kwargs)
  if spec not in _REGISTRY:
    raise ValueError(f"unknown embedder {spec!r}: registered {sorted(_REGISTRY)}, or "
                     "'savedmodel:PATH[@RATE]'")
  return _REGISTRY[spec](**kwargs)
