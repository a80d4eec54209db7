"""The three frozen tokenizers of MusicLM, together: one clip in, its MuLan, semantic and
acoustic tokens out, cut to the same duration.

The tokenize job (`tasks.tokenize_job`) runs them over datasets to make the stages' token
shards; `generation.musiclm.MusicLM` runs them over an audio prompt. Both import this module,
so the two agree on what a clip's tokens are.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import numpy as np

from musiclm_jax import fingerprint
from musiclm_jax.audio import io as audio_io
from musiclm_jax.mulan import tokenizer as mulan_tokenizer
from musiclm_jax.soundstream import codec as codec_lib
from musiclm_jax.w2v_bert import tokenizer as semantic_tokenizer


@dataclasses.dataclass
class Tokenizers:
  """The three frozen tokenizers."""
  codec: codec_lib.Codec
  semantic: semantic_tokenizer.SemanticTokenizer
  mulan: mulan_tokenizer.MuLanTokenizer  # with its RVQ

  @classmethod
  def load(cls, codec_bundle: str, semantic_model_dir: str, centroids: str,
           mulan_model_dir: str, mulan_rvq: str) -> "Tokenizers":
    return cls(codec_lib.Codec.load(codec_bundle),
               semantic_tokenizer.SemanticTokenizer.load(semantic_model_dir, centroids),
               mulan_tokenizer.MuLanTokenizer.load(mulan_model_dir, mulan_rvq))

  def layout(self) -> Dict[str, int]:
    """The token vocabularies and rates (the fields of `token_layout.TokenLayout`)."""
    codec = self.codec.config
    return {"mulan_levels": int(self.mulan.num_levels),
            "mulan_codes": int(self.mulan.codebooks.shape[1]),
            "semantic_codes": int(self.semantic.num_clusters),
            "semantic_rate": int(round(self.semantic.token_rate)),
            "acoustic_levels": int(codec.num_quantizers),
            "acoustic_codes": int(codec.codebook_size),
            "acoustic_rate": int(round(codec.sample_rate / codec.hop_length))}

  def fingerprints(self) -> Dict[str, str]:
    """Which weights make these tokens: a content hash per tokenizer, of everything its
    tokens depend on (`fingerprint.pytree_fingerprint`)."""
    semantic, mulan = self.semantic, self.mulan
    return {"codec": fingerprint.pytree_fingerprint(self.codec.variables),
            "semantic": fingerprint.pytree_fingerprint(
                {"params": semantic.params, "centroids": semantic.state,
                 "layer": np.int32(semantic.layer)}),
            "mulan": fingerprint.pytree_fingerprint(
                {"params": mulan.params, "codebooks": mulan.codebooks})}

  def tokenize(self, wave: np.ndarray, sample_rate: int):
    """Mono float32 [samples] -> (mulan [levels], semantic [S], acoustic [S * r, Q])."""
    layout = self.layout()
    ratio = layout["acoustic_rate"] // layout["semantic_rate"]
    at = lambda rate: audio_io.resample(wave, sample_rate, rate)
    semantic = self.semantic.tokenize(at(self.semantic.config.sample_rate)[None])[0]
    acoustic = self.codec.encode(at(self.codec.config.sample_rate)[None])[0]
    frames = min(len(semantic), acoustic.shape[0] // ratio)
    mulan = self.mulan.audio_tokens(at(self.mulan.config.sample_rate)[None])[0]
    return mulan, semantic[:frames], acoustic[:frames * ratio]
