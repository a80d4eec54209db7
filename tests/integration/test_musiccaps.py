"""The musiccaps builder on a CSV in MusicCaps' format and real audio named by YouTube id:
both file forms (the clip, or the whole recording cut at start_s/end_s), the paper's splits,
and missing / unreadable / wrong-length files skipped and counted."""

import csv
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from musiclm_jax.audio import debian_music, io as audio_io
from musiclm_jax.tasks import builders

COLUMNS = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption",
           "author_id", "is_balanced_subset", "is_audioset_eval"]


def _row(ytid, start, end, caption, balanced, evaluation):
  return {"ytid": ytid, "start_s": start, "end_s": end, "audioset_positive_labels": "/m/04rlf",
          "aspect_list": "['low quality', 'piano']", "caption": caption, "author_id": 4,
          "is_balanced_subset": balanced, "is_audioset_eval": evaluation}


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("musiccaps")
  music = os.path.join(debian_music.fetch("wesnoth-1.16-music"), "usr/share/games/wesnoth")
  tracks = debian_music.audio_files(music)[:3]
  clips = root / "clips"
  os.makedirs(clips / "nested")
  # A pre-cut 10 s clip (the usual download), as FLAC.
  wave = audio_io.load_audio(tracks[0], sample_rate=44100)
  sf.write(clips / "AAAAAAAAAAA.flac", wave[30 * 44100:40 * 44100], 44100)
  # A whole recording (the clip is [20, 30) s of it), OGG, in a subfolder, suffixed name.
  shutil.copy(tracks[1], clips / "nested" / "BBBBBBBBBBB_full.ogg")
  # A 3 s file: neither a 10 s clip nor reaching end_s.
  sf.write(clips / "CCCCCCCCCCC.wav", wave[:3 * 44100], 44100)
  # A corrupt file.
  (clips / "DDDDDDDDDDD.mp3").write_bytes(b"ID3 not really an mp3")
  rows = [_row("AAAAAAAAAAA", 30, 40, "A calm orchestral piece.", True, False),
          _row("BBBBBBBBBBB", 20, 30, "Epic fantasy battle music.", True, True),
          _row("CCCCCCCCCCC", 0, 10, "Too short.", False, False),
          _row("DDDDDDDDDDD", 0, 10, "Broken file.", False, True),
          _row("EEEEEEEEEEE", 0, 10, "Never downloaded.", False, False)]
  with open(root / "musiccaps-public.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  return str(root), tracks


def test_builds_the_papers_splits_and_counts_what_it_skips(manual_dir, tmp_path):
  root, tracks = manual_dir
  builder = builders.build("musiccaps", str(tmp_path), "16khz", root)
  report = builder.info.metadata["build_report"]
  assert report["rows"] == 5
  assert report["written"] == {"train": 1, "test": 1, "balanced_1k": 2}
  assert report["skipped"] == {"length_mismatch": 1, "unreadable": 1, "missing": 1}
  load = lambda split: list(tfds.load("musiccaps/16khz", split=split, data_dir=str(tmp_path))
                            .as_numpy_iterator())
  (train,), (test,) = load("train"), load("test")
  assert train["caption"].decode() == "A calm orchestral piece."
  assert train["aspect_list"].decode() == "low quality, piano"
  assert not train["is_audioset_eval"] and test["is_audioset_eval"]
  assert train["audio"].shape == test["audio"].shape == (160000,)
  # The whole recording was cut at [20, 30) s.
  expected = audio_io.load_audio(tracks[1], sample_rate=16000)[20 * 16000:30 * 16000]
  np.testing.assert_allclose(test["audio"], expected, atol=1e-5)
  assert sorted(ex["ytid"].decode() for ex in load("balanced_1k")) == ["AAAAAAAAAAA",
                                                                        "BBBBBBBBBBB"]


def test_malformed_csv_is_a_clear_error(tmp_path):
  root = tmp_path / "bad"
  root.mkdir()
  (root / "musiccaps-public.csv").write_text("ytid,caption\nx,y\n")
  with pytest.raises(ValueError, match="missing columns"):
    builders.build("musiccaps", str(tmp_path / "out"), "16khz", str(root))
  with open(root / "musiccaps-public.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, COLUMNS)
    writer.writeheader()
    writer.writerow(_row("AAAAAAAAAAA", 10, 5, "backwards", False, False))
  with pytest.raises(ValueError, match="musiccaps-public.csv:2: need 0 <= start_s < end_s"):
    builders.build("musiccaps", str(tmp_path / "out2"), "16khz", str(root))
