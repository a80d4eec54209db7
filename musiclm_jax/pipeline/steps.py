"""Resumable multi-step jobs: an ordered list of steps, each done once.

A step's completion is recorded as `<work_dir>/.done/<name>.json` (its wall time and
outputs) only after it succeeded, so re-running the job skips finished steps and redoes an
interrupted one; training steps resume from their own checkpoints when redone, the others
write their outputs atomically or from scratch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Callable, List, Optional, Sequence, Union

from musiclm_jax import atomic


@dataclasses.dataclass
class Step:
  """One unit of the job.

  Attributes:
    name: short id (the marker file's name).
    description: what it does, for the stage list.
    run: argv of a command (run as a subprocess, output streamed) or a Python callable.
    outputs: paths the step makes (listed in its marker and the summary; each must exist
      after the step, or the step failed).
  """
  name: str
  description: str
  run: Union[Sequence[str], Callable[[], None]]
  outputs: Sequence[str] = ()


class StepFailed(RuntimeError):
  pass


def marker_path(work_dir: str, name: str) -> str:
  return os.path.join(work_dir, ".done", f"{name}.json")


def is_done(work_dir: str, step: Step) -> bool:
  """Finished before, and its outputs are still there."""
  return (os.path.exists(marker_path(work_dir, step.name))
          and all(os.path.exists(p) for p in step.outputs))


def _execute(step: Step) -> None:
  if callable(step.run):
    step.run()
    return
  command = [str(a) for a in step.run]
  code = subprocess.call(command)
  if code:
    raise StepFailed(f"step {step.name!r} failed (exit status {code}): {' '.join(command)}")


def run_steps(steps: List[Step], work_dir: str, only: Optional[Sequence[str]] = None,
              redo: Sequence[str] = (), log=print) -> dict:
  """Runs the steps not yet done, in order; returns {name: seconds or 'skipped'}.

  only: run just these steps (their predecessors must be done); redo: run these even if
  done.
  """
  names = [s.name for s in steps]
  for name in list(only or ()) + list(redo):
    if name not in names:
      raise ValueError(f"unknown step {name!r}: the steps are {names}")
  log("steps:\n" + "\n".join(
      f"  {i + 1:2d}. {s.name:18s} {s.description}"
      f"{'  [done]' if is_done(work_dir, s) and s.name not in redo else ''}"
      for i, s in enumerate(steps)))
  timings = {}
  for i, step in enumerate(steps):
    if only and step.name not in only:
      continue
    header = f"[{i + 1}/{len(steps)}] {step.name}: {step.description}"
    if is_done(work_dir, step) and step.name not in redo:
      log(f"{header} -- done before, skipped")
      timings[step.name] = "skipped"
      continue
    log(f"{header}")
    start = time.time()
    _execute(step)
    missing = [p for p in step.outputs if not os.path.exists(p)]
    if missing:
      raise StepFailed(f"step {step.name!r} finished without writing {missing}")
    seconds = time.time() - start
    atomic.atomic_write_text(marker_path(work_dir, step.name), json.dumps(
        {"seconds": seconds, "outputs": list(step.outputs),
         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1))
    log(f"[{i + 1}/{len(steps)}] {step.name} done in {seconds:.0f} s")
    timings[step.name] = seconds
    sys.stdout.flush()
  return timings


def recorded_seconds(work_dir: str, steps: List[Step]) -> dict:
  """Each finished step's wall time from its marker (for the report)."""
  out = {}
  for step in steps:
    path = marker_path(work_dir, step.name)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        out[step.name] = json.load(f)["seconds"]
  return out
