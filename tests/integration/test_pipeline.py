"""The main job's step runner (done steps are skipped, failures are not recorded, outputs
are checked) and its recipe at every size (gin/pipeline/*.gin parse, and every step uses
gin files and settings that exist)."""

import dataclasses
import glob
import json
import os
import sys

import gin
import numpy as np
import pytest

from musiclm_jax import fingerprint, gin_config
from musiclm_jax.pipeline import recipe as recipe_lib, steps as steps_lib


def test_steps_run_once_and_a_failed_step_is_redone(tmp_path):
  work = str(tmp_path)
  calls = []

  def make(name, fail=False):
    def run():
      calls.append(name)
      if fail:
        raise steps_lib.StepFailed(f"{name} broke")
      open(os.path.join(work, f"{name}.out"), "w").close()
    return steps_lib.Step(name, f"make {name}", run, [os.path.join(work, f"{name}.out")])

  steps = [make("a"), make("b", fail=True), make("c")]
  with pytest.raises(steps_lib.StepFailed, match="b broke"):
    steps_lib.run_steps(steps, work, log=lambda *_: None)
  assert calls == ["a", "b"] and steps_lib.is_done(work, steps[0])
  assert not steps_lib.is_done(work, steps[1])
  steps[1] = make("b")
  timings = steps_lib.run_steps(steps, work, log=lambda *_: None)
  assert calls == ["a", "b", "b", "c"] and timings["a"] == "skipped"
  steps_lib.run_steps(steps, work, redo=["c"], log=lambda *_: None)
  assert calls[-1] == "c" and len(calls) == 5
  os.remove(os.path.join(work, "a.out"))          # an output gone: the step is redone
  steps_lib.run_steps(steps, work, only=["a"], log=lambda *_: None)
  assert calls[-1] == "a"
  # A command that exits non-zero, and one that writes nothing it promised.
  with pytest.raises(steps_lib.StepFailed, match="exit status 3"):
    steps_lib.run_steps([steps_lib.Step("x", "x", [sys.executable, "-c", "exit(3)"])], work,
                        log=lambda *_: None)
  with pytest.raises(steps_lib.StepFailed, match="without writing"):
    steps_lib.run_steps([steps_lib.Step("y", "y", lambda: None, [str(tmp_path / "nope")])],
                        work, log=lambda *_: None)
  with pytest.raises(ValueError, match="unknown step 'z'"):
    steps_lib.run_steps(steps, work, only=["z"], log=lambda *_: None)


