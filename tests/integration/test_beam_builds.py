"""Dataset builds on Apache Beam give the one-process build's examples: `tfds build` with 2
worker processes, `build-data` with a file list, a worker failing once, and musiccaps."""

import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from musiclm_jax.tasks import audio as audio_tasks
from musiclm_jax.tasks import builders
from tests.integration import test_audio_folder as folder_fixture
from tests.integration import test_musiccaps as musiccaps_fixture

CONFIG = folder_fixture.CONFIG
MULTI_PROCESS = ("runner=DirectRunner,direct_num_workers=2,"
                 "direct_running_mode=multi_processing")
manual_dir = musiccaps_fixture.manual_dir  # the musiccaps fixture, for its Beam build


def _examples(data_dir, name):
  """{split: {id: (audio bytes, every other feature)}} of a built dataset."""
  out = {}
  for split in tfds.builder(name, data_dir=str(data_dir)).info.splits:
    ds = tfds.load(name, data_dir=str(data_dir), split=split, shuffle_files=False)
    rows = {}
    for ex in ds.as_numpy_iterator():
      key = ex["id"].decode()
      assert key not in rows, f"{key} written twice"
      rows[key] = (ex["audio"].tobytes(), {k: v for k, v in ex.items() if k != "audio"})
    out[split] = rows
  return out


def _beam_build(name, data_dir, config, manual_dir, options, patch=""):
  """builders.build on Beam in a fresh process (`patch`: Python run first), so no runner
  threads or servers outlive it in the test process (TensorFlow shares that process)."""
  code = (f"{patch}\nfrom musiclm_jax.tasks import builders\n"
          f"builders.build({name!r}, {str(data_dir)!r}, {config!r}, {str(manual_dir)!r}, "
          f"{options!r})")
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                           os.path.abspath(__file__)))))
  assert run.returncode == 0, run.stderr[-3000:]
  return tfds.builder(f"{name}/{config}", data_dir=str(data_dir))


def _report(data_dir, name):
  return tfds.builder(name, data_dir=str(data_dir)).info.metadata["build_report"]


