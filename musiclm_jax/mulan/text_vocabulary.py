"""The caption tasks' `seqio.Vocabulary`: BERT WordPiece in the tf.data pipeline.

`BertVocabulary` tokenizes in TensorFlow with `tensorflow_text.BertTokenizer` over the same
vocabulary as `text_tokenizer.BertTokenizer` (which it uses for seqio's Python `encode` and
`decode`), so captions tokenized by a SeqIO task at training time and prompts tokenized at
generation time give the same ids (tested).
"""

from __future__ import annotations

from typing import Optional, Sequence

import seqio
import tensorflow as tf

from musiclm_jax.mulan import text_tokenizer


def _lower_and_strip_accents_tf(texts: tf.Tensor) -> tf.Tensor:
  """Hugging Face's uncased BERT normalisation: str.lower(), NFD, drop combining marks."""
  import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
  texts = tf_text.normalize_utf8(tf.strings.lower(texts, encoding="utf-8"), "NFD")
  return tf.strings.regex_replace(texts, r"\p{Mn}", "")


class BertVocabulary(seqio.Vocabulary):
  """WordPiece vocabulary of a BERT folder. encode()/encode_tf() give the pieces without
  [CLS]/[SEP]; `add_special_tokens_tf` makes a model input (the feature converter pads)."""

  def __init__(self, folder: str):
    super().__init__(extra_ids=0)
    self.tokenizer = text_tokenizer.BertTokenizer(folder)
    self._tf_tokenizer = None

  @property
  def cls_id(self) -> int:
    return self.tokenizer.cls_id

  @property
  def sep_id(self) -> int:
    return self.tokenizer.sep_id

  # ---- seqio.Vocabulary ------------------------------------------------------------------

  @property
  def eos_id(self) -> Optional[int]:
    return None  # [SEP] is added explicitly, never by seqio's add_eos.

  @property
  def unk_id(self) -> Optional[int]:
    return self.tokenizer.unk_id

  @property
  def _base_vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def _encode(self, s: str) -> Sequence[int]:
    return self.tokenizer.encode(s)

  def _decode(self, ids) -> str:
    return self.tokenizer.decode(ids)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32 [pieces] (a batch of strings -> ragged [batch, pieces])."""
    texts = tf.reshape(s, [-1])
    if self.tokenizer.lower_case:
      texts = _lower_and_strip_accents_tf(texts)
    pieces = self._tensorflow_tokenizer().tokenize(texts)  # [n, words, pieces]
    pieces = pieces.merge_dims(-2, -1)
    return pieces[0] if s.shape.rank == 0 else pieces

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    words = self._tensorflow_tokenizer().detokenize(tf.reshape(ids, [1, -1]))
    return tf.strings.reduce_join(words, separator=" ", axis=-1)[0]

  # ---- model inputs ----------------------------------------------------------------------

  def add_special_tokens_tf(self, pieces: tf.Tensor, length: int) -> tf.Tensor:
    """int32 [pieces] -> [CLS] pieces[:length - 2] [SEP] (unpadded; the feature converter
    pads)."""
    pieces = tf.cast(pieces[:length - 2], tf.int32)
    return tf.concat([[self.cls_id], pieces, [self.sep_id]], axis=0)

  def _tensorflow_tokenizer(self):
    if self._tf_tokenizer is None:
      import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
      with tf.init_scope():  # an eager table, usable from every tf.data function graph
        table = tf.lookup.StaticVocabularyTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.tokenizer.tokens),
                tf.range(self.tokenizer.vocab_size, dtype=tf.int64)),
            num_oov_buckets=1)
        # Lower-casing is done by `_lower_and_strip_accents_tf`: tf_text's own lower_case
        # case-folds (ß -> ss), which Hugging Face's BERT normaliser does not.
        self._tf_tokenizer = tf_text.BertTokenizer(
            table, token_out_type=tf.int32, lower_case=False, unknown_token="[UNK]")
    return self._tf_tokenizer

  def __eq__(self, other):
    return isinstance(other, BertVocabulary) and (
        self.tokenizer.tokens == other.tokenizer.tokens
        and self.tokenizer.lower_case == other.tokenizer.lower_case)

  def __hash__(self):
    return hash((self.tokenizer.vocab_size, self.tokenizer.lower_case))
