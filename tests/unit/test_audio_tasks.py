"""SeqIO audio crop tasks over an audio_folder dataset, through training.data.get_dataset."""

import os
import shutil

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from musiclm_jax.audio import debian_music
from musiclm_jax.tasks import audio as audio_tasks
from musiclm_jax.training import data as data_lib

# Five real loops under a/ (all hash into 'train' at 20 % / 20 %): 9 clips of the 2 s
# configs, 5 of them full 2 s clips; the others last 0.81, 0.87, 1.15 and 1.5 s.
SAMPLES = ("ambi_piano", "bass_voxy_c", "bass_dnb_f", "ambi_glass_rub", "bass_hard_c")
CLIPS, FULL_CLIPS = 9, 5
RATE, CLIP = 24000, 48000


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("audio_tasks")
  root = os.path.join(debian_music.fetch("sonic-pi-samples"), "usr/share/sonic-pi/samples")
  os.makedirs(tmp / "music" / "a")
  for name in SAMPLES:
    shutil.copy(os.path.join(root, name + ".flac"), tmp / "music" / "a" / (name + ".flac"))
  for config in ("24khz_2s", "16khz_2s"):
    builder = audio_tasks.build_audio_folder(str(tmp / "music"), str(tmp / "tfds"), config)
    assert builder.info.splits["train"].num_examples == CLIPS
  return str(tmp / "tfds")


def _register(name, data_dir, crop, **kw):
  kw.setdefault("sample_rate", RATE)
  return audio_tasks.register_audio_crop_task(
      name, kw.pop("tfds_name", "audio_folder/24khz_2s:1.0.0"), data_dir,
      crop_samples=crop, **kw)


def _config(name, crop, **kw):
  base = dict(mixture_or_task_name=name, task_feature_lengths={"audio": crop},
              split="train", batch_size=1, shuffle=False, seed=0, num_epochs=1)
  base.update(kw)
  return data_lib.DatasetConfig(**base)


def _crops(config, process_index=0, process_count=1):
  ds = data_lib.get_dataset(config, audio_tasks.AudioFeatureConverter(), process_index,
                            process_count)
  return [b["audio"] for b in ds.as_numpy_iterator()]


def test_batches_of_random_crops(data_dir):
  name = _register("test_crops_24khz", data_dir, 12000)
  ds = data_lib.get_dataset(_config(name, 12000, batch_size=4, shuffle=True, num_epochs=None),
                            audio_tasks.AudioFeatureConverter(), 0, 1)
  assert ds.element_spec["audio"].shape.as_list() == [4, 12000]  # static, as jit needs
  for batch in ds.take(4).as_numpy_iterator():  # 16 crops: more than one epoch of 9
    assert set(batch) == {"audio"}
    assert batch["audio"].shape == (4, 12000) and batch["audio"].dtype == np.float32
    assert np.all(np.isfinite(batch["audio"])) and np.abs(batch["audio"]).max() <= 1.0
    assert np.all(np.abs(batch["audio"]).max(axis=1) > 1e-3)


def test_crops_repeat_for_a_seed_and_change_every_epoch(data_dir):
  name = _register("test_crops_epochs", data_dir, 12000)
  config = _config(name, 12000, num_epochs=2, seed=5)
  first, again = _crops(config), _crops(config)
  assert len(first) == 2 * CLIPS  # every clip is longer than 0.5 s; unshuffled
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  epoch1, epoch2 = np.stack(first[:CLIPS]), np.stack(first[CLIPS:])
  assert not np.array_equal(epoch1, epoch2)
  other_seed = np.stack(_crops(_config(name, 12000, num_epochs=1, seed=6)))
  assert not np.array_equal(epoch1, other_seed)


