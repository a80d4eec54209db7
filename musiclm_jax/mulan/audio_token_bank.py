"""Text -> MuLan *audio* tokens, through the token tuples the stages were trained on.

MusicLM trains its stages on the RVQ tokens of MuLan's audio embedding and, at generation,
feeds them the same RVQ's tokens of the text embedding instead. The RVQ was fitted to audio
embeddings, and a contrastive text embedding lies off that manifold (MuLan's modality gap),
so a prompt quantizes to a tuple of tokens unlike any the stages saw in training.

The bank holds the MuLan token tuples of the training clips (what the stages were
conditioned on) and maps a text embedding to the tuple whose decoded embedding is nearest
by cosine: a non-parametric version of DALL-E 2's prior (text embedding -> image
embedding). It stays in the tuples' vocabulary by construction; the stages then generate
new music from it (the tuple is a 12-token summary of a clip, not the clip).

    bank = AudioTokenBank(train_mulan_tokens, codebooks)     # [N, levels], [levels, codes, D]
    tokens = bank.nearest(mulan.embed_text(["slow solo cello"]))   # int32 [1, levels]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from musiclm_jax import arrays_file
from musiclm_jax.mulan import tokenizer as tokenizer_lib


class AudioTokenBank:
  """Distinct MuLan audio token tuples int32 [N, levels] under RVQ codebooks
  [levels, codes, dim]."""

  def __init__(self, tokens: np.ndarray, codebooks: np.ndarray):
    tokens = np.asarray(tokens)
    codebooks = np.asarray(codebooks, np.float32)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] > codebooks.shape[0]:
      raise ValueError(f"audio token bank must be [clips > 0, levels <= "
                       f"{codebooks.shape[0]}], got shape {tokens.shape}")
    if tokens.min() < 0 or tokens.max() >= codebooks.shape[1]:
      raise ValueError(f"audio token bank holds codes outside [0, {codebooks.shape[1]}): "
                       f"{tokens.min()}..{tokens.max()}")
    self.tokens = np.unique(tokens.astype(np.int32), axis=0)
    decoded = tokenizer_lib.decode_rvq(codebooks, self.tokens)
    # Unit rows [N, dim]: the embedding each tuple stands for, scored by cosine.
    self.embeddings = decoded / np.maximum(np.linalg.norm(decoded, axis=-1, keepdims=True),
                                           1e-12)

  @property
  def num_levels(self) -> int:
    return self.tokens.shape[1]

  def nearest(self, embeddings: np.ndarray) -> np.ndarray:
    """Unit text (or audio) embeddings [B, dim] -> the bank's nearest tuples int32
    [B, levels] by cosine."""
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] != self.embeddings.shape[1]:
      raise ValueError(f"embeddings must be [batch, {self.embeddings.shape[1]}], got shape "
                       f"{embeddings.shape}")
    return self.tokens[np.argmax(embeddings @ self.embeddings.T, axis=1)]

  def save(self, path: str, **metadata: Any) -> None:
    """The tuples to an .npz, atomically (the codebooks travel in the RVQ file)."""
    arrays_file.save_arrays(path, {"tokens": self.tokens}, **metadata)

  @classmethod
  def load(cls, path: str, codebooks: np.ndarray) -> "AudioTokenBank":
    """A bank saved by `save`, under the RVQ `codebooks` its tokens were made with; errors
    name the file."""
    arrays, _ = arrays_file.load_arrays(path, "MuLan audio token bank", ["tokens"])
    try:
      return cls(arrays["tokens"], codebooks)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e
