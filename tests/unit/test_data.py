"""SeqIO glue: feature conversion, host sharding, resumable iteration."""

import subprocess
import sys

import numpy as np
import pytest

from musiclm_jax.tasks import feature_converters, synthetic
from musiclm_jax.training import data as data_lib

LENGTHS = {"prefix_tokens": 3, "targets": 16}


def _config(**kw):
  base = dict(mixture_or_task_name="synthetic_arpeggios", task_feature_lengths=LENGTHS,
              split="train", batch_size=8, shuffle=True, seed=3)
  base.update(kw)
  return data_lib.DatasetConfig(**base)


def _converter():
  return feature_converters.PrefixLMFeatureConverter(bos_id=synthetic.TARGET_VOCAB_SIZE)


def _take(ds, n):
  return list(ds.take(n).as_numpy_iterator())


def test_prefix_lm_features():
  batch = _take(data_lib.get_dataset(_config(), _converter(), 0, 1), 1)[0]
  assert batch["prefix_tokens"].shape == (8, 3)
  assert batch["decoder_target_tokens"].shape == (8, 16)
  assert batch["decoder_input_tokens"].dtype == np.int32
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], synthetic.TARGET_VOCAB_SIZE)
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:],
                                batch["decoder_target_tokens"][:, :-1])
  np.testing.assert_array_equal(batch["decoder_loss_weights"], 1.0)
  np.testing.assert_array_equal(batch["decoder_target_tokens"],
                                synthetic.expected_targets(batch["prefix_tokens"], 16))


def test_short_targets_are_padded_with_zero_weight():
  lengths = {"prefix_tokens": 3, "targets": 80}  # the task's targets have 64 tokens
  batch = _take(data_lib.get_dataset(_config(task_feature_lengths=lengths), _converter(),
                                     0, 1), 1)[0]
  assert batch["decoder_loss_weights"][:, :64].min() == 1.0
  assert batch["decoder_loss_weights"][:, 64:].max() == 0.0


def test_global_batches_do_not_depend_on_the_host_count():
  one_host = _take(data_lib.get_dataset(_config(num_data_shards=2), _converter(), 0, 1), 3)
  hosts = [_take(data_lib.get_dataset(_config(num_data_shards=2), _converter(), p, 2), 3)
           for p in range(2)]
  for step in range(3):
    joined = np.concatenate([hosts[0][step]["prefix_tokens"], hosts[1][step]["prefix_tokens"]])
    np.testing.assert_array_equal(joined, one_host[step]["prefix_tokens"])


def test_data_iterator_resumes_at_the_same_batch():
  make = lambda: data_lib.get_dataset(_config(), _converter(), 0, 1)
  reference = data_lib.DataIterator(make)
  expected = [next(reference)["prefix_tokens"] for _ in range(6)]
  first = data_lib.DataIterator(make)
  for _ in range(4):
    next(first)
  resumed = data_lib.DataIterator(make)
  resumed.set_state(first.get_state())
  np.testing.assert_array_equal(next(resumed)["prefix_tokens"], expected[4])
  np.testing.assert_array_equal(next(resumed)["prefix_tokens"], expected[5])


def test_bad_dataset_configs_are_clear_errors():
  with pytest.raises(ValueError, match="no_such_task"):
    data_lib.get_dataset(_config(mixture_or_task_name="no_such_task"), _converter(), 0, 1)
  with pytest.raises(ValueError, match="not divisible"):
    data_lib.get_dataset(_config(batch_size=6, num_data_shards=4), _converter(), 0, 1)


def test_tensorflow_is_kept_off_gpus_before_and_after_it_starts():
  """The entry points hide GPUs from TensorFlow before its first op (so it cannot reserve
  the memory JAX needs); called again once TF has started, it neither raises nor warns
  when nothing is visible. A fresh interpreter: this one's TF has long started."""
  code = ("import tensorflow as tf\n"
          "from musiclm_jax.training import data\n"
          "data.hide_gpus_from_tensorflow()\n"
          "assert tf.config.get_visible_devices('GPU') == []\n"
          "assert int(tf.constant(2) + 1) == 3\n"
          "data.hide_gpus_from_tensorflow()\n"
          "assert tf.config.get_visible_devices('GPU') == []\n"
          "print('ok')\n")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == "ok"
  assert "may hold GPU memory" not in done.stderr
