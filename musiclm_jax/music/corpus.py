"""Pieces from music21's bundled corpus, and their notes as timed events.

The corpus ships with the pip package `music21` (no network): Bach chorales, Renaissance
polyphony, madrigals, and thousands of folk tunes in ABC. A `Collection`
names a corpus family with what a caption can say about it (style, composer); a
`PieceRef` is one piece of it (a file, and for multi-tune files the tune's index).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import List, Optional, Sequence, Tuple


@dataclasses.dataclass(frozen=True)
class Collection:
  """A corpus family: music21 composer/collection name, and what captions say of it."""
  name: str                 # music21 corpus name, e.g. 'bach'
  style: str                # e.g. 'baroque chorale'
  composer: Optional[str]   # e.g. 'Johann Sebastian Bach'; None = traditional
  path_filter: str = ""     # keep only corpus paths containing this
  max_files: int = 400      # cap per collection, for listing speed and balance


COLLECTIONS: Tuple[Collection, ...] = (
    Collection("bach", "baroque chorale", "Johann Sebastian Bach", path_filter="bwv"),
    Collection("palestrina", "renaissance choral polyphony", "Giovanni Pierluigi da Palestrina"),
    Collection("monteverdi", "Italian madrigal", "Claudio Monteverdi"),
    Collection("ryansMammoth", "fiddle tune", None),
    Collection("oneills1850", "Irish folk tune", None),
)  # (essenFolksong is left out: its files hold ~1000 songs each and take ~20 s to parse)


@dataclasses.dataclass(frozen=True)
class PieceRef:
  collection: Collection
  path: str                 # corpus path (str of the file)
  number: int = 0           # the tune within a multi-tune file (Opus)

  @property
  def id(self) -> str:
    tail = self.path.split("corpus/")[-1]
    return f"{tail}#{self.number}"

  def split_hash(self) -> int:
    """A stable hash of the piece (not of a rendering): splits keep pieces apart."""
    return zlib.crc32(self.id.encode("utf-8"))


@dataclasses.dataclass(frozen=True)
class Note:
  """One sounding pitch: onset and duration in quarter notes, MIDI pitch, voice index."""
  onset: float
  duration: float
  pitch: int
  voice: int


@functools.lru_cache(maxsize=None)
def collection_paths(collection: Collection) -> Tuple[str, ...]:
  """Sorted corpus file paths of a collection (deterministic across machines)."""
  from music21 import corpus  # pylint: disable=g-import-not-at-top
  paths = sorted(str(p) for p in corpus.getComposer(collection.name))
  paths = [p for p in paths if collection.path_filter in p.split("corpus/")[-1]]
  if not paths:
    raise ValueError(f"music21's corpus has no files for {collection.name!r}; is music21 "
                     "installed with its corpus?")
  return tuple(paths[:collection.max_files])


@functools.lru_cache(maxsize=64)
def _parse(path: str):
  from music21 import converter  # pylint: disable=g-import-not-at-top
  return converter.parse(path)


def load_score(ref: PieceRef):
  """The music21 Score of a piece (one tune of a multi-tune file)."""
  from music21 import stream  # pylint: disable=g-import-not-at-top
  parsed = _parse(ref.path)
  if isinstance(parsed, stream.Opus):
    scores = list(parsed.scores)
    if not scores:
      raise ValueError(f"{ref.path}: an empty collection of tunes")
    return scores[ref.number % len(scores)]
  return parsed


def tunes_in(path: str) -> int:
  from music21 import stream  # pylint: disable=g-import-not-at-top
  parsed = _parse(path)
  return len(parsed.scores) if isinstance(parsed, stream.Opus) else 1


def notes_of(score) -> List[Note]:
  """Every note of every part (ties merged, chords split), sorted by onset. Merges the ties
  in place (a copy would cost more than the parse)."""
  parts = list(score.parts) or [score]
  notes = []
  for voice, part in enumerate(parts):
    part.stripTies(inPlace=True)
    for element in part.flatten().notes:
      duration = float(element.quarterLength)
      if duration <= 0:  # grace notes
        continue
      for pitch in element.pitches:
        notes.append(Note(float(element.offset), duration, int(pitch.midi), voice))
  notes.sort(key=lambda n: (n.onset, n.voice, n.pitch))
  return notes


@functools.lru_cache(maxsize=4096)
def piece_notes(ref: PieceRef) -> Tuple[Note, ...]:
  """`notes_of` the piece's score, cached."""
  return tuple(notes_of(load_score(ref)))


@functools.lru_cache(maxsize=4096)
def piece_key(ref: PieceRef) -> Tuple[str, str]:
  return key_of(load_score(ref))


def key_of(score) -> Tuple[str, str]:
  """(tonic name, 'major' | 'minor') by music21's key analysis."""
  key = score.analyze("key")
  return key.tonic.name.replace("-", "b"), key.mode


def excerpt(notes: Sequence[Note], start: float, length: float) -> List[Note]:
  """Notes sounding in [start, start + length) quarters, clipped to it, re-based to 0."""
  out = []
  end = start + length
  for n in notes:
    if n.onset >= end or n.onset + n.duration <= start:
      continue
    onset = max(n.onset, start)
    out.append(Note(onset - start, min(n.onset + n.duration, end) - onset, n.pitch, n.voice))
  return out
