"""The tokenize job: token shards of a TFDS split from the three frozen tokenizers (tiny,
untrained ones: the job's contract does not depend on their quality), per-process sharding,
atomic shards, resuming, skipped-clip counts, and the stage tasks reading the result."""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow as tf

from musiclm_jax.mulan import tokenizer as mulan_tokenizer
from musiclm_jax.soundstream import codec as codec_lib
from musiclm_jax.tasks import builders, stages, tokenize_job
from musiclm_jax.w2v_bert import tokenizer as semantic_tokenizer
from tests import mulan_fixtures, soundstream_fixtures, w2v_bert_fixtures

DATASET = "music_captions/tiny_16khz"
SHARDS = 4


@pytest.fixture(scope="module")
def tokenizers():
  ss_model = soundstream_fixtures.tiny_model()
  ss_vars = ss_model.get_initial_variables(jax.random.key(0), {"audio": (1, 3200)})
  ss_vars = nn.meta.unbox(ss_vars)
  codec = codec_lib.Codec.from_train_state(ss_model.config, ss_vars["params"], ss_vars)
  semantic = semantic_tokenizer.SemanticTokenizer(
      w2v_bert_fixtures.tiny_config(), w2v_bert_fixtures.tiny_params(), 1,
      np.random.default_rng(0).normal(size=(16, 32)).astype(np.float32))
  mulan_model = mulan_fixtures.tiny_model()
  mulan_params = nn.meta.unbox(mulan_model.get_initial_variables(
      jax.random.key(0), {"audio": (1, 16000), "text_tokens": (1, 16)})["params"])
  mulan = mulan_tokenizer.MuLanTokenizer(
      mulan_model.config, mulan_params,
      np.random.default_rng(1).normal(size=(4, 16, 16)).astype(np.float32))
  return tokenize_job.Tokenizers(codec, semantic, mulan)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tokenize_data"))
  builders.build("music_captions", path, "tiny_16khz")
  return path


def _read(path):
  return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def test_two_processes_write_disjoint_shards_that_cover_the_split(tokenizers, data_dir,
                                                                  tmp_path):
  out = str(tmp_path / "tokens")
  summaries = [tokenize_job.run(tokenizers, DATASET, data_dir, ["train", "validation"], out,
                                SHARDS, process_index=p, process_count=2,
                                show_progress=False) for p in (0, 1)]
  files = sorted(f for f in os.listdir(out) if f.endswith(".tfrecord"))
  assert files == sorted(f"{s}-{i:05d}-of-{SHARDS:05d}.tfrecord"
                         for s in ("train", "validation") for i in range(SHARDS))
  assert [s["written_now"] for s in summaries] == [4, 4]
  ids = []
  for f in files:
    records = _read(os.path.join(out, f))
    counts = json.load(open(os.path.join(out, f + ".json")))
    assert counts["examples"] == len(records)
    ids += [r.features.feature["id"].bytes_list.value[0].decode() for r in records]
  import tensorflow_datasets as tfds
  expected = [ex["id"].decode() for split in ("train", "validation")
              for ex in tfds.load(DATASET, split=split, data_dir=data_dir).as_numpy_iterator()]
  assert sorted(ids) == sorted(expected) and len(set(ids)) == len(ids)
  # Streams are aligned (acoustic frames = semantic frames x the rate ratio) and in range.
  layout = json.load(open(os.path.join(out, "layout.json")))
  assert layout == tokenizers.layout()
  ratio = layout["acoustic_rate"] // layout["semantic_rate"]   # tiny codec: 400 Hz / 25 Hz
  example = _read(os.path.join(out, files[0]))[0].features.feature
  semantic = np.array(example["semantic_tokens"].int64_list.value)
  acoustic = np.array(example["acoustic_tokens"].int64_list.value).reshape(
      -1, layout["acoustic_levels"])
  mulan = np.array(example["mulan_tokens"].int64_list.value)
  assert len(semantic) == 4 * 25 and acoustic.shape[0] == len(semantic) * ratio
  assert mulan.shape == (layout["mulan_levels"],)
  assert semantic.max() < layout["semantic_codes"] and mulan.max() < layout["mulan_codes"]
  assert acoustic.max() < layout["acoustic_codes"]
  assert example["caption"].bytes_list.value[0]