def test_a_redone_step_makes_the_steps_reading_it_stale_and_their_runs_start_afresh(tmp_path):
  work = str(tmp_path)
  calls = []
  run_dir = os.path.join(work, "runs", "stage")

  def make(name):
    def run():
      calls.append(name)
      open(os.path.join(work, f"{name}.out"), "w").close()
    return run

  def train():                 # resumes: counts its steps in its run folder
    calls.append("stage")
    path = os.path.join(run_dir, "steps")
    done = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
      f.write(str(done + 1))

  def step(name, inputs=(), run=None, **kw):
    return steps_lib.Step(name, name, run or make(name), inputs=inputs, **kw)

  steps = [step("data"), step("tok", ["data"]), step("side", ["data"]),
           step("stage", ["tok"], train, outputs=[run_dir], run_dir=run_dir),
           step("export", ["stage", "side"])]
  quiet = lambda *_: None
  steps_lib.run_steps(steps, work, log=quiet)
  assert calls == ["data", "tok", "side", "stage", "export"]
  # Redone on the same inputs: the run resumes, and its time adds to the first run's.
  first = json.load(open(steps_lib.marker_path(work, "stage")))["seconds"]
  steps_lib.run_steps(steps, work, redo=["stage"], log=quiet)
  assert calls[5:] == ["stage", "export"]
  assert open(os.path.join(run_dir, "steps")).read() == "2"
  second = json.load(open(steps_lib.marker_path(work, "stage")))
  assert steps_lib.recorded_seconds(work, steps)["stage"] == first + second["seconds"]
  # An input redone: what reads it, directly or not, is redone; the rest is skipped; the
  # run trained on the old input is kept aside and a fresh one starts.
  assert steps_lib.is_done(work, steps[3])
  timings = steps_lib.run_steps(steps, work, redo=["tok"], log=quiet)
  assert calls[7:] == ["tok", "stage", "export"] and timings["side"] == "skipped"
  assert open(os.path.join(run_dir, "steps")).read() == "1"
  aside = glob.glob(run_dir + ".stale-*")
  assert len(aside) == 1 and open(os.path.join(aside[0], "steps")).read() == "2"
  steps_lib.run_steps(steps, work, log=quiet)
  assert len(calls) == 10                      # everything current
  # `only` refuses to run a step behind a stale one.
  steps_lib.run_steps(steps, work, only=["tok"], redo=["tok"], log=quiet)
  assert steps_lib.changed_inputs(work, steps[3]) == ["tok"]
  with pytest.raises(steps_lib.StepFailed, match=r"comes after \['stage'\]"):
    steps_lib.run_steps(steps, work, only=["export"], redo=["export"], log=quiet)
  # A folder from before inputs were recorded: finish times tell, and a stale run with no
  # record in its folder is set aside too.
  steps_lib.run_steps(steps, work, log=quiet)          # catches up: the stage afresh again
  assert len(glob.glob(run_dir + ".stale-*")) == 2
  for name, finished in (("tok", "2026-01-01 10:00:00"), ("stage", "2026-01-01 11:00:00")):
    marker = json.load(open(steps_lib.marker_path(work, name)))
    del marker["inputs"], marker["run_id"]
    marker["finished"] = finished
    json.dump(marker, open(steps_lib.marker_path(work, name), "w"))
  os.remove(os.path.join(run_dir, steps_lib.RUN_INPUTS_FILE))
  assert steps_lib.is_done(work, steps[3])
  steps_lib.run_steps(steps, work, redo=["tok"], log=quiet)
  assert calls[-3:] == ["tok", "stage", "export"] and len(glob.glob(run_dir + ".stale-*")) == 3
  with pytest.raises(ValueError, match="not earlier steps"):
    steps_lib.run_steps([step("a", ["b"]), step("b")], work, log=quiet)
  # A truncated marker is named, not taken as done or silently redone.
  with open(steps_lib.marker_path(work, "tok"), "w") as f:
    f.write('{"seconds": 1.0, "outp')
  with pytest.raises(steps_lib.StepFailed, match=r"tok\.json is unreadable"):
    steps_lib.run_steps(steps, work, log=quiet)


def test_a_step_identified_by_content_redone_unchanged_leaves_its_readers_current(tmp_path):
  work = str(tmp_path)
  export = os.path.join(work, "export")
  calls, weights = [], {"w": np.arange(4.0)}

  def export_weights():        # a folder with an .npz, its zip written another way each time
    calls.append("export")
    os.makedirs(export, exist_ok=True)
    save = np.savez_compressed if calls.count("export") % 2 else np.savez
    save(os.path.join(export, "weights.npz"), **weights)

  def read():
    calls.append("reader")

  steps = [steps_lib.Step("export", "export", export_weights, [export],
                          identified_by_content=True),
           steps_lib.Step("reader", "reader", read, inputs=["export"])]
  quiet = lambda *_: None
  steps_lib.run_steps(steps, work, log=quiet)
  first = open(os.path.join(export, "weights.npz"), "rb").read()
  steps_lib.run_steps(steps, work, redo=["export"], log=quiet)
  assert open(os.path.join(export, "weights.npz"), "rb").read() != first
  assert calls == ["export", "reader", "export"]
  weights["w"] = weights["w"] + 1                 # changed weights: the reader is redone
  steps_lib.run_steps(steps, work, redo=["export"], log=quiet)
  assert calls[3:] == ["export", "reader"]


