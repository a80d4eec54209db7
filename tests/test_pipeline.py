"""The main job's step runner (done steps are skipped, failures are not recorded, outputs
are checked) and its recipe at every size (gin/pipeline/*.gin parse, and every step uses
gin files and settings that exist)."""

import glob
import os
import sys

import gin
import pytest

from musiclm_jax import gin_utils
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


RECIPE_FILES = sorted(os.path.basename(f) for f in glob.glob(
    os.path.join(gin_utils.REPO_GIN_DIR, "pipeline", "*.gin")))


@pytest.mark.parametrize("recipe_file", RECIPE_FILES)
def test_every_recipe_uses_existing_configs(recipe_file, tmp_path):
  gin.clear_config()
  gin_utils.parse_gin_flags([f"pipeline/{recipe_file}"], [f"Recipe.work_dir='{tmp_path}'"],
                            finalize=False)
  recipe = recipe_lib.Recipe()
  gin.clear_config()
  size = recipe.size
  assert size in ("tiny", "small", "paper")
  settings = recipe_lib.size_settings(size)
  steps = recipe_lib.build_steps(recipe, settings)
  names = [s.name for s in steps]
  assert names[:2] == ["data", "clips"] and names[-3:] == ["generate", "evaluate", "report"]
  for step in steps:
    if callable(step.run):
      continue
    for arg in step.run:
      if str(arg).startswith("--gin_file="):
        gin_utils._resolve(arg.split("=", 1)[1], [gin_utils.REPO_GIN_DIR])  # exists
  kmeans = next(s for s in steps if s.name == "kmeans").run
  assert str(settings["SEMANTIC_CLUSTERS"]) == kmeans[kmeans.index("--clusters") + 1]
  # The stage files' layout is the tokenizers' of the same size (tests/test_stage_gin.py).
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