def test_rerun_skips_finished_shards_and_redoes_broken_ones(tokenizers, data_dir, tmp_path):
  out = str(tmp_path / "tokens")
  tokenize_job.run(tokenizers, DATASET, data_dir, ["train"], out, SHARDS, show_progress=False)
  paths = [tokenize_job.shard_path(out, "train", i, SHARDS) for i in range(SHARDS)]
  mtimes = [os.path.getmtime(p) for p in paths]
  # A killed run: shard 1 never got its .json, shard 2 only a partial temporary file.
  os.remove(paths[1] + ".json")
  os.remove(paths[2])
  os.remove(paths[2] + ".json")
  stale = os.path.join(out, f".tmp-{os.path.basename(paths[2])}-abc123")
  open(stale, "wb").write(b"partial")
  summary = tokenize_job.run(tokenizers, DATASET, data_dir, ["train"], out, SHARDS,
                             show_progress=False)
  assert summary["written_now"] == 2 and summary["already_done"] == 2
  assert not os.path.exists(stale)
  assert os.path.getmtime(paths[0]) == mtimes[0] and os.path.getmtime(paths[3]) == mtimes[3]
  assert all(os.path.exists(p + ".json") for p in paths)
  # Other tokenizers into the same folder: refused.
  other = tokenize_job.Tokenizers(tokenizers.codec, tokenizers.semantic, tokenizers.mulan)
  other.mulan = mulan_tokenizer.MuLanTokenizer(
      tokenizers.mulan.config, tokenizers.mulan.params, np.zeros((2, 8, 16), np.float32))
  with pytest.raises(ValueError, match="layout.json records other tokenizers"):
    tokenize_job.run(other, DATASET, data_dir, ["train"], out, SHARDS, show_progress=False)


def test_unusable_clips_are_skipped_and_counted(tokenizers, data_dir, tmp_path):
  summary = tokenize_job.run(tokenizers, DATASET, data_dir, ["test"], str(tmp_path / "t"), 1,
                             min_seconds=5.0, show_progress=False)
  # Every tiny clip lasts 4 s: all too short for a 5 s minimum, none written, none crash.
  assert summary["examples"] == 0 and summary["skipped"]["too_short"] > 0


def test_stage_tasks_read_the_shards(tokenizers, data_dir, tmp_path):
  from musiclm_jax.training import data as data_lib
  out = str(tmp_path / "tokens")
  tokenize_job.run(tokenizers, DATASET, data_dir, ["train", "validation"], out, 2,
                   show_progress=False)
  layout = stages.TokenLayout(**json.load(open(os.path.join(out, "layout.json"))),
                              coarse_levels=2)
  name = stages.register_stage_task("tokenize_job_coarse", "coarse", crop_seconds=2.0,
                                    layout=layout, tokens_dir=out)
  prefix, targets = layout.lengths("coarse", 2.0)
  config = data_lib.DatasetConfig(
      mixture_or_task_name=name, task_feature_lengths={"prefix_tokens": prefix,
                                                       "targets": targets},
      split="train", batch_size=2, shuffle=False, seed=0, num_epochs=1)
  from musiclm_jax.tasks import feature_converters
  ds = data_lib.get_dataset(config, feature_converters.PrefixLMFeatureConverter(bos_id=0),
                            0, 1)
  batch = next(ds.as_numpy_iterator())
  assert batch["prefix_tokens"].shape == (2, prefix)
  assert batch["decoder_target_tokens"].shape == (2, targets)
  prefix_vocab, target_vocab = layout.vocab_sizes("coarse")
  assert batch["prefix_tokens"].max() < prefix_vocab
  assert batch["decoder_target_tokens"].max() < target_vocab


def test_cli_reports_bad_arguments(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    tokenize_job.main(["--dataset", DATASET, "--out", str(tmp_path), "--codec",
                       str(tmp_path / "missing"), "--semantic_model_dir", "x",
                       "--centroids", "y", "--mulan_model_dir", "z", "--mulan_rvq", "w"])
  assert e.value.code == 2 and "missing" in capsys.readouterr().err
