"""The training loop: steps, non-finite checks, checkpoints, metrics, evaluation, budgets.

One loop for every way of training: the `train` entry point feeds it SeqIO batches
(`data.DataIterator`) and saves Orbax checkpoints; benchmarks feed it batches made in memory
(`BatchFactory`) under a wall-clock budget. The loop imports neither TensorFlow nor Orbax:
what persists (a checkpoint manager, a metric writer, a progress bar) is handed in, so it
also runs on an accelerator image that has only JAX.

A batch source is any iterator of numpy batches (global batch, before sharding) with
`get_state()` / `set_state(state)`: its position, saved with each checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np

from musiclm_jax.training import models as models_lib

Batch = Mapping[str, np.ndarray]


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient norm."""


class BatchFactory:
  """Batches made by a function of a random generator: batch i comes from
  `make_batch(np.random.default_rng([seed, i]))`, so the sequence is reproducible and a
  restored position continues it exactly. An iterator factory for data held in memory."""

  def __init__(self, make_batch: Callable[[np.random.Generator], Batch], seed: int = 0):
    self._make_batch, self._seed, self._index = make_batch, seed, 0

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    batch = self._make_batch(np.random.default_rng([self._seed, self._index]))
    self._index += 1
    return batch

  def get_state(self) -> dict:
    return {"batches_consumed": self._index}

  def set_state(self, state: Mapping[str, int]) -> None:
    self._index = int(state.get("batches_consumed", 0))


@dataclasses.dataclass
class LoopResult:
  """What a call of `run` did. `stopped_by`: 'total_steps', 'max_steps_this_run' or
  'max_seconds'. `first_step_seconds` includes compiling the step; `seconds` is all of it."""
  state: Any
  start_step: int
  step: int
  stopped_by: str
  seconds: float
  first_step_seconds: Optional[float]


def host_scalars(step: int, metrics) -> dict:
  """A step's metrics as host floats (sums divided by their weights); raises
  NonFiniteLossError naming the step and the metrics that are NaN or infinite."""
  scalars = {k: float(v) for k, v in
             models_lib.metrics_to_scalars(jax.device_get(metrics)).items()}
  bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
  if bad:
    raise NonFiniteLossError(f"non-finite training metrics at step {step}: {bad}")
  return scalars


def run(trainer, state, start_step: int, batches, total_steps: int, *,
        checkpoints=None, writer=None, progress=None,
        evaluate: Optional[Callable[[Any, int], Any]] = None, eval_period: int = 0,
        log_period: int = 1, max_steps_this_run: Optional[int] = None,
        max_seconds: Optional[float] = None,
        on_step: Optional[Callable[[int, dict], None]] = None) -> LoopResult:
  """Trains from `start_step` until `total_steps` (or a limit below). Returns a LoopResult.

  Args:
    trainer: a `trainer.Trainer`; its partitioner shards each batch.
    state: the TrainState at `start_step` (fresh or restored).
    batches: the batch source (module docstring), at the position of `start_step`.
    checkpoints: a `checkpoints.CheckpointManager` (None: nothing saved). A state is saved
      when the manager's interval says so and at the last step, never before its metrics
      were checked.
    writer, progress: `metrics.MetricWriter` and `metrics.ProgressBar`, or None.
    evaluate: `evaluate(state, step)` every `eval_period` steps (0: never).
    log_period: write metrics every this many steps (and at the last).
    max_steps_this_run: stop after this many steps (preemptible jobs; tests).
    max_seconds: stop once this much wall time has passed (benchmark budgets); counted
      from the end of the first step, whose time is mostly compilation.
    on_step: `on_step(step, scalars)` with each step's checked metrics.
  """
  end_step = total_steps if max_steps_this_run is None else min(
      total_steps, start_step + max_steps_this_run)
  started = time.perf_counter()
  budget_start, first_step_seconds = None, None
  pending = None  # (step, metrics) not yet checked on the host: one step of lag keeps
  # the device busy while the host checks the previous step.

  def flush_pending():
    nonlocal pending
    if pending is None:
      return
    step, metrics = pending
    pending = None
    try:
      scalars = host_scalars(step, metrics)
    except NonFiniteLossError as e:
      if checkpoints is None:
        raise
      checkpoints.wait_until_finished()
      raise NonFiniteLossError(
          f"{e}. Training stopped; the last good checkpoint (step "
          f"{checkpoints.latest_step()}) in {checkpoints.directory} is intact. Lower the "
          "learning rate, enable clipping, or inspect the data near this step.") from None
    if writer is not None and (step % log_period == 0 or step == end_step):
      writer.write_scalars(step, scalars)
    if progress is not None:
      progress.update(step, {k: v for k, v in scalars.items()
                             if k == "loss" or k.endswith("/loss")})
    if on_step is not None:
      on_step(step, scalars)

  step, stopped_by = start_step, "total_steps"
  for step in range(start_step, end_step):
    state, metrics = trainer.train_step(state, trainer.partitioner.shard_batch(next(batches)))
    if budget_start is None:
      jax.block_until_ready(metrics)
      budget_start = time.perf_counter()
      first_step_seconds = budget_start - started
    flush_pending()
    pending = (step + 1, metrics)
    done = step + 1
    out_of_time = max_seconds is not None and time.perf_counter() - budget_start >= max_seconds
    last = done == end_step or out_of_time
    if checkpoints is not None and (checkpoints.should_save(done) or last):
      flush_pending()  # never save a state whose metrics were not checked
      checkpoints.save(done, state, batches.get_state(), force=True)
    if evaluate is not None and eval_period and done % eval_period == 0:
      flush_pending()
      evaluate(state, done)
    if out_of_time and done < end_step:
      step, stopped_by = done, "max_seconds"
      break
    step = done
  else:
    if end_step < total_steps:
      stopped_by = "max_steps_this_run"
  flush_pending()
  jax.block_until_ready(state)
  return LoopResult(state, start_step, step, stopped_by, time.perf_counter() - started,
                    first_step_seconds)
