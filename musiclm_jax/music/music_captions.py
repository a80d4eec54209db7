"""The project's captioned music set: corpus pieces rendered with varied performances, each
with a MusicCaps-style caption written from what is known of the rendering.

Example `index` of a set with seed `seed` is a pure function of (seed, index): the piece, the
instruments, tempo, transposition, dynamics, drums and excerpt are drawn from
`np.random.default_rng([seed, index])`. The split is a function of the *piece* alone, so no
piece is heard in two splits (a held-out caption is also a held-out piece).

  plan = plan_example(spec, index)       # cheap: what will be played
  ex = render_example(spec, plan)        # audio float32 [clip_samples], caption, metadata
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import multiprocessing
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from musiclm_jax.music import corpus, render

PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_PITCH_CLASS = {"C": 0, "C#": 1, "Db": 1, "D": 2, "D#": 3, "Eb": 3, "E": 4, "Fb": 4, "E#": 5,
                "F": 5, "F#": 6, "Gb": 6, "G": 7, "G#": 8, "Ab": 8, "A": 9, "A#": 10,
                "Bb": 10, "B": 11, "Cb": 11, "B#": 0}
# Tempo range (BPM, quarter notes) and chance of a drum kit, per style.
STYLE_TEMPO = {"baroque chorale": (56, 100), "renaissance choral polyphony": (60, 96),
               "Italian madrigal": (66, 112), "fiddle tune": (88, 160),
               "Irish folk tune": (84, 150)}
STYLE_DRUMS = {"fiddle tune": 0.4, "Irish folk tune": 0.4}
SLOW_BELOW, FAST_ABOVE = 76, 112      # tempo words: slow < 76 <= moderate <= 112 < fast
SOFT_BELOW, LOUD_ABOVE = 64, 104      # MIDI velocity: softly / loudly


@dataclasses.dataclass(frozen=True)
class MusicCaptionsSpec:
  """What set to make (a TFDS builder config holds one)."""
  num_examples: int
  clip_seconds: float
  sample_rate: int
  soundfont: str = "timgm6mb-soundfont"
  seed: int = 0
  validation_percent: float = 10.0
  test_percent: float = 10.0

  @property
  def clip_samples(self) -> int:
    return int(round(self.clip_seconds * self.sample_rate))


@dataclasses.dataclass(frozen=True)
class Plan:
  """One example's piece and performance (everything but the audio)."""
  index: int
  piece: corpus.PieceRef
  ensemble: str                 # e.g. 'a string quartet', 'a solo violin'
  instruments: Tuple[str, ...]  # per voice, top down (distinct names in caption order)
  performance: render.Performance
  start_quarter: float
  key: Tuple[str, str]          # (tonic after transposition, mode)
  split: str


def split_of(piece: corpus.PieceRef, spec: MusicCaptionsSpec) -> str:
  bucket = piece.split_hash() % 10000 / 100.0
  if bucket < spec.test_percent:
    return "test"
  if bucket < spec.test_percent + spec.validation_percent:
    return "validation"
  return "train"


def _transpose_name(tonic: str, semitones: int) -> str:
  return PITCH_NAMES[(_PITCH_CLASS[tonic] + semitones) % 12]


def _draw_file(rng: np.random.Generator) -> Tuple[corpus.Collection, str]:
  """A collection and one of its corpus files (the first draws of an attempt)."""
  collection = corpus.COLLECTIONS[rng.integers(len(corpus.COLLECTIONS))]
  paths = corpus.collection_paths(collection)
  return collection, paths[rng.integers(len(paths))]


def first_file(spec: MusicCaptionsSpec, index: int) -> str:
  """The corpus file example `index` opens first (found without parsing anything)."""
  return _draw_file(np.random.default_rng([spec.seed, index]))[1]


def plan_example(spec: MusicCaptionsSpec, index: int, max_attempts: int = 20) -> Plan:
  """Draws example `index` (re-drawing pieces too short for the clip or without notes)."""
  rng = np.random.default_rng([spec.seed, index])
  for _ in range(max_attempts):
    collection, path = _draw_file(rng)
    piece = corpus.PieceRef(collection, path, int(rng.integers(corpus.tunes_in(path))))
    notes = corpus.piece_notes(piece)
    if not notes:
      continue
    low, high = STYLE_TEMPO[collection.style]
    bpm = float(rng.integers(low, high + 1))
    clip_quarters = spec.clip_seconds * bpm / 60.0
    total = max(n.onset + n.duration for n in notes)
    if total < 0.8 * clip_quarters:
      continue  # would end in silence: draw another piece
    start = float(np.floor(rng.uniform(0.0, max(total - clip_quarters, 0.0))))
    voices = len({n.voice for n in notes})
    if voices == 1:
      soloist = render.SOLOISTS[rng.integers(len(render.SOLOISTS))]
      ensemble, per_voice = f"a solo {soloist}", (soloist,)
    else:
      ensemble, per_voice = render.ENSEMBLES[rng.integers(len(render.ENSEMBLES))]
    transpose = int(rng.integers(-5, 7))
    tonic, mode = corpus.piece_key(piece)
    drums = bool(rng.random() < STYLE_DRUMS.get(collection.style, 0.0))
    perf = render.Performance(
        programs=tuple(render.INSTRUMENTS[name] for name in per_voice), bpm=bpm,
        transpose=transpose, velocity=int(rng.integers(48, 121)), drums=drums)
    return Plan(index, piece, ensemble, tuple(dict.fromkeys(per_voice)), perf, start,
                (_transpose_name(tonic, transpose), mode), split_of(piece, spec))
  raise ValueError(f"example {index}: no usable piece in {max_attempts} draws")


