"""Token shards -> the three stages' SeqIO tasks: alignment, offsets, shapes, hosts."""

import os

import numpy as np
import pytest
import tensorflow as tf

from musiclm_jax.tasks import feature_converters, stages
from musiclm_jax.training import data as data_lib

LAYOUT = stages.TokenLayout(mulan_levels=3, mulan_codes=16, semantic_codes=64,
                            semantic_rate=25, acoustic_levels=6, acoustic_codes=32,
                            acoustic_rate=50, coarse_levels=2)
CROP_SECONDS = 0.4  # 10 semantic frames, 20 acoustic frames


def clip_tokens(index: int, seconds: float):
  """Streams whose values encode time, so the test can check the crops line up:
  semantic frame f holds f; acoustic frame a, level q holds (a // 2) + q."""
  semantic = np.arange(int(seconds * 25)) % LAYOUT.semantic_codes
  frames = int(seconds * 50)
  acoustic = ((np.arange(frames)[:, None] // 2 + np.arange(6)[None]) % LAYOUT.acoustic_codes)
  mulan = (np.arange(3) + index) % LAYOUT.mulan_codes
  return mulan, semantic, acoustic


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokens")
  lengths = [1.0, 2.0, 0.2, 1.5, 0.8, 3.0, 1.2, 0.9]  # 0.2 s is shorter than a crop
  for shard in range(2):
    examples = [stages.token_example(f"clip{i}", *clip_tokens(i, lengths[i]),
                                     caption=f"caption {i}")
                for i in range(shard * 4, shard * 4 + 4)]
    assert stages.write_token_shard(str(root / f"train-{shard}.tfrecord"), examples) == 4
  return str(root / "train-*.tfrecord")


def _batches(pattern, stage, batch_size=2, process_count=1, process_index=0):
  name = stages.register_stage_task(f"test_{stage}", stage, {"train": pattern}, CROP_SECONDS,
                                    layout=LAYOUT)
  prefix_len, target_len = LAYOUT.lengths(stage, CROP_SECONDS)
  cfg = data_lib.DatasetConfig(name, {"prefix_tokens": prefix_len, "targets": target_len},
                               "train", batch_size, shuffle=False, num_epochs=1, seed=3,
                               num_data_shards=process_count)
  converter = feature_converters.PrefixLMFeatureConverter(
      bos_id=LAYOUT.vocab_sizes(stage)[1])
  ds = data_lib.get_dataset(cfg, converter, process_index, process_count)
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("stage", stages.STAGES)
def test_stage_batches_have_the_documented_shapes_and_vocabularies(shards, stage):
  batches = _batches(shards, stage, batch_size=1)
  prefix_len, target_len = LAYOUT.lengths(stage, CROP_SECONDS)
  prefix_vocab, target_vocab = LAYOUT.vocab_sizes(stage)
  assert sum(b["prefix_tokens"].shape[0] for b in batches) == 7  # the 0.2 s clip is dropped
  for b in batches:
    assert b["prefix_tokens"].shape[1:] == (prefix_len,)
    assert b["decoder_target_tokens"].shape[1:] == (target_len,)
    assert b["prefix_tokens"].dtype == np.int32
    assert 0 <= b["prefix_tokens"].min() and b["prefix_tokens"].max() < prefix_vocab
    assert 0 <= b["decoder_target_tokens"].min()
    assert b["decoder_target_tokens"].max() < target_vocab
    assert np.all(b["decoder_loss_weights"] == 1)


def test_crops_keep_semantic_and_acoustic_time_aligned(shards):
  for b in _batches(shards, "coarse"):
    semantic = b["prefix_tokens"][:, LAYOUT.mulan_levels:] - LAYOUT.mulan_levels * 16
    coarse = b["decoder_target_tokens"].reshape(b["prefix_tokens"].shape[0], -1, 2)
    level0 = coarse[..., 0]                   # offset 0
    level1 = coarse[..., 1] - LAYOUT.acoustic_codes
    # Acoustic frames 2f and 2f+1 belong to semantic frame f; level q holds f + q
    # (modulo the acoustic codebook size, as the fixture wrote them).
    codes = LAYOUT.acoustic_codes
    np.testing.assert_array_equal(level0[:, ::2], semantic % codes)
    np.testing.assert_array_equal(level0[:, 1::2], semantic % codes)
    np.testing.assert_array_equal(level1[:, ::2], (semantic + 1) % codes)
  for b in _batches(shards, "fine"):
    coarse = b["prefix_tokens"].reshape(b["prefix_tokens"].shape[0], -1, 2)
    fine = b["decoder_target_tokens"].reshape(coarse.shape[0], -1, 4)
    # Fine level q (2..5) is offset by (q - 2) * codes and holds coarse level 0 + q.
    for q in range(4):
      np.testing.assert_array_equal(fine[..., q] - q * LAYOUT.acoustic_codes,
                                    (coarse[..., 0] + q + 2) % LAYOUT.acoustic_codes)


def test_two_hosts_read_disjoint_halves(shards):
  seen = []
  for host in range(2):
    ids = set()
    for b in _batches(shards, "semantic", batch_size=2, process_count=2, process_index=host):
      ids.add(tuple(b["prefix_tokens"][0]))
    seen.append(ids)
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == 7


def test_shard_writing_is_atomic(tmp_path):
  def examples():
    yield stages.token_example("a", *clip_tokens(0, 1.0))
    raise RuntimeError("killed mid-shard")
  path = str(tmp_path / "train-0.tfrecord")
  with pytest.raises(RuntimeError):
    stages.write_token_shard(path, examples())
  assert os.listdir(tmp_path) == []
  with pytest.raises(ValueError, match="frames, levels"):
    stages.token_example("bad", [1], [1], [1, 2, 3])


def test_layout_checks():
  with pytest.raises(ValueError, match="multiple"):
    stages.TokenLayout(semantic_rate=30)
  with pytest.raises(ValueError, match="coarse_levels"):
    stages.TokenLayout(coarse_levels=12)
  assert stages.TokenLayout().lengths("coarse", 10) == (12 + 250, 2000)


def test_gin_stage_files_match_the_layout():
  """The lengths and vocabularies written in gin/tasks/stage_*.gin are the layout's."""
  import re
  from tests import harness
  layout = stages.TokenLayout()
  for stage in stages.STAGES:
    text = open(os.path.join(harness.REPO, "gin", "tasks", f"stage_{stage}.gin")).read()
    crop = float(re.search(r"crop_seconds = ([\d.]+)", text).group(1))
    prefix_len, target_len = layout.lengths(stage, crop)
    assert f"{{'prefix_tokens': {prefix_len}, 'targets': {target_len}}}" in text, stage
    prefix_vocab, target_vocab = layout.vocab_sizes(stage)
    assert f"PREFIX_VOCAB_SIZE = {prefix_vocab}" in text and \
        f"TARGET_VOCAB_SIZE = {target_vocab}" in text, stage


def test_a_stage_lm_trains_on_token_shards(tmp_path):
  """The real entry point: tiny LM + stage task from a tokens dir; the loss goes down."""
  import subprocess
  import sys
  from tests import harness
  tokens = tmp_path / "tokens"
  rng = np.random.default_rng(0)
  examples = []
  for i in range(16):  # paper layout: 12 MuLan levels, 12 acoustic levels, 1 s clips
    mulan = rng.integers(0, 1024, 12)
    semantic = (np.arange(25) + mulan[0]) % 16  # learnable: a ramp set by the prefix
    examples.append(stages.token_example(f"c{i}", mulan, semantic,
                                         rng.integers(0, 1024, (50, 12))))
  stages.write_token_shard(str(tokens / "train-00000.tfrecord"), examples)
  model_dir = str(tmp_path / "run")
  bindings = [f"--gin.TOKENS_DIR='{tokens}'", f"--gin.MODEL_DIR='{model_dir}'",
              "--gin.TRAIN_STEPS=30", "--gin.BATCH_SIZE=4", "--gin.train.eval_period=0",
              "--gin.semantic/register_stage_task.splits=('train',)",
              "--gin.semantic/register_stage_task.crop_seconds=0.4",
              "--gin.TASK_FEATURE_LENGTHS={'prefix_tokens': 12, 'targets': 10}"]
  cmd = [sys.executable, "-m", "musiclm_jax.train", "--gin_file=lm/tiny.gin",
         "--gin_file=tasks/stage_semantic.gin", "--gin_file=runs/pretrain.gin", *bindings]
  result = subprocess.run(cmd, cwd=harness.REPO, env=harness.env_with_devices(1),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  losses = harness.losses(model_dir)
  assert losses[30] < losses[1]
