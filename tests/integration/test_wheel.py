"""The package as a user installs it: a wheel built from the checkout, installed into a fresh
virtualenv outside it, runs its commands from another folder with the configs it carries.

The fresh virtualenv gets only the wheel; the dependencies (jax, TensorFlow, ...) come from
the test's own environment through a .pth file, which adds that site-packages folder
without running its .pth files, so the checkout's editable install stays invisible.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

from tests import harness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, cwd, env, timeout=600):
  """Runs a command that must succeed, with no ERROR-level log line."""
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, (
      f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n"
      f"{result.stderr[-3000:]}")
  assert not re.search(r"^(E\d{4} |ERROR)", result.stderr, flags=re.M), result.stderr[-3000:]
  return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(console script, python, environment, working folder) of the wheel's virtualenv."""
  tmp = tmp_path_factory.mktemp("wheel")
  env = harness.env_with_devices(1)
  env.pop("PYTHONPATH")
  # From a copy of the checkout's files (tracked, and new ones git does not ignore): a build
  # folder left in the checkout would carry modules that no longer exist into the wheel.
  source = tmp / "source"
  files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         check=True, capture_output=True).stdout.decode().split("\0")
  for name in filter(None, files):
    if os.path.isfile(os.path.join(ROOT, name)):
      os.makedirs(os.path.dirname(source / name), exist_ok=True)
      shutil.copy2(os.path.join(ROOT, name), source / name)
  # No build isolation: build with this environment's setuptools (no download).
  _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "-w", str(tmp / "dist"), str(source)], cwd=str(tmp), env=env)
  wheels = [f for f in os.listdir(tmp / "dist") if f.endswith(".whl")]
  assert len(wheels) == 1, wheels
  venv = tmp / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(tmp), env=env)
  python = str(venv / "bin" / "python")
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
              cwd=str(tmp), env=env).strip()
  with open(os.path.join(site, "dependencies.pth"), "w", encoding="utf-8") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
        str(tmp / "dist" / wheels[0])], cwd=str(tmp), env=env)
  work = tmp / "elsewhere"
  work.mkdir()
  return str(venv / "bin" / "musiclm-jax"), python, env, str(work)


def test_the_wheel_is_what_runs_and_carries_its_files(installed):
  _, python, env, work = installed
  out = _run([python, "-c", "import os, musiclm_jax, musiclm_jax.gin_config as g, "
              "musiclm_jax.tasks.builders as b; print(musiclm_jax.__file__); "
              "print(g.configs_dir()); print(b.dataset_dir('audio_folder'))"],
             cwd=work, env=env)
  package, configs, datasets = out.strip().splitlines()[-3:]
  venv = os.path.dirname(os.path.dirname(python))
  for path in (package, configs, datasets):
    assert path.startswith(venv) and not path.startswith(ROOT), path
  assert os.path.isfile(os.path.join(configs, "pipeline", "tiny.gin"))


def test_pipeline_list_generate_help_and_training_from_another_folder(installed):
  script, _, env, work = installed
  out = _run([script, "pipeline", "--gin_file=pipeline/tiny.gin",
              f"--gin.Recipe.work_dir='{os.path.join(work, 'demo')}'", "--list"],
             cwd=work, env=env)
  assert "codec" in out and "to do" in out
  assert "--bundle" in _run([script, "generate", "--help"], cwd=work, env=env)
  model_dir = os.path.join(work, "lm")
  _run([script, "train", *(f"--gin_file={f}" for f in harness.TINY_LM_GIN),
        f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=4",
        *(f"--gin.{b}" for b in harness.FAST_BINDINGS)], cwd=work, env=env)
  assert sorted(harness.losses(model_dir)) == [1, 2, 3, 4]
