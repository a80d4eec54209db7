"""MusicLM's three stages train from token shards: the tokenize job's output (tiny untrained
tokenizers over the rendered captioned set) through `python -m musiclm_jax.train` with the
stage gin files, at the tiny LM size."""

import json
import os

import numpy as np
import pytest

from musiclm_jax.tasks import builders, stages, tokenize_job
from musiclm_jax.training import metrics
from tests import harness, tokenize_fixtures

CROP_SECONDS = 0.2   # 5 semantic tokens, 80 acoustic frames of the tiny 400 Hz codec
COARSE_LEVELS = 2


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("stage_tokens")
  data_dir = str(root / "tfds")
  builders.build("music_captions", data_dir, "tiny_16khz")
  out = str(root / "tokens")
  tokenize_job.run(tokenize_fixtures.tiny_tokenizers(), tokenize_fixtures.DATASET, data_dir,
                   ["train", "validation"], out, 2, show_progress=False)
  return out


@pytest.mark.parametrize("stage", stages.STAGES)
def test_each_stage_trains_from_token_shards(stage, tokens_dir, tmp_path):
  with open(os.path.join(tokens_dir, "layout.json"), encoding="utf-8") as f:
    fields = json.load(f)
  layout = stages.TokenLayout(**fields, coarse_levels=COARSE_LEVELS)
  prefix_len, target_len = layout.lengths(stage, CROP_SECONDS)
  prefix_vocab, target_vocab = layout.vocab_sizes(stage)
  bindings = [f"TOKENS_DIR='{tokens_dir}'",
              f"TASK_FEATURE_LENGTHS={{'prefix_tokens': {prefix_len}, 'targets': {target_len}}}",
              f"PREFIX_VOCAB_SIZE={prefix_vocab}", f"TARGET_VOCAB_SIZE={target_vocab}",
              f"{stage}/register_stage_task.crop_seconds={CROP_SECONDS}",
              "DecoderConfig.max_length=512", "BATCH_SIZE=4", "train.eval_period=3",
              "eval/DatasetConfig.batch_size=2"]
  bindings += [f"TokenLayout.{k}={v}" for k, v in fields.items()]
  bindings.append(f"TokenLayout.coarse_levels={COARSE_LEVELS}")
  model_dir = str(tmp_path / stage)
  harness.run_train(model_dir, 3, bindings=bindings,
                    gin_files=("lm/tiny.gin", f"tasks/stage_{stage}.gin", "runs/pretrain.gin"))
  records = metrics.read_metrics(model_dir, "train")
  assert [r["step"] for r in records] == [1, 2, 3]
  losses = [r["loss"] for r in records]
  assert all(np.isfinite(losses))
  # An untrained model is near-uniform over the padded target vocabulary.
  assert losses[0] > 0.5 * np.log(target_vocab)
  assert metrics.read_metrics(model_dir, "eval")[-1]["step"] == 3
