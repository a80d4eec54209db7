"""The audio_folder TFDS builder on a folder of real loops, captions and broken files."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import simple_parsing
import soundfile as sf
import tensorflow_datasets as tfds
from tensorflow_datasets.scripts.cli import build as tfds_build

from musiclm_jax.audio import debian_music
from musiclm_jax.tasks import audio as audio_tasks

BUILDER = audio_tasks.audio_folder_builder_cls()
split_for = sys.modules[BUILDER.__module__].split_for
CONFIG = "24khz_2s"  # 2 s clips at 24 kHz, tails >= 0.5 s kept, 20 % validation / 20 % test
RATE, CLIP = 24000, 48000
# Real sonic-pi files (name in the fixture <- sample) and the clips each must give.
REAL = {
    "loops/ambi_piano.flac": ("ambi_piano", 2),     # 2.81 s: 2 s + 0.81 s tail
    "loops/ambi_drone.flac": ("ambi_drone", 2),     # 4.41 s: the 0.41 s tail dropped
    "bass_voxy_c.flac": ("bass_voxy_c", 3),         # 6.23 s: the 0.23 s tail dropped
    "ambi_choir.flac": ("ambi_choir", 1),           # 1.57 s
    "bass_hard_c.flac": ("bass_hard_c", 1),         # 1.50 s
    "bd_boom.flac": ("bd_boom", 1),                 # 1.71 s
    "drum_cymbal_hard.flac": ("drum_cymbal_hard", 1),  # 1.64 s
    "bass_dnb_f.flac": ("bass_dnb_f", 1),           # 0.87 s
    "drums/bd_808.flac": ("bd_808", 1),             # 0.56 s
    "drums/bd_fat.flac": ("bd_fat", 0),             # 0.23 s: too short
}
CAPTIONS = {"loops/ambi_piano.flac": "a soft piano loop",   # NAME.txt
            "ambi_choir.flac": "an airy choir",             # NAME.json (beats the csv)
            "bass_voxy_c.flac": "a voxy bass in C",         # captions.csv
            "bass_hard_c.flac": "hard bass, C"}             # captions.csv (quoted comma)


def _samples_dir():
  root = debian_music.fetch("sonic-pi-samples")
  return os.path.join(root, "usr", "share", "sonic-pi", "samples")


def make_folder(path, extra=()):
  """The fixture folder: REAL files, captions, four broken files, and `extra` samples."""
  samples = _samples_dir()
  for rel, (sample, _) in REAL.items():
    os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
    shutil.copy(os.path.join(samples, sample + ".flac"), os.path.join(path, rel))
  for sample in extra:
    shutil.copy(os.path.join(samples, sample + ".flac"), os.path.join(path, sample + ".flac"))
  with open(os.path.join(path, "loops", "ambi_piano.txt"), "w") as f:
    f.write(CAPTIONS["loops/ambi_piano.flac"] + "\n")
  with open(os.path.join(path, "ambi_choir.json"), "w") as f:
    json.dump({"caption": CAPTIONS["ambi_choir.flac"]}, f)
  with open(os.path.join(path, "captions.csv"), "w") as f:
    f.write('path,caption\nbass_voxy_c.flac,a voxy bass in C\n./bass_hard_c.flac,"hard bass, C"'
            "\nambi_choir.flac,loses to the json\nno_such_file.flac,a typo\n")
  broken = os.path.join(path, "broken")
  os.makedirs(broken)
  data = open(os.path.join(samples, "ambi_piano.flac"), "rb").read()
  with open(os.path.join(broken, "truncated.flac"), "wb") as f:
    f.write(data[: len(data) // 10])
  open(os.path.join(broken, "zero.wav"), "wb").close()
  noise = 0.3 * np.random.default_rng(0).standard_normal(RATE).astype(np.float32)
  noise[100:200] = np.nan
  sf.write(os.path.join(broken, "nan.wav"), noise, RATE, subtype="FLOAT")
  sf.write(os.path.join(broken, "silent.wav"), np.zeros(RATE, np.float32), RATE)
  return path


def build(folder, data_dir):
  builder = BUILDER(config=CONFIG, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
  return builder


def load_all(data_dir):
  """{split: {id: example}} read back with tfds.load."""
  out = {}
  for split in tfds.builder(f"audio_folder/{CONFIG}", data_dir=str(data_dir)).info.splits:
    ds = tfds.load(f"audio_folder/{CONFIG}", data_dir=str(data_dir), split=split)
    out[split] = {ex["id"].decode(): ex for ex in ds.as_numpy_iterator()}
  return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("audio_folder")
  folder = make_folder(str(tmp / "music"))
  builder = build(folder, tmp / "tfds")
  return folder, tmp / "tfds", builder, load_all(tmp / "tfds")


def test_clips_features_and_rate(built):
  _, _, builder, splits = built
  features = builder.info.features
  assert isinstance(features["audio"], tfds.features.Audio)
  assert features["audio"].sample_rate == RATE
  assert features["audio"].shape == (None,) and features["audio"].np_dtype == np.float32
  by_file = {}
  for examples in splits.values():
    for key, ex in examples.items():
      assert ex["audio"].dtype == np.float32 and ex["audio"].ndim == 1
      assert 0.5 * RATE <= ex["audio"].shape[0] <= CLIP
      assert np.abs(ex["audio"]).max() <= 1.0 and np.abs(ex["audio"]).max() > 1e-3
      assert ex["sample_rate"] == RATE and ex["sample_rate"].dtype == np.int32
      assert key == f"{ex['file'].decode()}:{key.rsplit(':', 1)[1]}"
      by_file.setdefault(ex["file"].decode(), []).append(ex)
  assert {f: len(v) for f, v in by_file.items()} == {
      f: n for f, (_, n) in REAL.items() if n}
  piano = sorted(by_file["loops/ambi_piano.flac"], key=lambda ex: ex["id"])
  assert [ex["audio"].shape[0] for ex in piano][0] == CLIP
  assert abs(piano[1]["audio"].shape[0] - 0.81 * RATE) < 0.01 * RATE  # the kept tail


def test_captions_are_attached(built):
  _, _, builder, splits = built
  for examples in splits.values():
    for ex in examples.values():
      assert ex["caption"].decode() == CAPTIONS.get(ex["file"].decode(), "")
  captions = builder.info.metadata["build_report"]["captions"]
  assert (captions["txt"], captions["json"], captions["csv"]) == (1, 1, 2)
  assert captions["csv_unmatched"] == ["no_such_file.flac"]


def test_broken_files_are_skipped_and_counted(built):
  _, data_dir, builder, splits = built
  report = builder.info.metadata["build_report"]
  assert report["files_skipped"] == {"unreadable": 2, "non_finite": 1, "silent": 1,
                                     "too_short": 1}
  assert report["clips_dropped"] == {"too_short": 2}  # the drone's and the bass's tails
  assert report["files_found"] == len(REAL) + 4
  assert report["files_used"] == len(REAL) - 1
  assert report["files_found"] == report["files_used"] + sum(report["files_skipped"].values())
  assert report["clips"] == {split: len(v) for split, v in splits.items()}
  # The counts are kept with the data: metadata.json, also read back by a fresh builder.
  path = os.path.join(str(data_dir), "audio_folder", CONFIG, "1.0.0", "metadata.json")
  assert json.load(open(path))["build_report"]["files_skipped"] == report["files_skipped"]
  fresh = tfds.builder(f"audio_folder/{CONFIG}", data_dir=str(data_dir))
  assert fresh.info.metadata["build_report"]["clips"] == report["clips"]


def test_splits_follow_the_path_hash_and_stay_put(built, tmp_path):
  _, _, builder, splits = built
  for split, examples in splits.items():
    for ex in examples.values():
      assert split_for(ex["file"].decode(), 20.0, 20.0) == split
  assert set(splits) == {"train", "validation", "test"}
  # One more file: built again with the code `tfds build data/audio_folder` runs (the
  # `tfds` script itself needs apache_beam in tfds 4.9); old clips keep split and samples.
  bigger = make_folder(str(tmp_path / "music"), extra=["ambi_glass_rub"])
  simple_parsing.parse(tfds_build.Args, args=[
      audio_tasks.AUDIO_FOLDER_DIR, f"--config={CONFIG}", f"--manual_dir={bigger}",
      f"--data_dir={tmp_path / 'tfds'}"]).execute()
  after = load_all(tmp_path / "tfds")
  for split, examples in splits.items():
    for key, ex in examples.items():
      np.testing.assert_array_equal(after[split][key]["audio"], ex["audio"])
  new = {k: s for s, examples in after.items() for k in examples if k not in splits.get(s, {})}
  assert sorted(new) == ["ambi_glass_rub.flac:0", "ambi_glass_rub.flac:1"]
  assert set(new.values()) == {split_for("ambi_glass_rub.flac", 20.0, 20.0)}


def test_bad_caption_files_fail_fast_naming_the_file(tmp_path):
  folder = tmp_path / "music"
  folder.mkdir()
  shutil.copy(os.path.join(_samples_dir(), "bd_boom.flac"), folder / "bd_boom.flac")
  (folder / "bd_boom.json").write_text('{"title": "no caption key"}')
  with pytest.raises(ValueError, match="bd_boom.json"):
    build(folder, tmp_path / "tfds")
  (folder / "bd_boom.json").unlink()
  (folder / "captions.csv").write_text("file,text\nbd_boom.flac,x\n")
  with pytest.raises(ValueError, match="captions.csv.*'path' and 'caption'"):
    build(folder, tmp_path / "tfds")


def test_a_split_of_only_broken_files_is_a_clear_error(tmp_path):
  folder = tmp_path / "music"
  (folder / "broken").mkdir(parents=True)
  shutil.copy(os.path.join(_samples_dir(), "bass_hard_c.flac"), folder / "bass_hard_c.flac")
  sf.write(folder / "broken" / "silent.wav", np.zeros(RATE, np.float32), RATE)
  assert split_for("broken/silent.wav", 20.0, 20.0) == "test"  # alone in its split
  with pytest.raises(ValueError, match=r"split 'test' .*broken/silent.wav.*'silent': 1"):
    build(folder, tmp_path / "tfds")


def test_config_values_are_checked():
  config_cls = type(BUILDER.BUILDER_CONFIGS[0])
  with pytest.raises(ValueError, match="min_clip_seconds"):
    config_cls(name="bad", clip_seconds=1.0, min_clip_seconds=2.0)
  with pytest.raises(ValueError, match="test_percent"):
    config_cls(name="bad", validation_percent=50.0, test_percent=50.0)