def _without_counters(report):
  return {k: v for k, v in report.items() if k != "beam_counters"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """The fixture folder (real loops, captions, broken files) built in one process."""
  tmp = tmp_path_factory.mktemp("beam_builds")
  music = folder_fixture.make_folder(str(tmp / "music"))
  folder_fixture.build(music, tmp / "plain")
  name = f"audio_folder/{CONFIG}"
  return music, _examples(tmp / "plain", name), _report(tmp / "plain", name)


def test_tfds_build_on_two_worker_processes_gives_the_same_examples(one_process, tmp_path):
  music, expected, expected_report = one_process
  run = subprocess.run(
      [os.path.join(os.path.dirname(sys.executable), "tfds"), "build",
       audio_tasks.AUDIO_FOLDER_DIR, f"--config={CONFIG}", f"--manual_dir={music}",
       f"--data_dir={tmp_path}", f"--beam_pipeline_options={MULTI_PROCESS}"],
      capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  name = f"audio_folder/{CONFIG}"
  assert _examples(tmp_path, name) == expected
  report = _report(tmp_path, name)
  assert _without_counters(report) == expected_report  # every skipped file named
  assert sum(report["files_skipped"].values()) == 5
  counters = report["beam_counters"]
  assert counters["files_used"] == report["files_used"]
  assert counters["files_skipped"] == sum(report["files_skipped"].values())
  for reason, n in report["files_skipped"].items():
    assert counters[f"files_skipped_{reason}"] == n
  for split, n in report["clips"].items():
    assert counters[f"clips_{split}"] == n
  assert "Beam counters: " in run.stdout and "files_skipped_unreadable=2" in run.stdout
  # the workers' report files were read and removed
  version_dir = os.path.join(tmp_path, "audio_folder", CONFIG, "1.0.0")
  assert not [f for f in os.listdir(version_dir) if f.startswith(".build_report")]


def test_build_data_on_beam_reads_a_file_list(one_process, tmp_path):
  music, expected, _ = one_process
  listed = sorted(key.rsplit(":", 1)[0] for rows in expected.values() for key in rows)
  listed = sorted(set(listed))[:-1] + ["broken/nan.wav"]  # one file left out, one broken in
  with open(os.path.join(music, "files.txt"), "w") as f:
    f.write("# made by find\n" + "".join(f"./{rel}\n" for rel in listed) + "notes.md\n\n")
  try:
    plain = builders.build("audio_folder", str(tmp_path / "plain"), CONFIG, music)
    beam = _beam_build("audio_folder", tmp_path / "beam", CONFIG, music,
                       "runner=DirectRunner")
  finally:
    os.remove(os.path.join(music, "files.txt"))
  name = f"audio_folder/{CONFIG}"
  got = _examples(tmp_path / "beam", name)
  assert got == _examples(tmp_path / "plain", name)
  assert sorted({k.rsplit(":", 1)[0] for rows in got.values() for k in rows}) == listed[:-1]
  report = beam.info.metadata["build_report"]
  assert report["files_found"] == len(listed) == plain.info.metadata[
      "build_report"]["files_found"]
  assert report["files_skipped"] == {"non_finite": 1}


def test_a_worker_failing_once_is_retried_and_each_example_written_once(one_process,
                                                                        tmp_path):
  """The runner that retries failed bundles in-process (BundleBasedDirectRunner; cluster
  runners do the same across machines): one file's decode raises once."""
  music, expected, expected_report = one_process
  failed = tmp_path / "failed-once"
  patch = f"""
import os
from musiclm_jax.audio import io as audio_io
load_audio = audio_io.load_audio
def flaky(path, *args, **kwargs):
  if path.endswith("bass_voxy_c.flac") and not os.path.exists({str(failed)!r}):
    open({str(failed)!r}, "w").write(path)
    raise RuntimeError("worker lost while decoding " + path)
  return load_audio(path, *args, **kwargs)
audio_io.load_audio = flaky
"""
  builder = _beam_build("audio_folder", tmp_path / "tfds", CONFIG, music,
                        "runner=BundleBasedDirectRunner", patch)
  assert failed.exists()  # the failure happened
  assert _examples(tmp_path / "tfds", f"audio_folder/{CONFIG}") == expected
  report = builder.info.metadata["build_report"]
  assert _without_counters(report) == expected_report
  # The report (from the committed outputs) is exact; this runner's counters also keep
  # the failed attempt's increments (the bundle's files before the failure).
  assert report["beam_counters"]["files_used"] > report["files_used"]


def test_musiccaps_on_beam_gives_the_same_examples(manual_dir, tmp_path):
  root, _ = manual_dir
  plain = builders.build("musiccaps", str(tmp_path / "plain"), "16khz", root)
  beam = _beam_build("musiccaps", tmp_path / "beam", "16khz", root, "runner=DirectRunner")
  assert (_examples(tmp_path / "beam", "musiccaps/16khz")
          == _examples(tmp_path / "plain", "musiccaps/16khz"))
  report = beam.info.metadata["build_report"]
  assert _without_counters(report) == plain.info.metadata["build_report"]
  assert report["beam_counters"] == {"skipped_length_mismatch": 1, "skipped_missing": 1,
                                     "skipped_unreadable": 1, "written_balanced_1k": 2,
                                     "written_test": 1, "written_train": 1}


def test_build_data_cli_names_a_split_no_file_reaches(tmp_path):
  music = tmp_path / "music"
  music.mkdir()
  samples = folder_fixture._samples_dir()  # pylint: disable=protected-access
  os.symlink(os.path.join(samples, "bass_hard_c.flac"), music / "bass_hard_c.flac")
  run = subprocess.run(
      [sys.executable, "-m", "musiclm_jax.cli", "build-data", "audio_folder",
       f"--manual_dir={music}", f"--data_dir={tmp_path / 'tfds'}", f"--config={CONFIG}",
       "--beam_pipeline_options=runner=DirectRunner"],
      capture_output=True, text=True, timeout=600)
  assert run.returncode == 2, run.stderr[-2000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "examples is 0 for split" in last, run.stderr[-2000:]
  assert "Traceback" not in run.stderr
  assert not os.path.exists(tmp_path / "tfds" / "audio_folder" / CONFIG / "1.0.0")
