"""MusicGen's delay pattern: K residual-VQ levels modelled in parallel, level k k steps late.

A stage's targets are flattened RVQ frames, c[t, k] at position t * K + k. Modelled
flat, T frames take T * K transformer positions. With the delay pattern the transformer
takes one position per step, S = T + K - 1 steps, and at step s predicts c[s - k, k] for
every level k with one head each (Copet et al. 2023, "Simple and Controllable Music
Generation"):

    step s:     0        1        2        3       ...
    level 0:  c[0,0]   c[1,0]   c[2,0]   c[3,0]
    level 1:    -      c[0,1]   c[1,1]   c[2,1]
    level 2:    -        -      c[0,2]   c[1,2]

Step s reads the tokens emitted at step s - 1 (their embeddings summed; step 0 reads BOS),
so c[t, k] is conditioned on every c[t', k'] with t' + k' < t + k: a frame's finer levels
see its coarser ones, but its first level sees only the first level of the frame before,
the second level of the frame before that, and so on. The likelihood is still one of the
flattened targets, so losses and validation numbers compare with the flat model's.

Step tokens are [B, S, K] target ids (level k's ids, already offset by k * codes) with
EMPTY where a level has no token at that step.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp

EMPTY = -1  # a step without a token at this level: contributes no embedding


def num_steps(num_frames: int, levels: int) -> int:
  """S = T + K - 1: the steps that emit T frames of K levels."""
  return num_frames + levels - 1


def _step_index(num_frames: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
  """For each step s and level k: the frame s - k, clipped into range, and its validity.
  Two [S, K] arrays (numpy: static shapes)."""
  steps = np.arange(num_steps(num_frames, levels))[:, None]
  frames = steps - np.arange(levels)[None, :]
  valid = (frames >= 0) & (frames < num_frames)
  return np.clip(frames, 0, num_frames - 1), valid


def delay(frames: jnp.ndarray, fill: int = EMPTY) -> jnp.ndarray:
  """Frames [B, T, K, ...] -> steps [B, S, K, ...]: step s, level k holds frame s - k
  (`fill` where there is none)."""
  num_frames, levels = frames.shape[1], frames.shape[2]
  frame_of, valid = _step_index(num_frames, levels)
  gathered = frames[:, frame_of, np.arange(levels)[None, :]]
  valid = valid.reshape(valid.shape + (1,) * (frames.ndim - 3))
  return jnp.where(valid, gathered, fill)


def undelay(steps: jnp.ndarray) -> jnp.ndarray:
  """Steps [B, S, K, ...] -> frames [B, T, K, ...]: frame t, level k is step t + k's."""
  levels = steps.shape[2]
  num_frames = steps.shape[1] - levels + 1
  step_of = np.arange(num_frames)[:, None] + np.arange(levels)[None, :]
  return steps[:, step_of, np.arange(levels)[None, :]]


def step_inputs(targets: jnp.ndarray, levels: int, bos_id: int) -> jnp.ndarray:
  """Flattened targets [B, T * K] -> what each step reads [B, S, K]: step 0 reads BOS (at
  level 0), step s > 0 the tokens emitted at step s - 1."""
  targets = jnp.asarray(targets, jnp.int32)
  batch, length = targets.shape
  if length % levels:
    raise ValueError(f"{length} targets are not whole frames of {levels} levels")
  emitted = delay(targets.reshape(batch, length // levels, levels))
  first = jnp.full((batch, 1, levels), EMPTY, jnp.int32).at[:, 0, 0].set(bos_id)
  return jnp.concatenate([first, emitted[:, :-1]], axis=1)


def flat_step_logits(step_logits: jnp.ndarray) -> jnp.ndarray:
  """Per-step, per-level logits [B, S, K, V] -> the flattened targets' [B, T * K, V]."""
  frames = undelay(step_logits)
  return frames.reshape(frames.shape[0], -1, frames.shape[-1])
