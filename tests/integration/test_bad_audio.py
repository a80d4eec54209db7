"""A generated folder of malformed audio through every reader of audio: the reader itself,
`build-data audio_folder`, `codec encode` and `evaluate`. No traceback; every file is used
correctly or named with its reason; nothing non-finite or empty is written."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from musiclm_jax import cli
from musiclm_jax.audio import io as audio_io

RATE = 16000


def _tone(seconds=2.0, freq=440.0, rate=RATE):
  t = np.arange(int(seconds * rate)) / rate
  return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
  """(folder, {name: expected reason or None for usable})."""
  d = tmp_path_factory.mktemp("fuzz")
  expected = {}

  def write(name, wave, rate=RATE, reason=None, **kw):
    sf.write(str(d / name), wave, rate, **kw)
    expected[name] = reason

  write("good_a.wav", _tone(freq=330))
  write("good_b.flac", _tone(freq=550))
  write("flac_named_wav.wav", _tone(freq=660), format="FLAC")        # wrong extension
  write("hot_floats.wav", 1.5 * _tone(), subtype="FLOAT")           # clipped, kept
  whole = (d / "good_a.wav").read_bytes()
  for cut in (10, 44, len(whole) // 2):                               # truncated
    (d / f"truncated_{cut}.wav").write_bytes(whole[:cut])
  expected.update({"truncated_10.wav": "unreadable", "truncated_44.wav": "empty"})
  # Cut mid-data, libsndfile reads what is there: a shorter but usable file.
  expected[f"truncated_{len(whole) // 2}.wav"] = None
  (d / "empty.wav").write_bytes(b"")
  expected["empty.wav"] = "unreadable"
  (d / "garbage.mp3").write_bytes(os.urandom(4096))
  expected["garbage.mp3"] = "unreadable"
  nan = _tone()
  nan[100:200] = np.nan
  write("nan.wav", nan, subtype="FLOAT", reason="non_finite")
  inf = _tone()
  inf[5] = np.inf
  write("inf.wav", inf, subtype="FLOAT", reason="non_finite")
  write("silence.wav", np.zeros(RATE, np.float32), reason="silent")
  write("cancelling.wav", np.stack([_tone(), -_tone()], 1), reason="silent")
  write("rate_1hz.wav", _tone()[:100], rate=1, reason="bad_rate")
  write("huge.wav", 3e5 * _tone(), subtype="FLOAT", reason="out_of_range")
  write("dc.wav", np.full(RATE, 0.25, np.float32), reason="constant")
  write("too_short.wav", _tone(0.01), reason="too_short")
  os.makedirs(d / "folder_named.wav")                      # a folder, not a file
  os.symlink(str(d / "gone.wav"), str(d / "dangling.wav"))
  expected["dangling.wav"] = "unreadable"
  if os.geteuid() != 0:  # permissions do not stop root (CI runs as root)
    write("locked.wav", _tone())
    os.chmod(d / "locked.wav", 0)
    expected["locked.wav"] = "unreadable"
  return d, expected


def test_the_reader_uses_or_names_every_file(fuzz):
  folder, expected = fuzz
  for name, reason in sorted(expected.items()):
    path = str(folder / name)
    try:
      wave = audio_io.load_audio(path, sample_rate=24000, min_seconds=0.1)
    except audio_io.AudioError as e:
      assert e.reason == reason and path in str(e), (name, str(e))
      continue
    assert reason is None, (name, "was read but should be skipped")
    assert wave.size and np.all(np.isfinite(wave)) and np.abs(wave).max() <= 1.0, name
  with pytest.raises(audio_io.AudioError, match="folder_named.wav: unreadable"):
    audio_io.load_audio(str(folder / "folder_named.wav"))


def test_codec_encode_names_each_bad_file_in_one_line(fuzz, tmp_path, capsys):
  folder, expected = fuzz
  usable = {n for n, r in expected.items() if r in (None, "too_short")}  # no minimum length
  for name, reason in sorted(expected.items()):
    out = tmp_path / (name + ".npy")
    argv = ["musiclm-jax", "codec", "encode", str(folder / name), str(out), "--bundle",
            "pretrained:tiny_16khz"]
    if name in usable:
      cli.main(argv)
      codes = np.load(out)
      assert codes.ndim == 2 and codes.shape[0] > 0 and codes.shape[1] == 8
      continue
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
    err = capsys.readouterr().err
    # Ours is one line; libmpg123 adds its own "Note: ..." lines for a garbage MP3.
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert e.value.code == 2 and "Traceback" not in err, err
    assert len(ours) == 1 and name in ours[0] and reason in ours[0], err
    assert not out.exists()
  assert sorted(os.listdir(tmp_path)) == sorted(n + ".npy" for n in usable)  # no temporaries


def test_evaluate_lists_every_bad_generated_clip(fuzz, tmp_path):
  folder, expected = fuzz
  reference = tmp_path / "reference"
  reference.mkdir()
  for i in range(3):
    sf.write(str(reference / f"r{i}.wav"), _tone(freq=300 + 100 * i), RATE)
  out = tmp_path / "report.json"
  cli.main(["musiclm-jax", "evaluate", "--generated", str(folder), "--reference",
            str(reference), "--bootstrap", "5", "--out", str(out)])
  report = json.loads(out.read_text())
  skipped = {os.path.relpath(s["file"], folder): s["reason"]
             for s in report["skipped"]["generated"]}
  bad = {n: r for n, r in expected.items() if r is not None}
  # evaluate needs MIN_CLIP_SECONDS of audio, so the too-short file is named as such too.
  assert skipped == {**bad, "folder_named.wav": "unreadable"}
  assert report["n_generated"] == sum(r is None for r in expected.values())


def test_build_data_uses_the_good_files_and_names_every_bad_one(fuzz, tmp_path, capsys):
  import tensorflow_datasets as tfds
  folder, expected = fuzz
  data_dir = tmp_path / "tfds"
  cli.main(["musiclm-jax", "build-data", "audio_folder", "--config", "16khz_2s",
            "--manual_dir", str(folder), "--data_dir", str(data_dir)])
  builder = tfds.builder("audio_folder/16khz_2s", data_dir=str(data_dir))
  report = builder.info.metadata["build_report"]
  named = {os.path.basename(line.split(":")[0]): reason
           for reason, lines in report["files_skipped_examples"].items() for line in lines}
  bad = {n: r for n, r in expected.items() if r is not None}
  assert named == bad, (named, bad)
  assert report["files_found"] == len(expected)   # the folder named .wav is a folder
  used = 0
  for split in builder.info.splits:
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      audio = example["audio"]
      assert audio.size and np.all(np.isfinite(audio)) and np.abs(audio).max() <= 1.0
      used += 1
  assert used > 0


def test_codec_encode_of_a_folder_skips_and_lists_or_stops_when_strict(fuzz, tmp_path, capsys):
  folder, expected = fuzz
  out = tmp_path / "codes"
  cli.main(["musiclm-jax", "codec", "encode", str(folder), str(out), "--bundle",
            "pretrained:tiny_16khz"])
  listed = {s["file"]: s["reason"] for s in json.loads((out / "skipped.json").read_text())}
  bad = {n: r for n, r in expected.items() if r not in (None, "too_short")}
  assert listed == {**bad, "folder_named.wav": "unreadable"}
  written = sorted(f for f in os.listdir(out) if f.endswith(".npy"))
  assert written == sorted(n + ".npy" for n, r in expected.items() if r in (None, "too_short"))
  assert all(np.load(out / f).shape[1] == 8 for f in written)
  printed = capsys.readouterr().out
  assert all(f"{name}: {reason}" in printed for name, reason in bad.items())
  with pytest.raises(SystemExit) as e:     # the folder exists now: nothing is overwritten
    cli.main(["musiclm-jax", "codec", "encode", str(folder), str(out), "--bundle",
              "pretrained:tiny_16khz"])
  assert e.value.code == 2 and "exists" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    cli.main(["musiclm-jax", "codec", "encode", str(folder), str(tmp_path / "strict"),
              "--bundle", "pretrained:tiny_16khz", "--strict"])
  assert e.value.code == 2 and not (tmp_path / "strict").exists()
  assert sorted(os.listdir(tmp_path)) == ["codes"]


def test_build_data_strict_writes_nothing_when_a_file_is_bad(fuzz, tmp_path, capsys):
  folder, _ = fuzz
  with pytest.raises(SystemExit) as e:
    cli.main(["musiclm-jax", "build-data", "audio_folder", "--config", "16khz_2s",
              "--manual_dir", str(folder), "--data_dir", str(tmp_path / "tfds"), "--strict"])
  err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
  assert e.value.code == 2 and len(err) == 1 and str(folder) in err[0]
  assert not (tmp_path / "tfds").exists()
