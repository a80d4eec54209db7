"""BERT WordPiece tokenization of captions and prompts in Python (no TensorFlow).

`BertTokenizer` reads a BERT folder's vocabulary (`tokenizer.json` and/or `vocab.txt`) and
encodes with Hugging Face `tokenizers`. Model inputs are `[CLS] pieces... [SEP]` right-padded
with [PAD] (id 0) to a fixed length. The tf.data side, `text_vocabulary.BertVocabulary` (a
`seqio.Vocabulary` for the caption tasks), gives the same ids (tested); it lives apart so that
generation and the MuLan command line do not import TensorFlow and SeqIO (~8 s).
"""

from __future__ import annotations

import json
import os
from typing import List, Sequence

import numpy as np

VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def _read_vocab(folder: str) -> List[str]:
  """Tokens in id order, from vocab.txt or else tokenizer.json's WordPiece vocabulary."""
  vocab_path = os.path.join(folder, VOCAB_FILE)
  if os.path.isfile(vocab_path):
    with open(vocab_path, encoding="utf-8") as f:
      return [line.rstrip("\n") for line in f]
  json_path = os.path.join(folder, TOKENIZER_FILE)
  if not os.path.isfile(json_path):
    raise FileNotFoundError(f"{folder!r} has neither {VOCAB_FILE} nor {TOKENIZER_FILE}")
  with open(json_path, encoding="utf-8") as f:
    model = json.load(f).get("model", {})
  if model.get("type") != "WordPiece":
    raise ValueError(f"{json_path}: model type {model.get('type')!r} is not WordPiece (BERT)")
  by_id = sorted(model["vocab"].items(), key=lambda kv: kv[1])
  return [token for token, _ in by_id]


def _lower_case(folder: str) -> bool:
  path = os.path.join(folder, TOKENIZER_CONFIG_FILE)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return bool(json.load(f).get("do_lower_case", True))
  return True


class BertTokenizer:
  """WordPiece tokenizer of a BERT folder. `encode` gives the pieces without [CLS]/[SEP];
  `encode_batch` makes model inputs int32 [texts, length]."""

  def __init__(self, folder: str):
    self.folder = folder
    self.tokens = _read_vocab(folder)
    self.lower_case = _lower_case(folder)
    index = {t: i for i, t in enumerate(self.tokens)}
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in index]
    if missing:
      raise ValueError(f"{folder!r}: the vocabulary lacks {missing}; is it a BERT tokenizer?")
    if index["[PAD]"] != 0:
      raise ValueError(f"{folder!r}: [PAD] has id {index['[PAD]']}; padding must be id 0")
    self.cls_id, self.sep_id = index["[CLS]"], index["[SEP]"]
    self.unk_id = index["[UNK]"]
    self._tokenizer = None

  @property
  def vocab_size(self) -> int:
    return len(self.tokens)

  def encode(self, text: str) -> List[int]:
    """A text -> its WordPiece ids, without [CLS]/[SEP]."""
    return self._hf_tokenizer().encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    """Ids -> text; [PAD], [CLS] and [SEP] are dropped."""
    ids = [int(i) for i in ids if i not in (0, self.cls_id, self.sep_id)]
    return self._hf_tokenizer().decode(ids)

  def encode_batch(self, texts: Sequence[str], length: int) -> np.ndarray:
    """Texts -> int32 [len(texts), length]: [CLS] pieces (truncated) [SEP], then [PAD]."""
    if length < 2:
      raise ValueError(f"text length {length} leaves no room for [CLS] and [SEP]")
    out = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"text {row} is a {type(text).__name__}, not a str")
      ids = [self.cls_id] + self.encode(text)[:length - 2] + [self.sep_id]
      out[row, :len(ids)] = ids
    return out

  def _hf_tokenizer(self):
    """Hugging Face `tokenizers`, built on first use."""
    if self._tokenizer is None:
      import tokenizers  # pylint: disable=g-import-not-at-top
      json_path = os.path.join(self.folder, TOKENIZER_FILE)
      if os.path.isfile(json_path):
        self._tokenizer = tokenizers.Tokenizer.from_file(json_path)
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
      else:
        self._tokenizer = tokenizers.BertWordPieceTokenizer(
            os.path.join(self.folder, VOCAB_FILE), lowercase=self.lower_case)
    return self._tokenizer
