"""Tiny, untrained tokenizers for the tokenize job's tests (and a job runner for the
subprocess that a test kills)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from musiclm_jax.mulan import tokenizer as mulan_tokenizer
from musiclm_jax.soundstream import codec as codec_lib
from musiclm_jax import audio_tokenizers
from musiclm_jax.tasks import tokenize_job
from musiclm_jax.training import partitioning
from musiclm_jax.w2v_bert import tokenizer as semantic_tokenizer
from tests import mulan_fixtures, soundstream_fixtures, w2v_bert_fixtures

DATASET = "music_captions/tiny_16khz"


@functools.lru_cache(maxsize=None)
def tiny_tokenizers() -> audio_tokenizers.Tokenizers:
  """Deterministic (seeded) tiny codec, semantic and MuLan tokenizers (built once per
  process; treat as read-only)."""
  # Initialised under jit: one program (which the tests' persistent compilation cache keeps
  # for the job's subprocesses) instead of hundreds of eager ops.
  options = partitioning.run_once_compiler_options(jax.default_backend())
  ss_model = soundstream_fixtures.tiny_model()
  ss_vars = nn.meta.unbox(jax.jit(lambda rng: ss_model.get_initial_variables(
      rng, {"audio": (1, 3200)}), compiler_options=options)(jax.random.key(0)))
  codec = codec_lib.Codec.from_train_state(ss_model.config, ss_vars["params"], ss_vars)
  semantic = semantic_tokenizer.SemanticTokenizer(
      w2v_bert_fixtures.tiny_config(), w2v_bert_fixtures.tiny_params(), 1,
      np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32))
  mulan_model = mulan_fixtures.tiny_model()
  mulan_params = nn.meta.unbox(jax.jit(lambda rng: mulan_model.get_initial_variables(
      rng, {"audio": (1, 16000), "text_tokens": (1, 16)})["params"],
      compiler_options=options)(jax.random.key(0)))
  mulan = mulan_tokenizer.MuLanTokenizer(
      mulan_model.config, mulan_params,
      np.random.default_rng(1).normal(size=(4, 16, 16)).astype(np.float32))
  return audio_tokenizers.Tokenizers(codec, semantic, mulan)


def run_job(out_dir: str, data_dir: str, num_shards: int, process_index: int = 0,
            process_count: int = 1) -> dict:
  """The job over the validation split: this process's share of num_shards."""
  return tokenize_job.run(tiny_tokenizers(), DATASET, data_dir, ["validation"], out_dir,
                          num_shards, process_index, process_count, show_progress=False)