def test_files_fingerprint_follows_contents_and_names(tmp_path):
  first, second = tmp_path / "a", tmp_path / "b"
  for folder in (first, second):
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "config.json").write_text('{"k": 1}')
    np.savez(folder / "c.npz", x=np.ones(3), y=np.zeros(2))
  assert fingerprint.files_fingerprint([str(first)]) == fingerprint.files_fingerprint(
      [str(second)])
  (second / "sub" / "config.json").rename(second / "sub" / "other.json")
  assert fingerprint.files_fingerprint([str(first)]) != fingerprint.files_fingerprint(
      [str(second)])
  np.savez(first / "c.npz", x=np.ones(3), y=np.ones(2))
  assert fingerprint.files_fingerprint([str(first / "c.npz")]) != (
      fingerprint.files_fingerprint([str(second / "c.npz")]))


def test_the_recipe_steps_read_only_earlier_steps_and_a_new_codec_leaves_the_semantic_stage(
    tmp_path):
  recipe = recipe_lib.Recipe(work_dir=str(tmp_path))
  steps = recipe_lib.build_steps(recipe, recipe_lib.size_settings("tiny"))
  names = [s.name for s in steps]
  for i, step in enumerate(steps):
    assert set(step.inputs) <= set(names[:i]), step.name
  readers = {s.name: set(s.inputs) for s in steps}

  def downstream(name):
    out, frontier = set(), {name}
    while frontier:
      frontier = {s for s, ins in readers.items() if ins & frontier} - out
      out |= frontier
    return out

  assert downstream("codec") == {"codec_export", "tokenize", "coarse", "fine", "export",
                                 "generate", "evaluate", "report"}
  assert "semantic" in downstream("kmeans") and "semantic" in downstream("mulan")
  assert {s.name for s in steps if s.run_dir} == {"codec", "w2v_bert", "mulan", *recipe_lib.STAGES}
  export = next(s for s in steps if s.name == "export").run
  assert "--no_fine_stage" not in export
  skipping = recipe_lib.build_steps(dataclasses.replace(recipe, skip_fine_stage=True),
                                    recipe_lib.size_settings("tiny"))
  assert next(s for s in skipping if s.name == "export").run == export + ["--no_fine_stage"]
  # With an aligned decoder, the bundle renders with the codec it fine-tunes after the
  # coarse stage; the tokens stay the codec's.
  aligned = recipe_lib.build_steps(dataclasses.replace(recipe, aligned_decoder_steps=500),
                                   recipe_lib.size_settings("tiny"))
  names = [s.name for s in aligned]
  assert names.index("coarse") < names.index("aligned_decoder") < names.index("export")
  step = aligned[names.index("aligned_decoder")]
  assert step.run[2:4] == ["musiclm_jax.cli", "align-decoder"] and "500" in step.run
  assert set(step.inputs) == {"data", "codec_export", "tokenize", "coarse"}
  aligned_export = aligned[names.index("export")]
  assert "aligned_decoder" in aligned_export.inputs
  codec_flag = aligned_export.run.index("--codec") + 1
  assert aligned_export.run[codec_flag] == step.outputs[0] == str(tmp_path / "aligned_codec")
  assert export[export.index("--codec") + 1] == str(tmp_path / "codec")
  cheap = recipe_lib.build_steps(
      dataclasses.replace(recipe, aligned_decoder_steps=500,
                          aligned_decoder_flags=("--overlap=0", "--no_guidance")),
      recipe_lib.size_settings("tiny"))
  assert next(s for s in cheap if s.name == "aligned_decoder").run == step.run + [
      "--overlap=0", "--no_guidance"]


RECIPE_FILES = sorted(os.path.basename(f) for f in glob.glob(
    os.path.join(gin_config.configs_dir(), "pipeline", "*.gin")))


