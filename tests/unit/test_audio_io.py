"""Audio reading on real files and on a fuzz set of broken or unusual ones."""

import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from musiclm_jax.audio import debian_music, io as audio_io


@pytest.fixture(scope="session")
def sonic_pi_files():
  root = debian_music.fetch("sonic-pi-samples")
  files = [f for f in debian_music.audio_files(root) if "/samples/" in f]
  assert len(files) > 100
  return files


def test_real_flac_files_load_resampled_and_mono(sonic_pi_files):
  path = next(f for f in sonic_pi_files if f.endswith("loop_amen.flac"))
  info = sf.info(path)
  wave = audio_io.load_audio(path, sample_rate=24000)
  assert wave.ndim == 1 and wave.dtype == np.float32
  assert abs(wave.shape[0] - info.duration * 24000) <= 2
  assert 0.05 < float(np.sqrt(np.mean(wave ** 2))) < 1.0


def test_resampling_keeps_a_tone_and_removes_what_cannot_exist():
  rate = 96000
  t = np.arange(rate) / rate
  tone = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 20000 * t)
  out = audio_io.resample(tone.astype(np.float32), rate, 16000)
  spectrum = np.abs(np.fft.rfft(out))
  freqs = np.fft.rfftfreq(out.shape[0], 1 / 16000)
  assert abs(freqs[np.argmax(spectrum)] - 440) < 2
  # 20 kHz is above the new Nyquist (8 kHz): filtered out, not aliased to 4 kHz.
  alias = spectrum[np.abs(freqs - 4000) < 20].max()
  assert alias < 1e-3 * spectrum.max()


def _write(path, wave, rate, subtype="PCM_16", fmt=None):
  sf.write(str(path), wave, rate, subtype=subtype, format=fmt)
  return str(path)


@pytest.fixture
def fuzz_set(tmp_path, sonic_pi_files):
  """name -> (path, expected reason or None when the file must load)."""
  rng = np.random.default_rng(0)
  music = audio_io.load_audio(sonic_pi_files[0], mono=False)
  noise = (0.3 * rng.standard_normal((48000, 1))).astype(np.float32)
  cases = {}
  full = _write(tmp_path / "full.flac", noise, 48000)
  truncated = tmp_path / "truncated.flac"
  data = open(full, "rb").read()
  truncated.write_bytes(data[: len(data) // 50])
  cases["truncated"] = (str(truncated), "unreadable")
  (tmp_path / "zero.wav").write_bytes(b"")
  cases["zero_length"] = (str(tmp_path / "zero.wav"), "unreadable")
  cases["header_only"] = (_write(tmp_path / "header.wav", np.zeros((0, 1)), 16000), "empty")
  nan = noise.copy()
  nan[100:200] = np.nan
  cases["nan"] = (_write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT"), "non_finite")
  cases["silent"] = (_write(tmp_path / "silent.wav", np.zeros((16000, 1)), 16000), "silent")
  cases["too_short"] = (_write(tmp_path / "short.wav", noise[:100], 16000), "too_short")
  # Not plausible music: a damaged header's rate, channels that cancel in the down-mix, a
  # DC signal, floats far beyond full scale (raw integers stored as float).
  cases["rate_1hz"] = (_write(tmp_path / "rate1.wav", noise[:100], 1), "bad_rate")
  cancel = np.concatenate([noise, -noise], axis=1)
  cases["cancelling"] = (_write(tmp_path / "cancel.wav", cancel, 16000), "silent")
  cases["dc"] = (_write(tmp_path / "dc.wav", np.full((16000, 1), 0.5), 16000), "constant")
  cases["huge_floats"] = (_write(tmp_path / "huge.wav", noise * 3e5, 16000, subtype="FLOAT"),
                          "out_of_range")
  cases["hot_floats"] = (_write(tmp_path / "hot.wav", noise * 1.5, 16000, subtype="FLOAT"),
                         None)   # a little over full scale: clipped
  (tmp_path / "text.mp3").write_text("not audio at all")
  cases["not_audio"] = (str(tmp_path / "text.mp3"), "unreadable")
  # Usable files in awkward shapes.
  cases["wrong_extension"] = (_write(tmp_path / "really_flac.wav", music, 44100,
                                     fmt="FLAC"), None)
  cases["8bit"] = (_write(tmp_path / "8bit.wav", music, 44100, subtype="PCM_U8"), None)
  cases["24bit"] = (_write(tmp_path / "24bit.flac", music, 44100, subtype="PCM_24"), None)
  six = np.tile(noise, (1, 6)) * np.linspace(0.2, 1.0, 6)
  cases["6_channels"] = (_write(tmp_path / "six.wav", six, 48000), None)
  cases["8kHz"] = (_write(tmp_path / "8k.ogg", noise[:8000], 8000, subtype="VORBIS"), None)
  cases["96kHz"] = (_write(tmp_path / "96k.flac", np.tile(noise, (2, 1)), 96000), None)
  cases["opus"] = (_write(tmp_path / "x.opus", noise, 48000, subtype="OPUS", fmt="OGG"),
                   None)
  cases["mp3"] = (_write(tmp_path / "x.mp3", noise, 48000, subtype="MPEG_LAYER_III",
                         fmt="MP3"), None)
  return cases


def test_fuzz_set_is_loaded_or_skipped_with_the_right_reason(fuzz_set):
  counter = audio_io.SkipCounter()
  loaded = {}
  for name, (path, expected) in fuzz_set.items():
    try:
      wave = audio_io.load_audio(path, sample_rate=24000, min_seconds=0.1)
    except audio_io.AudioError as e:
      assert e.reason == expected, (name, str(e))
      assert path in str(e)
      counter.add(e)
      continue
    assert expected is None, (name, "loaded but should be skipped")
    assert wave.ndim == 1 and np.all(np.isfinite(wave)) and np.abs(wave).max() <= 1.0
    loaded[name] = wave
  assert counter.counts == {"unreadable": 3, "empty": 1, "non_finite": 1, "silent": 2,
                            "too_short": 1, "bad_rate": 1, "constant": 1, "out_of_range": 1}
  assert "skipped 11 files" in counter.summary()
  assert abs(loaded["8kHz"].shape[0] - 24000) <= 2
  assert abs(loaded["96kHz"].shape[0] - 24000) <= 2


def test_save_audio_is_atomic_and_refuses_bad_input(tmp_path):
  path = str(tmp_path / "out.wav")
  wave = (0.1 * np.sin(np.arange(2400) / 5)).astype(np.float32)
  audio_io.save_audio(path, wave, 24000)
  np.testing.assert_allclose(audio_io.load_audio(path), wave, atol=1e-4)
  with pytest.raises(ValueError, match="non-finite"):
    audio_io.save_audio(path, np.full(10, np.nan), 24000)
  with pytest.raises(ValueError, match=r"\.xyz"):
    audio_io.save_audio(str(tmp_path / "out.xyz"), wave, 24000)
  # The earlier good file is untouched and no temporary files are left behind.
  np.testing.assert_allclose(audio_io.load_audio(path), wave, atol=1e-4)
  assert sorted(os.listdir(tmp_path)) == ["out.wav"]
