"""The captioned music set: music21 corpus pieces rendered with a GM SoundFont, captions
written from the rendering, the TFDS builder and a MuLan task over it."""

import collections
import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from musiclm_jax.music import corpus, music_captions as mc, render
from musiclm_jax.tasks import builders

SPEC = mc.MusicCaptionsSpec(num_examples=48, clip_seconds=4.0, sample_rate=16000,
                            validation_percent=20.0, test_percent=20.0)


@pytest.fixture(scope="module")
def soundfont():
  return render.soundfont_path("timgm6mb-soundfont")


def _fundamental(wave, rate):
  """f0 by autocorrelation: the shortest period whose correlation is near the best one
  (the spectrum's peak may be a harmonic)."""
  wave = wave - wave.mean()
  spectrum = np.fft.rfft(wave, 2 * len(wave))
  corr = np.fft.irfft(np.abs(spectrum) ** 2)[:len(wave)]
  lags = np.arange(rate // 1000, rate // 50)
  peaks = [l for l in lags if corr[l - 1] < corr[l] >= corr[l + 1]]
  best = max(corr[l] for l in peaks)
  lag = next(l for l in peaks if corr[l] >= 0.9 * best)
  a, b, c = corr[lag - 1], corr[lag], corr[lag + 1]
  return rate / (lag + 0.5 * (a - c) / (a - 2 * b + c))  # parabolic refinement


def test_rendering_plays_the_notes_transposed(soundfont):
  note = [corpus.Note(0.0, 4.0, 69, 0)]  # A4 for four quarters
  for transpose, hz in ((0, 440.0), (12, 880.0), (-12, 220.0)):
    perf = render.Performance(programs=(render.INSTRUMENTS["flute"],), bpm=120,
                              transpose=transpose)
    wave = render.render(note, perf, 2.0, 16000, soundfont)
    assert wave.shape == (32000,) and wave.dtype == np.float32
    assert abs(_fundamental(wave[4000:20000], 16000) - hz) < 0.03 * hz
  # Drums add a beat even with no notes; silence stays silent without them.
  quiet = render.render([], render.Performance(programs=(0,), bpm=120), 1.0, 16000, soundfont)
  beat = render.render([], render.Performance(programs=(0,), bpm=120, drums=True), 1.0,
                       16000, soundfont)
  assert np.max(np.abs(quiet)) == 0 and np.max(np.abs(beat)) > 0.01


def test_examples_are_a_function_of_seed_and_index(soundfont):
  first = mc.render_example(SPEC, mc.plan_example(SPEC, 3), soundfont)
  again = mc.render_example(SPEC, mc.plan_example(SPEC, 3), soundfont)
  assert first["caption"] == again["caption"]
  np.testing.assert_array_equal(first["audio"], again["audio"])
  other = mc.plan_example(mc.MusicCaptionsSpec(**{**SPEC.__dict__, "seed": 1}), 3)
  assert other != mc.plan_example(SPEC, 3)


def test_captions_say_what_was_rendered(soundfont):
  plans = [mc.plan_example(SPEC, i) for i in range(SPEC.num_examples)]
  for plan in plans[:12]:
    ex = mc.render_example(SPEC, plan, soundfont)
    caption, perf = ex["caption"], plan.performance
    assert plan.ensemble in caption.lower() or plan.ensemble.capitalize() in caption
    assert mc.tempo_word(perf.bpm) in caption and f"{int(perf.bpm)} BPM" in caption
    assert f"{plan.key[0]} {plan.key[1]}" in caption
    assert ("drum beat" in caption) == perf.drums
    composer = plan.piece.collection.composer
    assert (composer in caption) if composer else ("traditional" in caption)
    audio = ex["audio"]
    assert audio.shape == (SPEC.clip_samples,) and np.max(np.abs(audio)) <= 0.9 + 1e-6
    assert np.mean(np.abs(audio) > 1e-3) > 0.5      # music, not silence
  # Variety: several styles, ensembles, tempi and keys; splits keep pieces apart.
  assert len({p.piece.collection.style for p in plans}) >= 4
  assert len({p.ensemble for p in plans}) >= 8
  assert len({mc.tempo_word(p.performance.bpm) for p in plans}) == 3
  split_of_piece = {}
  for p in plans:
    assert split_of_piece.setdefault(p.piece.id, p.split) == p.split
  assert {p.split for p in plans} == {"train", "validation", "test"}


@pytest.fixture(scope="module")
def built(music_captions_tiny):
  """The test run's build of the set (conftest.py) and its builder, which reads it back."""
  return music_captions_tiny, builders.build("music_captions", music_captions_tiny,
                                             "tiny_16khz")


def test_builder_writes_what_the_generator_makes(built, soundfont):
  data_dir, builder = built
  report = builder.info.metadata["build_report"]
  assert report["planned"] == 48 and sum(report["written"].values()) == 48
  examples = {}
  for split in ("train", "validation", "test"):
    ds = tfds.load("music_captions/tiny_16khz", split=split, data_dir=data_dir)
    for ex in ds.as_numpy_iterator():
      examples[ex["id"].decode()] = (split, ex)
  assert len(examples) == 48
  split, ex = examples["0:5"]
  plan = mc.plan_example(SPEC, 5)
  expected = mc.render_example(SPEC, plan, soundfont)
  assert split == plan.split and ex["caption"].decode() == expected["caption"]
  np.testing.assert_allclose(ex["audio"], expected["audio"], atol=1e-6)
  assert ex["sample_rate"] == 16000 and ex["ensemble"].decode() == plan.ensemble


def test_mulan_task_reads_the_captioned_set(built):
  from musiclm_jax.tasks import audio as audio_tasks
  from musiclm_jax.training import data as data_lib
  data_dir, _ = built
  name = audio_tasks.register_audio_crop_task(
      "mulan_music_captions_test", "music_captions/tiny_16khz:1.0.0", data_dir,
      sample_rate=16000, crop_samples=16000, captions=True, text_length=48)
  config = data_lib.DatasetConfig(
      mixture_or_task_name=name, task_feature_lengths={"audio": 16000, "text_tokens": 48},
      split="train", batch_size=4, shuffle=True, seed=0)
  batch = next(data_lib.get_dataset(config, audio_tasks.CaptionedAudioFeatureConverter(),
                                    0, 1).as_numpy_iterator())
  assert batch["audio"].shape == (4, 16000) and batch["text_tokens"].shape == (4, 48)
  assert (batch["text_tokens"][:, 0] == 101).all()   # [CLS]


def test_planning_in_worker_processes_equals_planning_here():
  serial = list(mc.plan_examples(SPEC, range(6), workers=1))
  assert [plan.index for plan, _ in serial] == list(range(6))
  assert all(notes for _, notes in serial)
  assert list(mc.plan_examples(SPEC, range(6), workers=2)) == serial


def test_examples_that_open_the_same_file_are_planned_as_each_alone():
  """Planning hands the examples that open one file to one worker together; each plan and
  its notes are still what that example, planned alone with nothing cached, gets."""
  by_file = collections.defaultdict(list)
  for index in range(80):
    by_file[mc.first_file(SPEC, index)].append(index)
  shared = next(group for group in by_file.values() if len(group) >= 2)[:3]
  indices = [0] + shared + [1]          # the group's members apart in the order asked for
  planned = list(mc.plan_examples(SPEC, indices, workers=1))
  assert [plan.index for plan, _ in planned] == indices
  for index, together in zip(indices, planned):
    for cache in (corpus._parse, corpus.piece_notes, corpus.piece_key):
      cache.cache_clear()
    assert together == mc.plan_with_notes(SPEC, index)


def test_the_medium_set_begins_with_the_small_one():
  """An example is a function of its index and the spec, so `medium`'s first 1200 clips
  are `small`'s: same piece, performance, excerpt and split."""
  configs = {c.name: c.spec for c in builders.builder_cls("music_captions").BUILDER_CONFIGS}
  small, medium = configs["small_16khz"], configs["medium_16khz"]
  assert medium.num_examples == 3 * small.num_examples
  assert dataclasses.replace(medium, num_examples=small.num_examples) == small  # same sound
  for index in (0, 17, small.num_examples - 1):
    assert mc.plan_example(medium, index) == mc.plan_example(small, index)