@pytest.mark.parametrize("recipe_file", RECIPE_FILES)
def test_every_recipe_uses_existing_configs(recipe_file, tmp_path):
  gin.clear_config()
  gin_config.parse_gin_flags([f"pipeline/{recipe_file}"], [f"Recipe.work_dir='{tmp_path}'"],
                            finalize=False)
  recipe = recipe_lib.Recipe()
  gin.clear_config()
  size = recipe.size
  assert size in ("tiny", "small", "paper")
  settings = recipe_lib.size_settings(size, recipe.extra_bindings)
  steps = recipe_lib.build_steps(recipe, settings)
  names = [s.name for s in steps]
  assert names[:2] == ["data", "clips"] and names[-3:] == ["generate", "evaluate", "report"]
  for step in steps:
    if callable(step.run):
      continue
    for arg in step.run:
      if str(arg).startswith("--gin_file="):
        gin_config.resolve(arg.split("=", 1)[1], [gin_config.configs_dir()])  # exists
  kmeans = next(s for s in steps if s.name == "kmeans").run
  assert str(settings["SEMANTIC_CLUSTERS"]) == kmeans[kmeans.index("--clusters") + 1]
  # The stage files' layout is the tokenizers' of the same size (tests/unit/test_stage_gin.py).
  assert any(f"stages/{size}/coarse.gin" in a for s in steps if s.name == "coarse"
             for a in s.run)


def test_recipe_is_saved_with_the_run_and_changes_are_reported(tmp_path):
  recipe = recipe_lib.Recipe(work_dir=str(tmp_path), stage_steps=(3, 2, 1))
  assert recipe.save() == {}
  assert recipe_lib.Recipe.load(str(tmp_path)) == recipe
  longer = recipe_lib.Recipe(work_dir=str(tmp_path), stage_steps=(30, 20, 10))
  assert longer.save() == {"stage_steps": ([3, 2, 1], [30, 20, 10])}
  with pytest.raises(FileNotFoundError, match="a pipeline run"):
    recipe_lib.Recipe.load(str(tmp_path / "elsewhere"))
  # A moved (or copied) run folder is read with its paths at the new place.
  moved = tmp_path.parent / (tmp_path.name + "_moved")
  os.rename(tmp_path, moved)
  loaded = recipe_lib.Recipe.load(str(moved))
  assert loaded.work_dir == str(moved) and loaded.stage_steps == (30, 20, 10)
  assert loaded.path("bundle") == os.path.join(str(moved), "bundle")
  assert loaded.save() == {}


def test_a_given_codec_bundle_replaces_the_codec_training(tmp_path):
  """Recipe.codec_bundle: the codec_export step copies a checked bundle (a folder or one
  shipped in the package) and no codec is trained; a missing one is named."""
  from musiclm_jax.soundstream import codec as codec_lib
  recipe = recipe_lib.Recipe(work_dir=str(tmp_path / "run"),
                             codec_bundle="pretrained:tiny_16khz")
  steps = recipe_lib.build_steps(recipe, recipe_lib.size_settings("tiny"))
  names = [s.name for s in steps]
  assert "codec" not in names and names.index("codec_export") < names.index("tokenize")
  export = steps[names.index("codec_export")]
  assert callable(export.run) and export.identified_by_content and not export.inputs
  export.run()
  copied = codec_lib.Codec.load(recipe.path("codec"))
  shipped = codec_lib.Codec.load("pretrained:tiny_16khz")
  assert copied.config == shipped.config and copied.provenance == shipped.provenance
  assert copied.provenance["trained_with"] == "musiclm-jax train"
  assert (copied.config.sample_rate, copied.config.hop_length, copied.config.num_quantizers,
          copied.config.codebook_size) == (16000, 160, 8, 32)   # the tiny stages' layout
  with pytest.raises(FileNotFoundError, match="no pretrained codec 'nope'.*tiny_16khz"):
    recipe_lib.copy_codec("pretrained:nope", str(tmp_path / "other"))
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    recipe_lib.copy_codec(str(tmp_path / "missing"), str(tmp_path / "other"))
  assert not os.path.exists(tmp_path / "other")