def tempo_word(bpm: float) -> str:
  return "slow" if bpm < SLOW_BELOW else "fast" if bpm > FAST_ABOVE else "moderate"


def dynamics_word(velocity: int) -> Optional[str]:
  return "softly" if velocity < SOFT_BELOW else "loudly" if velocity > LOUD_ABOVE else None


def caption_of(plan: Plan, template: int) -> str:
  """A MusicCaps-style caption from the plan (template 0-2 varies the wording)."""
  perf = plan.performance
  style, composer = plan.piece.collection.style, plan.piece.collection.composer
  by = f" by {composer}" if composer else " (traditional)"
  drums = " with a steady drum beat" if perf.drums else ""
  tempo, bpm = tempo_word(perf.bpm), int(perf.bpm)
  key = f"{plan.key[0]} {plan.key[1]}"
  dynamics = dynamics_word(perf.velocity)
  if template == 0:
    text = (f"A {tempo} {style}{by}, played by {plan.ensemble}{drums}, in {key} at about "
            f"{bpm} BPM.")
    return text + (f" It is played {dynamics}." if dynamics else "")
  if template == 1:
    text = (f"This {style}{by} is performed by {plan.ensemble}{drums}. The tempo is "
            f"{tempo}, around {bpm} BPM, and the key is {key}.")
    return text + (f" The musicians play {dynamics}." if dynamics else "")
  lead = plan.ensemble[0].upper() + plan.ensemble[1:]
  text = f"{lead} plays a {tempo} {style}{by}{drums}. {key}, {bpm} BPM."
  return text + (f" Played {dynamics}." if dynamics else "")


def clip_notes(spec: MusicCaptionsSpec, plan: Plan) -> Tuple[corpus.Note, ...]:
  """The notes the plan's clip plays (parses the piece unless this process has it cached)."""
  return tuple(corpus.excerpt(corpus.piece_notes(plan.piece), plan.start_quarter,
                              spec.clip_seconds * plan.performance.bpm / 60.0))


def plan_with_notes(spec: MusicCaptionsSpec, index: int
                    ) -> Tuple[Plan, Tuple[corpus.Note, ...]]:
  """`plan_example` and its `clip_notes`: what a planning worker sends back, so that the
  process that renders never parses the piece again."""
  plan = plan_example(spec, index)
  return plan, clip_notes(spec, plan)


def plan_examples(spec: MusicCaptionsSpec, indices: Iterable[int], workers: int = 1
                  ) -> Iterator[Tuple[Plan, Tuple[corpus.Note, ...]]]:
  """`plan_with_notes` for each index, in order, over `workers` processes.

  Planning is the slow part of a build (music21 parses a file in ~0.3 s, a large collection
  of tunes in seconds; rendering a clip takes ~25 ms). Examples often draw the same file
  (3600 draw 1130 files), so each worker is handed the examples that open one file
  together and parses it once. Workers are spawned, not forked: the builder's process has
  TensorFlow's threads running.
  """
  indices = list(indices)
  by_file = collections.defaultdict(list)
  for index in indices:
    by_file[first_file(spec, index)].append(index)
  groups = list(by_file.values())
  plan_group = functools.partial(_plan_group, spec)
  if workers <= 1 or len(groups) < 2 * workers:
    planned = map(plan_group, groups)
    pool = None
  else:
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"))
    planned = pool.map(plan_group, groups,
                       chunksize=max(1, min(16, len(groups) // (4 * workers))))
  try:
    by_index = {}
    for group, results in zip(groups, planned):
      by_index.update(zip(group, results))
  finally:
    if pool is not None:
      pool.shutdown()
  yield from (by_index[index] for index in indices)


def _plan_group(spec: MusicCaptionsSpec, indices: Sequence[int]
                ) -> List[Tuple[Plan, Tuple[corpus.Note, ...]]]:
  return [plan_with_notes(spec, index) for index in indices]


def render_example(spec: MusicCaptionsSpec, plan: Plan, soundfont_file: str,
                   notes: Optional[Sequence[corpus.Note]] = None) -> Dict[str, object]:
  """Audio (mono float32 [clip_samples], peak 0.9 x a drawn level), caption, metadata.
  notes: the plan's `clip_notes` when already known."""
  notes = clip_notes(spec, plan) if notes is None else notes
  audio = render.render(notes, plan.performance, spec.clip_seconds, spec.sample_rate,
                        soundfont_file)[:spec.clip_samples]
  rng = np.random.default_rng([spec.seed, plan.index, 1])
  peak = float(np.max(np.abs(audio)))
  if peak <= 1e-4:
    raise ValueError(f"example {plan.index} ({plan.piece.id}) rendered silent")
  audio = (audio * (0.9 * 10 ** (rng.uniform(-12.0, 0.0) / 20) / peak)).astype(np.float32)
  perf = plan.performance
  return {
      "audio": audio,
      "caption": caption_of(plan, int(rng.integers(3))),
      "id": f"{spec.seed}:{plan.index}",
      "piece": plan.piece.id,
      "style": plan.piece.collection.style,
      "composer": plan.piece.collection.composer or "traditional",
      "ensemble": plan.ensemble,
      "instruments": ", ".join(plan.instruments),
      "drums": perf.drums,
      "bpm": np.float32(perf.bpm),
      "tempo": tempo_word(perf.bpm),
      "key": plan.key[0],
      "mode": plan.key[1],
      "transpose": np.int32(perf.transpose),
      "velocity": np.int32(perf.velocity),
  }
