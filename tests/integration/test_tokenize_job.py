"""The tokenize job: token shards of a TFDS split from the three frozen tokenizers (tiny,
untrained ones: the job's contract does not depend on their quality), per-process sharding,
atomic shards, resuming, skipped-clip counts, and the stage tasks reading the result."""

import dataclasses
import json
import os

import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf

from musiclm_jax import audio_tokenizers
from musiclm_jax.audio import io as audio_io
from musiclm_jax.mulan import tokenizer as mulan_tokenizer
from musiclm_jax.soundstream import codec as codec_lib
from musiclm_jax.tasks import stages, tokenize_job
from tests import harness, tokenize_fixtures

DATASET = tokenize_fixtures.DATASET
SHARDS = 4


@pytest.fixture(scope="module")
def tokenizers():
  return tokenize_fixtures.tiny_tokenizers()


@pytest.fixture(scope="module")
def data_dir(music_captions_tiny):
  return music_captions_tiny


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
  assert json.load(open(os.path.join(out, "tokenizers.json"))) == tokenizers.fingerprints()
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
  other = audio_tokenizers.Tokenizers(tokenizers.codec, tokenizers.semantic, tokenizers.mulan)
  other.mulan = mulan_tokenizer.MuLanTokenizer(
      tokenizers.mulan.config, tokenizers.mulan.params, np.zeros((2, 8, 16), np.float32))
  with pytest.raises(ValueError, match="layout.json records other tokenizers"):
    tokenize_job.run(other, DATASET, data_dir, ["train"], out, SHARDS, show_progress=False)
  # So are shards of another count, which the stages would read beside these.
  with pytest.raises(ValueError, match="another --num_shards"):
    tokenize_job.run(tokenizers, DATASET, data_dir, ["train"], out, SHARDS + 1,
                     show_progress=False)


def test_a_retrained_tokenizer_is_refused_or_its_stale_shards_redone(tokenizers, data_dir,
                                                                     tmp_path):
  """A retrained codec has the same layout and other weights: its tokens must not be mixed
  with, or silently replaced by, the old ones."""
  run = lambda t, out, **kw: tokenize_job.run(t, DATASET, data_dir, ["validation"], out, 2,
                                              show_progress=False, **kw)
  out = str(tmp_path / "tokens")
  run(tokenizers, out)
  codec = tokenizers.codec
  retrained = audio_tokenizers.Tokenizers(
      codec_lib.Codec(codec.config, {**codec.variables, "params": jax.tree_util.tree_map(
          lambda x: x * 1.5, codec.variables["params"])}), tokenizers.semantic, tokenizers.mulan)
  assert retrained.layout() == tokenizers.layout()
  new = retrained.fingerprints()
  assert new["codec"] != tokenizers.fingerprints()["codec"] and new["semantic"] == (
      tokenizers.fingerprints()["semantic"])
  with pytest.raises(ValueError, match=r"other tokenizers \(codec weights\).*--replace_stale"):
    run(retrained, out)
  assert run(retrained, out, replace_stale=True)["written_now"] == 2
  paths = [tokenize_job.shard_path(out, "validation", i, 2) for i in range(2)]
  fresh = str(tmp_path / "fresh")
  run(retrained, fresh)
  for path in paths:
    assert json.load(open(path + ".json"))["tokenizers"] == new
    again = os.path.join(fresh, os.path.basename(path))
    assert [r.SerializeToString() for r in _read(path)] == [
        r.SerializeToString() for r in _read(again)]
  # Killed between a redone shard and its .json: the stale .json makes it redone again.
  counts = json.load(open(paths[1] + ".json"))
  json.dump({**counts, "tokenizers": tokenizers.fingerprints()}, open(paths[1] + ".json", "w"))
  with pytest.raises(ValueError, match="was made by other tokenizers"):
    run(retrained, out)
  summary = run(retrained, out, replace_stale=True)
  assert (summary["written_now"], summary["already_done"]) == (1, 1)
  # A folder from before fingerprints: kept as it was; under replace_stale, redone.
  os.remove(os.path.join(out, "tokenizers.json"))
  for path in paths:
    counts = json.load(open(path + ".json"))
    del counts["tokenizers"]
    json.dump(counts, open(path + ".json", "w"))
  assert run(retrained, out)["already_done"] == 2
  # Under replace_stale the folder gets fingerprints; killed after one shard, the other
  # (unmarked) one is no longer taken as current without replace_stale.
  counts = json.load(open(paths[1] + ".json"))
  assert run(retrained, out, replace_stale=True)["written_now"] == 2
  json.dump(counts, open(paths[1] + ".json", "w"))
  with pytest.raises(ValueError, match="not recorded"):
    run(retrained, out)
  # A truncated shard .json is named.
  open(paths[1] + ".json", "w").write('{"examples": 3')
  with pytest.raises(ValueError, match=r"validation.*\.json is not valid JSON"):
    run(retrained, out)


