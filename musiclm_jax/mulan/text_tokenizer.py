"""BERT WordPiece tokenization of captions, identical in Python and in the tf.data pipeline.

`BertVocabulary` is a `seqio.Vocabulary`: Python encoding uses Hugging Face `tokenizers`
(from `tokenizer.json`, or `vocab.txt`), the TensorFlow side `tensorflow_text.BertTokenizer`
over the same vocabulary, so captions tokenized by a SeqIO task at training time and prompts
tokenized at generation time give the same ids (tested). Model inputs are
`[CLS] pieces... [SEP]` right-padded with [PAD] (id 0) to a fixed length.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

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


def _lower_and_strip_accents_tf(texts: tf.Tensor) -> tf.Tensor:
  """Hugging Face's uncased BERT normalisation: str.lower(), NFD, drop combining marks."""
  import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
  texts = tf_text.normalize_utf8(tf.strings.lower(texts, encoding="utf-8"), "NFD")
  return tf.strings.regex_replace(texts, r"\p{Mn}", "")


class BertVocabulary(seqio.Vocabulary):
  """WordPiece vocabulary of a BERT folder. encode()/encode_tf() give the pieces without
  [CLS]/[SEP]; `encode_batch` and `add_special_tokens_tf` make model inputs."""

  def __init__(self, folder: str):
    super().__init__(extra_ids=0)
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
    self._unk_id = index["[UNK]"]
    self._py_tokenizer = None
    self._tf_tokenizer = None

  # ---- seqio.Vocabulary ------------------------------------------------------------------

  @property
  def eos_id(self) -> Optional[int]:
    return None  # [SEP] is added explicitly, never by seqio's add_eos.

  @property
  def unk_id(self) -> Optional[int]:
    return self._unk_id

  @property
  def _base_vocab_size(self) -> int:
    return len(self.tokens)

  def _encode(self, s: str) -> Sequence[int]:
    return self._python_tokenizer().encode(s, add_special_tokens=False).ids

  def _decode(self, ids) -> str:
    ids = [i for i in ids if i not in (0, self.cls_id, self.sep_id)]
    return self._python_tokenizer().decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32 [pieces] (a batch of strings -> ragged [batch, pieces])."""
    texts = tf.reshape(s, [-1])
    if self.lower_case:
      texts = _lower_and_strip_accents_tf(texts)
    pieces = self._tensorflow_tokenizer().tokenize(texts)  # [n, words, pieces]
    pieces = pieces.merge_dims(-2, -1)
    return pieces[0] if s.shape.rank == 0 else pieces

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    words = self._tensorflow_tokenizer().detokenize(tf.reshape(ids, [1, -1]))
    return tf.strings.reduce_join(words, separator=" ", axis=-1)[0]

  # ---- model inputs ----------------------------------------------------------------------

  def encode_batch(self, texts: Sequence[str], length: int) -> np.ndarray:
    """Texts -> int32 [len(texts), length]: [CLS] pieces (truncated) [SEP], then [PAD]."""
    if length < 2:
      raise ValueError(f"text length {length} leaves no room for [CLS] and [SEP]")
    out = np.zeros((len(texts), length), np.int32)
    for row, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"text {row} is a {type(text).__name__}, not a str")
      ids = [self.cls_id] + list(self.encode(text))[:length - 2] + [self.sep_id]
      out[row, :len(ids)] = ids
    return out

  def add_special_tokens_tf(self, pieces: tf.Tensor, length: int) -> tf.Tensor:
    """int32 [pieces] -> [CLS] pieces[:length - 2] [SEP] (unpadded; the feature converter
    pads)."""
    pieces = tf.cast(pieces[:length - 2], tf.int32)
    return tf.concat([[self.cls_id], pieces, [self.sep_id]], axis=0)

  # ---- the two backends, built on first use ---------------------------------------------

  def _python_tokenizer(self):
    if self._py_tokenizer is None:
      import tokenizers  # pylint: disable=g-import-not-at-top
      json_path = os.path.join(self.folder, TOKENIZER_FILE)
      if os.path.isfile(json_path):
        self._py_tokenizer = tokenizers.Tokenizer.from_file(json_path)
        self._py_tokenizer.no_truncation()
        self._py_tokenizer.no_padding()
      else:
        self._py_tokenizer = tokenizers.BertWordPieceTokenizer(
            os.path.join(self.folder, VOCAB_FILE), lowercase=self.lower_case)
    return self._py_tokenizer

  def _tensorflow_tokenizer(self):
    if self._tf_tokenizer is None:
      import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
      with tf.init_scope():  # an eager table, usable from every tf.data function graph
        self._tf_tokenizer = self._build_tf_tokenizer(tf_text)
    return self._tf_tokenizer

  def _build_tf_tokenizer(self, tf_text):
    table = tf.lookup.StaticVocabularyTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(self.tokens), tf.range(len(self.tokens), dtype=tf.int64)),
        num_oov_buckets=1)
    # Lower-casing is done by `_lower_and_strip_accents_tf`: tf_text's own lower_case
    # case-folds (ß -> ss), which Hugging Face's BERT normaliser does not.
    return tf_text.BertTokenizer(
        table, token_out_type=tf.int32, lower_case=False, unknown_token="[UNK]")

  def __eq__(self, other):
    return isinstance(other, BertVocabulary) and self.tokens == other.tokens and (
        self.lower_case == other.lower_case)

  def __hash__(self):
    return hash((len(self.tokens), self.lower_case))
