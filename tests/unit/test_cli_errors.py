"""Bad arguments to the commands: one line on stderr naming the value, exit status 2, and
the output folder left as it was."""

import os
import subprocess
import sys

import numpy as np
import pytest

from musiclm_jax import cli
from tests import harness

BUNDLE = "pretrained:tiny_16khz"


@pytest.fixture
def folder(tmp_path):
  """A folder of inputs (a WAV, empty and foreign files, codes) and an output folder."""
  import soundfile as sf
  wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)
  sf.write(tmp_path / "tone.wav", wave, 16000)
  (tmp_path / "empty.npy").write_bytes(b"")
  (tmp_path / "notes.txt").write_text("not codes")
  np.save(tmp_path / "floats.npy", np.zeros((4, 2), np.float32))
  np.save(tmp_path / "codes.npy", np.zeros((4, 2), np.int32))
  np.save(tmp_path / "big_ids.npy", np.full((4, 2), 10_000, np.int32))
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  return tmp_path


def _cases(d):
  """(argv, text the one line must contain)."""
  out = str(d / "out" / "x.npy")
  wav_out = str(d / "out" / "x.wav")
  return [
      (["codec", "encode", str(d / "tone.wav"), out, "--bundle", BUNDLE, "--levels", "99"],
       "--levels 99: the codec has 8 levels"),
      (["codec", "encode", str(d / "tone.wav"), out, "--bundle", BUNDLE, "--levels", "-2"],
       "-2 is not >= 1"),
      (["codec", "encode", str(d / "missing.wav"), out, "--bundle", BUNDLE], "missing.wav"),
      (["codec", "encode", str(d / "tone.wav"), out, "--bundle", str(d / "nobundle")],
       "nobundle"),
      (["codec", "decode", str(d / "empty.npy"), wav_out, "--bundle", BUNDLE],
       "empty.npy: not a codes file"),
      (["codec", "decode", str(d / "notes.txt"), wav_out, "--bundle", BUNDLE],
       "notes.txt: not a codes file"),
      (["codec", "decode", str(d / "tone.wav"), wav_out, "--bundle", BUNDLE],
       "tone.wav: not a codes file"),
      (["codec", "decode", str(d / "floats.npy"), wav_out, "--bundle", BUNDLE],
       "floats.npy: codes must be integers"),
      (["codec", "decode", str(d / "big_ids.npy"), wav_out, "--bundle", BUNDLE],
       "big_ids.npy: code ids must be in [0, 32)"),
      (["codec", "decode", str(d / "codes.npy"), wav_out, "--bundle", BUNDLE, "--levels", "0"],
       "0 is not >= 1"),
      (["codec", "decode", str(d / "codes.npy"), wav_out, "--bundle", BUNDLE, "--levels", "3"],
       "--levels 3: " + str(d / "codes.npy") + " has 2 levels"),
      (["codec", "frobnicate"], "invalid choice: 'frobnicate'"),
      (["build-data", "audio_folder", "--config", "48khz", "--manual_dir", str(d),
        "--data_dir", str(d / "out")], "--config 48khz: audio_folder has the configs 24khz"),
      (["build-data", "audio_folder", "--data_dir", str(d / "out")], "needs --manual_dir"),
      (["pipeline", "--gin_file=pipeline/tiny.gin", f"--gin.Recipe.work_dir='{d / 'out'}'",
        "--only", "codecc", "--list"], "--only codecc: no step codecc"),
      (["pipeline", "--gin_file=pipeline/tiny.gin", f"--gin.Recipe.work_dir='{d / 'out'}'",
        "--redo", "semantic,nope"], "--redo semantic,nope: no step nope"),
      (["pipeline", "--gin_file=pipeline/nosuch.gin"], "gin file 'pipeline/nosuch.gin' not found"),
      (["generate", "--bundle", str(d / "nobundle"), "--prompt", "piano", "--out", wav_out],
       "nobundle"),
      (["generate", "--bundle", str(d), "--prompt", "piano", "--seconds", "-1", "--out",
        wav_out], "--seconds must be > 0"),
      (["codec", "encode", str(d / "tone.wav"), str(d / "out"), "--bundle", BUNDLE],
       "out: is a folder"),
      (["semantic", "tokenize", str(d / "tone.wav"), out, "--model_dir", str(d / "norun"),
        "--centroids", str(d / "c.npz")], "norun"),
      (["mulan", "embed", "--model_dir", str(d / "norun"), "--text", "piano", "--output",
        out], "norun"),
      (["tokenize", "--dataset", "music_captions/tiny_16khz", "--out", str(d / "out"),
        "--codec", BUNDLE, "--semantic_model_dir", str(d / "norun"), "--centroids",
        str(d / "c.npz"), "--mulan_model_dir", str(d / "norun"), "--mulan_rvq",
        str(d / "r.npz")], "norun"),
      (["export", "--out", str(d / "out" / "bundle")], "the following arguments are required"),
      (["align-decoder", "--out", str(d / "out" / "codec"), "--codec", BUNDLE,
        "--coarse_stage_dir", str(d / "norun"), "--tokens", str(d), "--dataset",
        "music_captions/tiny_16khz"], "norun"),
      (["align-decoder", "--out", str(d / "out" / "codec"), "--codec", BUNDLE,
        "--coarse_stage_dir", str(d / "norun"), "--tokens", str(d), "--dataset",
        "music_captions/tiny_16khz", "--steps", "0"], "--steps: 0 is not >= 1"),
      (["align-decoder", "--out", str(d / "out" / "codec"), "--codec", BUNDLE,
        "--coarse_stage_dir", str(d / "norun"), "--tokens", str(d), "--dataset",
        "music_captions/tiny_16khz", "--overlap", "1"], "--overlap: 1.0 is not in [0, 1)"),
      (["align-decoder", "--out", str(d / "out" / "codec"), "--codec", BUNDLE,
        "--coarse_stage_dir", str(d / "norun"), "--tokens", str(d), "--dataset",
        "music_captions/tiny_16khz", "--level_clips", "-1"], "--level_clips: -1 is negative"),
      (["align-decoder", "--out", str(d / "out" / "codec"), "--codec", BUNDLE,
        "--coarse_stage_dir", str(d / "norun"), "--tokens", str(d), "--dataset",
        "music_captions/tiny_16khz", "--guidance_scale", "2", "--no_guidance"],
       "not allowed with argument --guidance_scale"),
      (["evaluate", "--generated", str(d / "nowhere"), "--reference", str(d), "--out",
        str(d / "out" / "r.json")], "nowhere: no such file or folder"),
      (["listen", "--pairs", str(d / "nopairs")], "nopairs"),
      (["codec", "encode", str(d / "tone.wav"), str(d / "notes.txt" / "x.npy"), "--bundle",
        BUNDLE], "notes.txt/x.npy: cannot write there"),
      (["generate", "--bundle", BUNDLE, "--prompt", "piano", "--out",
        str(d / "notes.txt" / "a" / "x.wav")], "cannot write there"),
      (["nosuchcommand"], "unknown command 'nosuchcommand'"),
  ]


