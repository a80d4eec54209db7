"""Feature converters: task features -> the decoder-only LM's model features.

Task features:  'prefix_tokens' [P] (conditioning, fixed length), 'targets' [<= T].
Model features: 'prefix_tokens' [P], 'decoder_input_tokens' [T] (targets shifted right with
BOS), 'decoder_target_tokens' [T], 'decoder_loss_weights' [T] (1 on real targets, 0 on
padding).

Unlike seqio's converters, padding is not inferred from token id 0: codec and semantic
tokens use every id, 0 included, so the weights are computed before padding. BOS is an id
outside the target vocabulary (`bos_id = target_vocab_size`), so no code is reserved.
"""

from __future__ import annotations

from typing import Mapping

import gin
import seqio
import tensorflow as tf

FeatureSpec = seqio.FeatureConverter.FeatureSpec


def _shift_right(targets: tf.Tensor, bos_id: int) -> tf.Tensor:
  return tf.concat([tf.constant([bos_id], targets.dtype), targets[:-1]], axis=0)


@gin.configurable
class PrefixLMFeatureConverter(seqio.FeatureConverter):
  """Conditioning prefix + autoregressive targets; loss on the targets only."""

  TASK_FEATURES = {"prefix_tokens": FeatureSpec(dtype=tf.int32),
                   "targets": FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {"prefix_tokens": FeatureSpec(dtype=tf.int32),
                    "decoder_input_tokens": FeatureSpec(dtype=tf.int32),
                    "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
                    "decoder_loss_weights": FeatureSpec(dtype=tf.float32)}
  PACKING_FEATURE_DTYPES = None

  def __init__(self, bos_id: int, pack: bool = False, **kwargs):
    if pack:
      raise ValueError("Packing is not supported: MusicLM stages train on fixed crops.")
    super().__init__(pack=False, bos_id=bos_id, **kwargs)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    has_prefix = "prefix_tokens" in self.TASK_FEATURES
    prefix_length = task_feature_lengths.get("prefix_tokens", 0)
    target_length = task_feature_lengths["targets"]

    def add_weights(ex):
      out = {"targets": ex["targets"],
             "weights": tf.ones_like(ex["targets"], tf.float32)}
      if has_prefix:
        tf.debugging.assert_equal(
            tf.shape(ex["prefix_tokens"])[0], prefix_length,
            message=f"prefix_tokens must have exactly {prefix_length} tokens (fixed-length "
                    "conditioning); check the task's preprocessors")
        out["prefix_tokens"] = ex["prefix_tokens"]
      return out

    ds = ds.map(add_weights, num_parallel_calls=tf.data.AUTOTUNE)
    lengths = {"targets": target_length, "weights": target_length}
    if has_prefix:
      lengths["prefix_tokens"] = prefix_length
    ds = seqio.utils.trim_and_pad_dataset(ds, lengths)

    def to_model_features(ex):
      out = {"decoder_input_tokens": _shift_right(ex["targets"], self.bos_id),
             "decoder_target_tokens": ex["targets"],
             "decoder_loss_weights": ex["weights"]}
      if has_prefix:
        out["prefix_tokens"] = ex["prefix_tokens"]
      return out

    return ds.map(to_model_features, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]):
    length = task_feature_lengths["targets"]
    out = {"decoder_input_tokens": length, "decoder_target_tokens": length,
           "decoder_loss_weights": length}
    if "prefix_tokens" in self.TASK_FEATURES:
      out["prefix_tokens"] = task_feature_lengths["prefix_tokens"]
    return out


@gin.configurable
class UnconditionalLMFeatureConverter(PrefixLMFeatureConverter):
  """Targets only (no conditioning prefix)."""

  TASK_FEATURES = {"targets": FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {k: v for k, v in PrefixLMFeatureConverter.MODEL_FEATURES.items()
                    if k != "prefix_tokens"}