def test_a_killed_job_restarted_writes_what_an_uninterrupted_one_writes(data_dir, tmp_path):
  """SIGKILL a job (its own process) once its first shard is done; the restarted job keeps
  that shard, redoes the rest, and every shard equals an uninterrupted run's (this process's)
  byte for byte."""
  killed, whole = str(tmp_path / "killed"), str(tmp_path / "whole")
  worker = [sys.executable, "-c", "import sys; from tests import tokenize_fixtures as t; "
            "t.run_job(sys.argv[1], sys.argv[2], int(sys.argv[3]))"]
  env = harness.env_with_devices(1)
  proc = subprocess.Popen(worker + [killed, data_dir, "6"], cwd=harness.REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = tokenize_job.shard_path(killed, "validation", 0, 6) + ".json"
  deadline = time.time() + 300
  while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done_before = sorted(f for f in os.listdir(killed) if f.endswith(".json"))
  assert "layout.json" in done_before and len(done_before) < 1 + 6   # killed part-way
  subprocess.run(worker + [killed, data_dir, "6"], cwd=harness.REPO, env=env, check=True,
                 timeout=600, capture_output=True)
  tokenize_fixtures.run_job(whole, data_dir, 6)   # uninterrupted, in this process
  shards = sorted(f for f in os.listdir(whole) if f.endswith(".tfrecord"))
  assert len(shards) == 6
  assert sorted(f for f in os.listdir(killed) if f.endswith(".tfrecord")) == shards
  assert not [f for f in os.listdir(killed) if f.startswith(".tmp-")]
  for name in shards:
    with open(os.path.join(killed, name), "rb") as a, open(os.path.join(whole, name), "rb") as b:
      assert a.read() == b.read(), name


def test_two_hosts_at_once_write_what_one_process_writes(data_dir, tmp_path):
  """The pod layout: two processes started together on one folder, each with its
  --process_index, write the shards (and their .json counts, fingerprints included) that one
  process writes alone, byte for byte; a host started again finds its shards done."""
  shared, alone = str(tmp_path / "shared"), str(tmp_path / "alone")
  worker = [sys.executable, "-c", "import sys, json; from tests import tokenize_fixtures as t; "
            "print(json.dumps(t.run_job(sys.argv[1], sys.argv[2], 6, int(sys.argv[3]), 2)))"]
  env = harness.env_with_devices(1)
  hosts = [subprocess.Popen(worker + [shared, data_dir, str(p)], cwd=harness.REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for p in (0, 1)]
  outputs = [host.communicate(timeout=600) for host in hosts]
  assert [host.returncode for host in hosts] == [0, 0], [err[-2000:] for _, err in outputs]
  summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert [s["written_now"] for s in summaries] == [3, 3]   # shards 0,2,4 and 1,3,5
  tokenize_fixtures.run_job(alone, data_dir, 6)
  names = sorted(os.listdir(alone))
  assert sorted(os.listdir(shared)) == names and len(names) == 2 + 2 * 6
  for name in names:
    with open(os.path.join(shared, name), "rb") as a, open(os.path.join(alone, name), "rb") as b:
      assert a.read() == b.read(), name
  again = tokenize_fixtures.run_job(shared, data_dir, 6, 1, 2)  # host 1 restarted
  assert again["written_now"] == 0 and again["already_done"] == 3


def test_unusable_clips_are_skipped_and_counted(tokenizers, data_dir, tmp_path):
  summary = tokenize_job.run(tokenizers, DATASET, data_dir, ["test"], str(tmp_path / "t"), 1,
                             min_seconds=5.0, show_progress=False)
  # Every tiny clip lasts 4 s: all too short for a 5 s minimum, none written, none crash.
  assert summary["examples"] == 0 and summary["skipped"]["too_short"] > 0
  # --strict: the first such clip stops the job, naming it; no shard, no temporary.
  out = tmp_path / "strict"
  with pytest.raises(audio_io.AudioError, match="too_short"):
    tokenize_job.run(tokenizers, DATASET, data_dir, ["test"], str(out), 1, min_seconds=5.0,
                     show_progress=False, strict=True)
  assert not [f for f in os.listdir(out) if f.endswith(".tfrecord") or f.startswith(".tmp")]


def test_stage_tasks_read_the_shards(tokenizers, data_dir, tmp_path):
  from musiclm_jax.training import data as data_lib
  out = str(tmp_path / "tokens")
  tokenize_job.run(tokenizers, DATASET, data_dir, ["train", "validation"], out, 2,
                   show_progress=False)
  layout = stages.TokenLayout(**json.load(open(os.path.join(out, "layout.json"))),
                              coarse_levels=2)
  name = stages.register_stage_task("tokenize_job_coarse", "coarse", crop_seconds=2.0,
                                    layout=layout, tokens_dir=out)
  # A stage whose layout says another frame rate than the tokens' would crop them misaligned.
  other_rate = dataclasses.replace(layout, acoustic_rate=2 * layout.acoustic_rate)
  with pytest.raises(ValueError,
                     match=r"layout.json records .*acoustic_rate=400 \(layout: 800\)"):
    stages.register_stage_task("tokenize_job_misaligned", "coarse", crop_seconds=2.0,
                               layout=other_rate, tokens_dir=out)
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


def test_corrupt_layout_files_are_named_and_kept(tmp_path):
  """A truncated layout.json stops both the stage task and a resumed tokenize job with an
  error naming the file; neither overwrites it."""
  path = tmp_path / "layout.json"
  path.write_text('{"acoustic_rate": 4')
  with pytest.raises(ValueError, match=r"layout.json is not valid JSON"):
    stages.check_tokens_layout(str(tmp_path), stages.TokenLayout())
  with pytest.raises(ValueError, match=r"layout.json is not valid JSON"):
    tokenize_job._check_layout(str(tmp_path), {"acoustic_rate": 400}, {}, False)
  path.write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"layout.json should hold a JSON object"):
    stages.check_tokens_layout(str(tmp_path), stages.TokenLayout())
  assert path.read_text() == "[1, 2]"
  # The same for a truncated tokenizers.json (the fingerprints), with or without
  # replace_stale.
  path.write_text('{"acoustic_rate": 400}')
  (tmp_path / "tokenizers.json").write_text('{"codec": "0a')
  for replace_stale in (False, True):
    with pytest.raises(ValueError, match=r"tokenizers.json is not valid JSON"):
      tokenize_job._check_layout(str(tmp_path), {"acoustic_rate": 400}, {"codec": "0a"},
                                 replace_stale)
  assert (tmp_path / "tokenizers.json").read_text() == '{"codec": "0a'


def test_cli_reports_bad_arguments(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    tokenize_job.main(["--dataset", DATASET, "--out", str(tmp_path), "--codec",
                       str(tmp_path / "missing"), "--semantic_model_dir", "x",
                       "--centroids", "y", "--mulan_model_dir", "z", "--mulan_rvq", "w"])
  assert e.value.code == 2 and "missing" in capsys.readouterr().err