def test_short_clips_are_counted_then_dropped_or_padded(data_dir):
  crop = 40000  # 1.67 s: the 0.81, 0.87, 1.15 and 1.5 s clips are short
  drop = seqio.get_mixture_or_task(_register("test_drop", data_dir, crop))
  assert drop.short_clip_counts()["train"] == {"clips": CLIPS, "short": CLIPS - FULL_CLIPS,
                                               "policy": "drop"}
  assert len(_crops(_config(drop.name, crop))) == FULL_CLIPS
  twice = _register("test_drop_x2", data_dir, crop, crops_per_clip=2)
  assert len(_crops(_config(twice, crop))) == 2 * FULL_CLIPS
  pad = seqio.get_mixture_or_task(_register("test_pad", data_dir, crop, short_clips="pad"))
  assert pad.short_clip_counts()["train"]["short"] == CLIPS - FULL_CLIPS
  padded = np.concatenate(_crops(_config(pad.name, crop)))
  assert padded.shape == (CLIPS, crop)
  assert np.sum(np.all(padded[:, -3000:] == 0, axis=1)) == CLIPS - FULL_CLIPS
  # A crop longer than every clip counts them all.
  longer = seqio.get_mixture_or_task(_register("test_long", data_dir, CLIP + 1))
  assert longer.short_clip_counts()["train"]["short"] == CLIPS


def test_two_hosts_read_disjoint_halves_of_one_epoch(data_dir):
  # Crop = clip length with padding: each clip gives exactly itself, so crops name clips.
  name = _register("test_hosts", data_dir, CLIP, short_clips="pad")
  clips = tfds.load("audio_folder/24khz_2s", data_dir=data_dir, split="train")
  expected = {np.pad(ex["audio"], (0, CLIP - len(ex["audio"]))).tobytes()
              for ex in clips.as_numpy_iterator()}
  config = _config(name, CLIP, batch_size=2, shuffle=True, seed=1)  # 2 shards, 1 per host
  hosts = []
  for process_index in range(2):
    batches = _crops(config, process_index, process_count=2)
    assert all(b.shape == (1, CLIP) and b.dtype == np.float32 for b in batches)
    hosts.append({b[0].tobytes() for b in batches})
    assert len(hosts[-1]) == len(batches)
  assert not hosts[0] & hosts[1]
  assert hosts[0] | hosts[1] == expected and len(expected) == CLIPS


def test_gin_registers_soundstream_and_w2v_bert_tasks(data_dir):
  bindings = []
  for scope, task, config, rate in (("codec", "soundstream_crops_24khz", "24khz_2s", 24000),
                                    ("semantic", "w2v_bert_crops_16khz", "16khz_2s", 16000)):
    bindings += [
        f"{scope}/register_audio_crop_task.name = '{task}'",
        f"{scope}/register_audio_crop_task.tfds_name = 'audio_folder/{config}:1.0.0'",
        f"{scope}/register_audio_crop_task.tfds_data_dir = '{data_dir}'",
        f"{scope}/register_audio_crop_task.sample_rate = {rate}",
        f"{scope}/register_audio_crop_task.crop_samples = {rate}",
        f"{scope}/DatasetConfig.mixture_or_task_name = @{scope}/register_audio_crop_task()",
        f"{scope}/DatasetConfig.task_feature_lengths = {{'audio': {rate}}}",
        f"{scope}/DatasetConfig.batch_size = 2"]
  try:
    with gin.unlock_config():
      gin.parse_config(bindings)
      configs = {}
      for scope in ("codec", "semantic"):
        with gin.config_scope(scope):
          configs[scope] = data_lib.DatasetConfig()
          data_lib.DatasetConfig()  # registering again with the same arguments: a no-op
  finally:
    gin.clear_config()
  for scope, task, rate in (("codec", "soundstream_crops_24khz", 24000),
                            ("semantic", "w2v_bert_crops_16khz", 16000)):
    assert configs[scope].mixture_or_task_name == task
    ds = data_lib.get_dataset(configs[scope], audio_tasks.AudioFeatureConverter(), 0, 1)
    batch = next(ds.as_numpy_iterator())["audio"]  # num_epochs=None: take one batch
    assert batch.shape == (2, rate) and batch.dtype == np.float32


def test_misconfigurations_are_clear_errors(data_dir):
  with pytest.raises(ValueError, match="short_clips='trim'"):
    _register("test_bad", data_dir, 1000, short_clips="trim")
  with pytest.raises(ValueError, match="already registered by another module"):
    _register("synthetic_arpeggios", data_dir, 1000)
  name = _register("test_lengths", data_dir, 12000)
  with pytest.raises(ValueError, match="task_feature_lengths\\['audio'\\] is 16000"):
    _crops(_config(name, 16000))
  wrong_rate = _register("test_rate", data_dir, 16000, sample_rate=16000)
  with pytest.raises(tf.errors.InvalidArgumentError, match="another rate than the 16000 Hz"):
    _crops(_config(wrong_rate, 16000))