def test_bad_arguments_give_one_line_and_exit_2(folder, capsys):
  before = sorted(os.listdir(folder / "out"))
  for argv, expected in _cases(folder):
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["musiclm-jax", *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2, (argv, err)
    assert len(lines) == 1 and lines[0].startswith("error:"), (argv, err)
    assert expected in lines[0], (argv, lines[0])
    assert sorted(os.listdir(folder / "out")) == before, argv


def test_every_command_help_exits_0_and_lists_flags(capsys):
  for command in ("codec", "build-data", "semantic", "mulan", "tokenize", "generate", "export",
                  "align-decoder", "pipeline", "evaluate", "listen"):
    with pytest.raises(SystemExit) as exit_info:
      cli.main(["musiclm-jax", command, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "usage:" in out and "--" in out, command
  with pytest.raises(SystemExit):
    cli.main(["musiclm-jax", "generate", "--help"])
  assert "TEXT@START-END" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    cli.main(["musiclm-jax", "tokenize", "--help"])
  assert "written as the token shards the LM stages train on" in capsys.readouterr().out


@pytest.mark.parametrize("command,args,code,expected", [
    ("train", ["--help"], 0, "--gin_file"),
    ("eval", ["--help"], 0, "--gin_file"),
    ("infer", ["--helpfull"], 0, "--gin_search_paths"),
    ("train", ["--gin_file=lm/tiny.gin", "--gin_file=tasks/synthetic_arpeggios.gin"], 2,
     "error: set the run folder with --gin.MODEL_DIR"),
    ("train", ["--gin_file=lm/tiny.gin", "--gin.MODEL_DIR='/tmp/unused'"], 2,
     "error: the gin files leave TARGET_VOCAB_SIZE unset"),
    ("train", ["--gin_file=lm/nosuch.gin"], 2, "gin file 'lm/nosuch.gin' not found"),
])
def test_gin_commands_help_and_config_errors(command, args, code, expected, tmp_path):
  result = subprocess.run([sys.executable, "-m", "musiclm_jax.cli", command, *args],
                          cwd=str(tmp_path), env=harness.env_with_devices(1),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == code, result.stderr[-2000:]
  assert expected in (result.stdout if code == 0 else result.stderr)
  if code == 2:
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "Path not found" not in result.stderr


def test_tensorflow_start_up_notices_are_silenced_unless_asked_for(tmp_path):
  code = "import musiclm_jax, tensorflow as tf; print(tf.constant(2.0).numpy())"
  env = harness.env_with_devices(1)
  env.pop("TF_CPP_MIN_LOG_LEVEL")
  quiet = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=300)
  assert quiet.returncode == 0 and quiet.stdout.strip() == "2.0"
  assert "I0000" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr
  env["TF_CPP_MIN_LOG_LEVEL"] = "0"   # the user asked for TensorFlow's notices
  loud = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                        capture_output=True, text=True, timeout=300)
  assert loud.returncode == 0 and "I0000" in loud.stderr
