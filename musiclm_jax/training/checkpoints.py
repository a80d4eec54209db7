"""Checkpoints on Orbax `CheckpointManager` (cf. `t5x.checkpoints`).

Each step directory holds three items, written atomically together (Orbax writes to a
temporary directory and renames it when every item is complete):
  state          the whole `TrainState` (params, optimizer states, EMA, mutables), sharded;
  data_iterator  the input pipeline's position (JSON), so a resumed run sees the same data;
  run_info       the operative gin config and the package version (JSON).
Saving is asynchronous: training continues while the arrays are written.

Restoring takes an abstract state carrying the *target* shardings, so a checkpoint written
on one mesh restores onto any other. A step that cannot be read (truncated or corrupted
files) is moved aside -- never deleted -- and the next older step is used, with a warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging as std_logging
import os
import time
from typing import Any, Optional, Tuple

import gin
import jax
import orbax.checkpoint as ocp
from absl import logging

import musiclm_jax

PyTree = Any
CORRUPT_SUFFIX = ".unreadable"


class NoUsableCheckpointError(RuntimeError):
  """Checkpoints exist in model_dir but none of them can be restored."""


class UnreadableCheckpointError(ValueError):
  """The checkpoint asked for exists but cannot be read (truncated or damaged files)."""


@dataclasses.dataclass
class Restored:
  step: int
  state: PyTree
  data_iterator: dict
  run_info: dict


@gin.configurable
class CheckpointManager:
  """Save every N steps (async), keep the last K, resume from the newest readable step."""

  def __init__(self, model_dir: str, save_interval_steps: int = 1000, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
    self.save_interval_steps = save_interval_steps
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps, max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save, create=True)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data_iterator", "run_info"))

  # ---- queries -----------------------------------------------------------------------------

  def all_steps(self):
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self._manager.should_save(step)

  # ---- saving ------------------------------------------------------------------------------

  def save(self, step: int, state: PyTree, data_iterator_state: dict,
           force: bool = False) -> bool:
    """Starts an asynchronous save when `step` is due (or `force`); returns whether it did."""
    run_info = {"gin_config": gin.operative_config_str(),
                "musiclm_jax_version": musiclm_jax.__version__,
                "jax_version": jax.__version__, "process_count": jax.process_count(),
                "saved_at_unix": time.time()}
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iterator=ocp.args.JsonSave(data_iterator_state),
        run_info=ocp.args.JsonSave(run_info)), force=force)

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()

  # ---- restoring ---------------------------------------------------------------------------

  def restore(self, abstract_state: PyTree, step: Optional[int] = None) -> Optional[Restored]:
    """Restores `step` (default: the newest readable one) onto `abstract_state`'s shardings.

    Returns None when model_dir has no checkpoint. When `step` is None and the newest
    checkpoint cannot be read, it is moved aside (suffix '.unreadable') and older ones are
    tried in turn.
    """
    steps = self.all_steps()
    if not steps:
      return None
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"No checkpoint for step {step} in {self.directory}; "
                                f"available steps: {steps}")
      return self._restore_step(step, abstract_state)
    errors = []
    for candidate in reversed(steps):
      try:
        with _orphaned_reads_silenced():
          return self._restore_step(candidate, abstract_state)
      except Exception as e:  # pylint: disable=broad-except  # any unreadable step
        moved = self._move_aside(candidate)
        message = (f"Checkpoint at step {candidate} in {self.directory} is unreadable "
                   f"({type(e).__name__}: {str(e)[:300]}); moved it to {moved} and "
                   f"falling back to the previous checkpoint.")
        logging.warning(message)
        print(f"WARNING: {message}", flush=True)
        errors.append(f"step {candidate}: {type(e).__name__}: {str(e)[:200]}")
    raise NoUsableCheckpointError(
        f"No checkpoint in {self.directory} could be restored: " + "; ".join(errors))

  def _restore_step(self, step: int, abstract_state: PyTree) -> Restored:
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_iterator=ocp.args.JsonRestore(),
        run_info=ocp.args.JsonRestore()))
    return Restored(step=step, state=restored["state"],
                    data_iterator=dict(restored["data_iterator"] or {}),
                    run_info=dict(restored["run_info"] or {}))

  def _move_aside(self, step: int) -> str:
    """Renames an unreadable step directory out of Orbax's view, keeping its files."""
    source = os.path.join(self.directory, str(step))
    target = f"{source}{CORRUPT_SUFFIX}"
    if jax.process_index() == 0 and os.path.exists(source):
      suffix = 1
      while os.path.exists(target):
        target = f"{source}{CORRUPT_SUFFIX}.{suffix}"
        suffix += 1
      os.rename(source, target)
    self._manager.reload()
    return target


@contextlib.contextmanager
def _orphaned_reads_silenced():
  """Orbax reads a step's arrays concurrently; when one read fails, the other reads' futures
  are dropped holding the same error, and asyncio logs each when it is collected ("exception
  was never retrieved": pages of tensorstore specs). The one warning `restore` prints says
  it all, so collect them here, with that message filtered out."""
  logger = std_logging.getLogger("asyncio")
  never_retrieved = lambda record: "exception was never retrieved" not in record.getMessage()
  logger.addFilter(never_retrieved)
  try:
    yield
  finally:
    gc.collect()
    logger.removeFilter(never_retrieved)


def restore_state(model_dir: str, abstract_state: PyTree,
                        step: Optional[int] = None) -> Tuple[int, PyTree]:
  """(step, state) of a model_dir's checkpoint, for evaluation and inference."""
  manager = CheckpointManager(model_dir, async_save=False)
  try:
    restored = manager.restore(abstract_state, step)
  finally:
    manager.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint found in {manager.directory}")
  return restored.step, restored.state


def restore_numpy_state(model_dir: str, step: Optional[int] = None) -> Tuple[int, PyTree]:
  """(step, the saved TrainState as nested dicts of host numpy arrays).

  Needs no model, mesh or abstract state, and reads checkpoints written by any device
  topology (e.g. a multi-host job): for exporting and inspecting. `step` None = newest.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  directory = os.path.join(os.path.abspath(model_dir), "checkpoints")
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
      directory) else []
  if not steps:
    raise FileNotFoundError(f"No checkpoint found in {directory}")
  step = steps[-1] if step is None else step
  if step not in steps:
    raise FileNotFoundError(f"No checkpoint for step {step} in {directory}; have {steps}")
  path = os.path.join(directory, str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    with _orphaned_reads_silenced():
      metadata = checkpointer.metadata(path)
      if metadata is None or metadata.item_metadata is None:
        raise ValueError("no readable metadata")
      tree = metadata.item_metadata.tree
      restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      return step, checkpointer.restore(path, restore_args=restore_args)
  except Exception as e:  # pylint: disable=broad-except  # any damage: one line naming it
    # ValueError: the command line reports it in one line, exit status 2. Nothing is moved
    # aside here (unlike CheckpointManager.restore): reading for export changes no run.
    raise UnreadableCheckpointError(
        f"checkpoint at step {step} in {directory} is unreadable "
        f"({type(e).__name__}: {str(e)[:200]})") from e
