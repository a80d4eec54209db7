"""A small built-in task that needs no data on disk: arpeggios conditioned on a chord.

Each example's prefix names a chord and a figure -- [root (0-11), quality (12-15: major,
minor, diminished, augmented), figure (16-19: up, down, up-down, broken)] -- and its targets
are that arpeggio as MIDI-like pitch ids (vocabulary 48), repeated to the target length.
A model that learns the task must read the prefix (to start right) and copy its own past
(to continue): the same two skills the MusicLM stages need. `expected_targets` gives the
ground truth, so sampled continuations can be scored exactly.
"""

from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

TASK_NAME = "synthetic_arpeggios"
TARGET_VOCAB_SIZE = 48
PREFIX_VOCAB_SIZE = 20
PREFIX_LENGTH = 3
QUALITIES = {"major": (0, 4, 7), "minor": (0, 3, 7), "diminished": (0, 3, 6),
             "augmented": (0, 4, 8)}
FIGURES = ("up", "down", "up-down", "broken")
_BASE_PITCH = 12
_SPLIT_SEEDS = {"train": 0, "validation": 1}
_EXAMPLES_PER_SPLIT = {"train": 8192, "validation": 512}


def _figure_cycle(root: int, quality: int, figure: int) -> list[int]:
  """One period of the arpeggio, as pitch ids in [0, TARGET_VOCAB_SIZE)."""
  intervals = list(QUALITIES.values())[quality]
  tones = [_BASE_PITCH + root + i for i in intervals] + [_BASE_PITCH + root + 12]
  name = FIGURES[figure]
  if name == "up":
    return tones
  if name == "down":
    return tones[::-1]
  if name == "up-down":
    return tones + tones[-2:0:-1]
  return [tones[0], tones[2], tones[1], tones[3]]  # broken


def expected_targets(prefix_tokens: np.ndarray, length: int) -> np.ndarray:
  """Ground-truth targets [batch, length] for prefixes [batch, 3]."""
  out = np.zeros((len(prefix_tokens), length), np.int32)
  for row, (root, quality, figure) in enumerate(np.asarray(prefix_tokens)):
    cycle = _figure_cycle(int(root), int(quality) - 12, int(figure) - 16)
    out[row] = [cycle[i % len(cycle)] for i in range(length)]
  return out


def random_prefixes(rng: np.random.Generator, count: int) -> np.ndarray:
  """[count, 3] random (root, quality, figure) prefixes."""
  return np.stack([rng.integers(0, 12, count), rng.integers(12, 16, count),
                   rng.integers(16, 20, count)], axis=1).astype(np.int32)


def sequence_metrics(targets, predictions) -> dict:
  """SeqIO metric fn: token accuracy and exact-match rate of sampled continuations."""
  correct = total = exact = 0
  for target, prediction in zip(targets, predictions):
    target, prediction = np.asarray(target), np.asarray(prediction)[: len(target)]
    matches = target[: len(prediction)] == prediction
    correct += int(matches.sum())
    total += len(target)
    exact += int(len(prediction) == len(target) and matches.all())
  return {"token_accuracy": correct / max(total, 1),
          "sequence_accuracy": exact / max(len(targets), 1)}


def _dataset_fn(split: str, shuffle_files: bool, seed=None, length: int = 64):
  del shuffle_files, seed  # Examples are generated deterministically per split.
  if split not in _SPLIT_SEEDS:
    raise ValueError(f"{TASK_NAME} has splits {sorted(_SPLIT_SEEDS)}, not {split!r}")
  rng = np.random.default_rng(_SPLIT_SEEDS[split])
  prefixes = random_prefixes(rng, _EXAMPLES_PER_SPLIT[split])
  return tf.data.Dataset.from_tensor_slices(
      {"prefix_tokens": prefixes, "targets": expected_targets(prefixes, length)})


def register(name: str = TASK_NAME, length: int = 64) -> None:
  """Registers the task (idempotent)."""
  if name in seqio.TaskRegistry.names():
    return
  vocab_prefix = seqio.PassThroughVocabulary(PREFIX_VOCAB_SIZE)
  vocab_target = seqio.PassThroughVocabulary(TARGET_VOCAB_SIZE)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FunctionDataSource(functools.partial(_dataset_fn, length=length),
                                      splits=tuple(_SPLIT_SEEDS),
                                      num_input_examples=_EXAMPLES_PER_SPLIT),
      preprocessors=[],
      output_features={
          "prefix_tokens": seqio.Feature(vocab_prefix, add_eos=False, dtype=tf.int32),
          "targets": seqio.Feature(vocab_target, add_eos=False, dtype=tf.int32)},
      metric_fns=[sequence_metrics],
  )


register()
