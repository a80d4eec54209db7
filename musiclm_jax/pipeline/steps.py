"""Resumable multi-step jobs: an ordered list of steps, each done once, redone when its inputs
change.

A step's completion is recorded as `<work_dir>/.done/<name>.json` (its wall time, outputs, an
id, and the ids of the steps it read) only after it succeeded, so re-running the job skips
finished steps and redoes an interrupted one. A finished step is stale, and redone, once a
step it reads (`Step.inputs`) has been redone since: `--redo codec` remakes the codec's
export, the tokens, the stages that read acoustic tokens, the bundle and what follows, and
nothing else. A step's id is fresh each run, or for steps with small outputs a fingerprint
of them, so a redo that changes nothing (a codec trained no further) stops there. Training
steps resume from their own checkpoints when redone, unless their inputs changed: then their
run folder is set aside (renamed, never deleted) and they train afresh on the new inputs.
The other steps write their outputs atomically or from scratch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Callable, Dict, List, Optional, Sequence, Union

from musiclm_jax import atomic, fingerprint

# In a training step's run folder: the ids of the inputs it is training on.
RUN_INPUTS_FILE = "pipeline_inputs.json"


@dataclasses.dataclass
class Step:
  """One unit of the job.

  Attributes:
    name: short id (the marker file's name).
    description: what it does, for the stage list.
    run: argv of a command (run as a subprocess, output streamed) or a Python callable.
    outputs: paths the step makes (listed in its marker and the summary; each must exist
      after the step, or the step failed).
    inputs: names of earlier steps whose outputs it reads; it is stale once one is redone.
    run_dir: a training step's run folder (checkpoints): resumed when the step is redone on
      the same inputs, set aside when they changed.
    identified_by_content: its run id is a fingerprint of its outputs, so a redo that
      remakes them identical (a codec export of unchanged weights) leaves its readers
      current. For small outputs: they are read in full.
  """
  name: str
  description: str
  run: Union[Sequence[str], Callable[[], None]]
  outputs: Sequence[str] = ()
  inputs: Sequence[str] = ()
  run_dir: Optional[str] = None
  identified_by_content: bool = False


class StepFailed(RuntimeError):
  pass


def marker_path(work_dir: str, name: str) -> str:
  return os.path.join(work_dir, ".done", f"{name}.json")


def _read_json(path: str) -> Optional[dict]:
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise StepFailed(f"{path} is unreadable ({e}); delete it to go on (a step's marker: the "
                     "step is redone)") from e


def _marker(work_dir: str, name: str) -> Optional[dict]:
  return _read_json(marker_path(work_dir, name))


def _current_input_ids(work_dir: str, step: Step) -> Dict[str, Optional[str]]:
  """{input step: the id of its latest finished run (None: not finished)}. Markers written
  before ids existed are identified by their finish time."""
  ids = {}
  for name in step.inputs:
    marker = _marker(work_dir, name)
    ids[name] = None if marker is None else marker.get("run_id", marker.get("finished"))
  return ids


def changed_inputs(work_dir: str, step: Step) -> List[str]:
  """The inputs redone since `step` last finished ([] when it has not finished). Markers
  written before inputs were recorded compare finish times (to the second)."""
  marker = _marker(work_dir, step.name)
  if marker is None:
    return []
  if "inputs" not in marker:
    finished = {name: (_marker(work_dir, name) or {}).get("finished", "") for name in step.inputs}
    return [name for name in step.inputs if finished[name] > marker["finished"]]
  current = _current_input_ids(work_dir, step)
  return [name for name in step.inputs if marker["inputs"].get(name) != current[name]]


def is_done(work_dir: str, step: Step) -> bool:
  """Finished before, its outputs are still there, and its inputs have not been redone."""
  return (_marker(work_dir, step.name) is not None
          and all(os.path.exists(p) for p in step.outputs)
          and not changed_inputs(work_dir, step))


def _prepare_run_dir(work_dir: str, step: Step, input_ids: Dict[str, Optional[str]],
                     log) -> bool:
  """Sets a training step's run folder aside when it was trained on other inputs than the
  current ones (its checkpoints would resume on the new inputs), then records the current
  ones in it. A folder without the record (made by hand, or before records) is resumed
  unless the step's marker says its inputs changed. Returns whether a run is resumed."""
  recorded = _read_json(os.path.join(step.run_dir, RUN_INPUTS_FILE))
  if recorded is not None:
    changed = sorted(k for k in set(recorded) | set(input_ids)
                     if recorded.get(k) != input_ids.get(k))
  else:
    changed = changed_inputs(work_dir, step) if os.path.isdir(step.run_dir) else []
  if changed:
    aside = stamp = f"{step.run_dir}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while os.path.exists(aside):
      aside, n = f"{stamp}-{n}", n + 1
    os.replace(step.run_dir, aside)
    log(f"  {step.name}: its inputs were redone ({', '.join(changed)}): the run trained on "
        f"the old ones is kept in {aside}; training afresh")
  resumed = os.path.isdir(step.run_dir)
  os.makedirs(step.run_dir, exist_ok=True)
  atomic.atomic_write_text(os.path.join(step.run_dir, RUN_INPUTS_FILE),
                           json.dumps(input_ids, indent=1))
  return resumed


def _execute(step: Step) -> None:
  if callable(step.run):
    step.run()
    return
  command = [str(a) for a in step.run]
  code = subprocess.call(command)
  if code:
    raise StepFailed(f"step {step.name!r} failed (exit status {code}): {' '.join(command)}")


def _state(work_dir: str, step: Step, redo: Sequence[str]) -> str:
  changed = changed_inputs(work_dir, step)
  if changed:
    return f"  [stale: {', '.join(changed)} redone]"
  return "  [done]" if is_done(work_dir, step) and step.name not in redo else ""


def run_steps(steps: List[Step], work_dir: str, only: Optional[Sequence[str]] = None,
              redo: Sequence[str] = (), log=print) -> dict:
  """Runs the steps not yet done (or stale), in order; returns {name: seconds or 'skipped'}.

  only: run just these steps (every earlier step must be done and current); redo: run
  these even if done.
  """
  names = [s.name for s in steps]
  for name in list(only or ()) + list(redo):
    if name not in names:
      raise ValueError(f"unknown step {name!r}: the steps are {names}")
  for step in steps:
    unknown = [n for n in step.inputs if n not in names[:names.index(step.name)]]
    if unknown:
      raise ValueError(f"step {step.name!r} reads {unknown}, which are not earlier steps")
  log("steps:\n" + "\n".join(f"  {i + 1:2d}. {s.name:18s} {s.description}"
                             f"{_state(work_dir, s, redo)}" for i, s in enumerate(steps)))
  timings = {}
  for i, step in enumerate(steps):
    if only and step.name not in only:
      continue
    header = f"[{i + 1}/{len(steps)}] {step.name}: {step.description}"
    if is_done(work_dir, step) and step.name not in redo:
      log(f"{header} -- done before, skipped")
      timings[step.name] = "skipped"
      continue
    # Every earlier step is current here, unless `only` skipped one: then refuse (a stage
    # would train on tokens of tokenizers since redone).
    behind = [s.name for s in steps[:i] if not is_done(work_dir, s)]
    if behind:
      raise StepFailed(f"step {step.name!r} comes after {behind}, which are not done or are "
                       "stale: run them first")
    input_ids = _current_input_ids(work_dir, step)
    log(header)
    # A resumed training run's time adds to the time it had (the report's total is then
    # what the run cost); an interrupted attempt's time is not known and not counted.
    earlier = 0.0
    if step.run_dir and _prepare_run_dir(work_dir, step, input_ids, log):
      earlier = _recorded_seconds(_marker(work_dir, step.name))
    start = time.time()
    _execute(step)
    missing = [p for p in step.outputs if not os.path.exists(p)]
    if missing:
      raise StepFailed(f"step {step.name!r} finished without writing {missing}")
    seconds = time.time() - start
    run_id = (fingerprint.files_fingerprint(step.outputs) if step.identified_by_content
              else uuid.uuid4().hex)
    atomic.atomic_write_text(marker_path(work_dir, step.name), json.dumps(
        {"seconds": seconds, "total_seconds": earlier + seconds, "outputs": list(step.outputs),
         "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "run_id": run_id,
         "inputs": input_ids}, indent=1))
    log(f"[{i + 1}/{len(steps)}] {step.name} done in {seconds:.0f} s")
    timings[step.name] = seconds
    sys.stdout.flush()
  return timings


def _recorded_seconds(marker: Optional[dict]) -> float:
  if marker is None:
    return 0.0
  return marker.get("total_seconds", marker["seconds"])


def recorded_seconds(work_dir: str, steps: List[Step]) -> dict:
  """Each finished step's wall time from its marker (for the report): a training run's
  over every time it was resumed on the same inputs."""
  return {step.name: _recorded_seconds(_marker(work_dir, step.name)) for step in steps
          if _marker(work_dir, step.name) is not None}
