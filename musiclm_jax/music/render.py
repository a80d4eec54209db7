"""Rendering timed notes to audio with a General MIDI SoundFont (TinySoundFont).

Instruments are General MIDI programs; each voice of a piece gets one. An optional drum
kit (GM channel 10) plays a simple rock/folk pattern on the beat. SoundFonts come from
Debian packages (`timgm6mb-soundfont`: 6 MB, for tests; `fluid-soundfont-gm`: 140 MB,
better), fetched like the project's real audio (`audio.debian_music`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Dict, Sequence, Tuple

import numpy as np

from musiclm_jax.music import corpus

# Instrument name (as captions say it) -> General MIDI program (0-based).
INSTRUMENTS: Dict[str, int] = {
    "piano": 0, "harpsichord": 6, "vibraphone": 11, "marimba": 12, "church organ": 19,
    "accordion": 21, "acoustic guitar": 24, "electric guitar": 27, "acoustic bass": 32,
    "violin": 40, "viola": 41, "cello": 42, "double bass": 43, "harp": 46,
    "string ensemble": 48, "choir": 52, "trumpet": 56, "trombone": 57, "french horn": 60,
    "alto saxophone": 65, "tenor saxophone": 66, "oboe": 68, "bassoon": 70, "clarinet": 71,
    "flute": 73, "recorder": 74, "pan flute": 75, "banjo": 105, "steel drums": 114,
}

# Ensembles for pieces of several voices: (name in captions, instrument per voice from the
# top; the last one repeats for further voices).
ENSEMBLES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("a string quartet", ("violin", "violin", "viola", "cello")),
    ("a brass quartet", ("trumpet", "trumpet", "french horn", "trombone")),
    ("a woodwind quartet", ("flute", "oboe", "clarinet", "bassoon")),
    ("a church organ", ("church organ",)),
    ("a piano", ("piano",)),
    ("a choir", ("choir",)),
    ("a harpsichord", ("harpsichord",)),
    ("a saxophone quartet", ("alto saxophone", "alto saxophone", "tenor saxophone",
                             "tenor saxophone")),
    ("a string orchestra", ("string ensemble",)),
    ("a marimba and vibraphone duo", ("vibraphone", "marimba")),
)
# Lead instruments for single-voice tunes.
SOLOISTS: Tuple[str, ...] = (
    "violin", "flute", "accordion", "piano", "acoustic guitar", "banjo", "recorder",
    "clarinet", "trumpet", "harp", "marimba", "vibraphone", "oboe", "pan flute",
    "alto saxophone", "electric guitar", "steel drums", "cello",
)
DRUM_CHANNEL = 9
KICK, SNARE, CLOSED_HIHAT = 36, 38, 42

SOUNDFONTS = {
    "timgm6mb-soundfont": "usr/share/sounds/sf2/TimGM6mb.sf2",
    "fluid-soundfont-gm": "usr/share/sounds/sf2/FluidR3_GM.sf2",
}


def soundfont_path(package: str) -> str:
  """The .sf2 file of a Debian SoundFont package (downloaded and unpacked once)."""
  from musiclm_jax.audio import debian_music  # pylint: disable=g-import-not-at-top
  if package not in SOUNDFONTS:
    raise ValueError(f"unknown SoundFont package {package!r}; known: {sorted(SOUNDFONTS)}")
  path = os.path.join(debian_music.fetch(package), SOUNDFONTS[package])
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{package} unpacked without {SOUNDFONTS[package]}")
  return path


@dataclasses.dataclass(frozen=True)
class Performance:
  """How one excerpt is played.

  Attributes:
    programs: GM program per voice (index = Note.voice; the last repeats).
    bpm: quarter notes per minute.
    transpose: semitones added to every pitch.
    velocity: MIDI velocity (loudness of the playing, 1-127).
    drums: add a kit playing kick/snare/hi-hat on the beat.
    beats_per_bar: for the drum pattern (kick on odd beats, snare on even ones).
  """
  programs: Tuple[int, ...]
  bpm: float
  transpose: int = 0
  velocity: int = 90
  drums: bool = False
  beats_per_bar: int = 4


@functools.lru_cache(maxsize=4)
def _soundfont_bytes(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _events(notes: Sequence[corpus.Note], perf: Performance, seconds: float):
  """(time s, is_on, channel, pitch, velocity), note-offs before note-ons at equal times."""
  per_quarter = 60.0 / perf.bpm
  events = []
  for n in notes:
    channel = min(n.voice, 8)  # 9 is the drum channel; 16 channels are plenty
    pitch = int(np.clip(n.pitch + perf.transpose, 0, 127))
    start = n.onset * per_quarter
    if start >= seconds:
      continue
    events.append((start, 1, channel, pitch, perf.velocity))
    events.append((min((n.onset + n.duration) * per_quarter, seconds), 0, channel, pitch, 0))
  if perf.drums:
    eighths = int(seconds / per_quarter * 2) + 1
    for i in range(eighths):
      t = i * per_quarter / 2
      beat = i // 2
      hits = [CLOSED_HIHAT]
      if i % 2 == 0:
        hits.append(KICK if beat % 2 == 0 else SNARE)
      for hit in hits:
        velocity = int(perf.velocity * (0.8 if hit == CLOSED_HIHAT else 1.0))
        events.append((t, 1, DRUM_CHANNEL, hit, velocity))
        events.append((t + per_quarter / 4, 0, DRUM_CHANNEL, hit, 0))
  events.sort(key=lambda e: (e[0], e[1]))
  return events


def render(notes: Sequence[corpus.Note], perf: Performance, seconds: float,
           sample_rate: int, soundfont: str) -> np.ndarray:
  """Notes -> mono float32 [seconds * sample_rate] (notes past the end are cut; the last
  ones ring until then)."""
  import tinysoundfont  # pylint: disable=g-import-not-at-top
  synth = tinysoundfont.Synth(samplerate=sample_rate)
  sfid = synth.sfload(_soundfont_bytes(soundfont))
  voices = max([n.voice for n in notes] + [0]) + 1
  for voice in range(min(voices, 9)):
    program = perf.programs[min(voice, len(perf.programs) - 1)]
    synth.program_select(voice, sfid, 0, program)
  if perf.drums:
    synth.program_select(DRUM_CHANNEL, sfid, 128, 0, is_drums=True)
  total = int(round(seconds * sample_rate))
  out = np.zeros((total, 2), np.float32)
  position = 0
  for time, is_on, channel, pitch, velocity in _events(notes, perf, seconds):
    target = min(int(round(time * sample_rate)), total)
    if target > position:
      out[position:target] = np.frombuffer(synth.generate(target - position),
                                           np.float32).reshape(-1, 2)
      position = target
    if is_on:
      synth.noteon(channel, pitch, velocity)
    else:
      synth.noteoff(channel, pitch)
  if position < total:
    out[position:] = np.frombuffer(synth.generate(total - position), np.float32).reshape(-1, 2)
  return out.mean(axis=1)