def test_the_report_shows_what_the_codec_keeps(tmp_path):
  """The report's codec section: each clip and its resynthesis as WAVs, their spectrograms
  in one PNG, and a row of fidelity measures per clip with a mean."""
  from musiclm_jax.pipeline import report
  from musiclm_jax.soundstream import codec as codec_lib
  codec = codec_lib.Codec.load("pretrained:tiny_16khz")
  t = np.arange(16000) / 16000
  clips = [(0.3 * np.sin(2 * np.pi * f * t) * np.exp(-3 * (t % 0.25))).astype(np.float32)
           for f in (262.0, 392.0)]
  lines = report.codec_section(codec, ["a", "b"], ["C4 pulses", "G4 pulses"], clips,
                               str(tmp_path))
  assert (tmp_path / "codec_spectrograms.png").stat().st_size > 10_000
  for name in ("a_original", "a_codec", "b_original", "b_codec"):
    assert (tmp_path / "codec" / f"{name}.wav").exists()
  rows = [line for line in lines if line.startswith("| [")]
  assert len(rows) == 2 and any(line.startswith("| mean |") for line in lines)
  assert all(len(line.split("|")) == 9 for line in rows)


def test_the_report_shows_what_an_independent_tagger_hears():
  """Per clip: the tagger's top tags, and each tag the prompt names with its probability
  and rank. A real drum loop: 'drums' is named, and ranked among the first few."""
  from musiclm_jax.pipeline import report
  from tests import soundstream_fixtures
  loop = np.concatenate(list(soundstream_fixtures.real_clips(4)))
  cells = report.tagger_cells([loop, loop], 16000, ["a fast drum beat", "a solo oboe"])
  top, named = cells[0].split(" | ")
  assert len(top.split(", ")) == 3 and all(float(t.rsplit(" ", 1)[1]) <= 1 for t in
                                           top.split(", "))
  drums, fast = sorted(named.split(", "))
  assert drums.startswith("drums ") and int(drums.split("#")[1].rstrip(")")) <= 5, named
  assert fast.startswith("fast ")
  assert cells[1].endswith(" | -")          # an oboe: no MTT tag names it


def test_the_report_states_how_the_clips_were_made():
  """generated/settings.json holds the model's text conditioning and per-stage sampling (a
  skipped stage as null); the report turns it into one sentence."""
  import types
  from musiclm_jax.generation import musiclm as musiclm_lib
  from musiclm_jax.pipeline import report
  model = types.SimpleNamespace(
      text_conditioning=musiclm_lib.AUDIO_TOKEN_BANK,
      default_sampling=musiclm_lib.DEFAULT_SAMPLING | {"fine": musiclm_lib.NO_FINE_STAGE},
      codec=types.SimpleNamespace(provenance={"step": 7000}))
  settings = json.loads(json.dumps(report.generation_settings(model)))
  assert settings["sampling"]["fine"] is None
  assert settings["sampling"]["coarse"]["guidance_scale"] == 1.5
  line = report.describe_settings(settings)
  assert line.startswith("Text conditioning: `audio_token_bank`. Sampling: semantic ")
  assert "coarse temperature 1, top-k 250, guidance 1.5" in line
  assert line.endswith("fine skipped. Rendered by the codec's decoder.")
  model.codec.provenance["decoder_finetune"] = {"steps": 1500}
  line = report.describe_settings(report.generation_settings(model))
  assert line.endswith("fine skipped. Rendered by the codec's decoder fine-tuned on the "
                       "coarse stage's aligned tokens.")
  # settings.json of runs made before the decoder was recorded: nothing said of it.
  del settings["decoder"]
  assert report.describe_settings(settings).endswith("fine skipped.")
