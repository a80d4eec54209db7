"""The decoder fine-tuned on the coarse stage's ground-truth-aligned tokens: the draws are
teacher-forced and windowed as generation is, and the fine-tune moves the decoder alone."""

import dataclasses

import jax
import numpy as np
import pytest

from musiclm_jax.generation import aligned_decoder
from musiclm_jax.generation import musiclm as musiclm_lib
from musiclm_jax.lm import token_layout
from musiclm_jax.soundstream import codec as codec_lib
from musiclm_jax.soundstream import losses
from tests import soundstream_fixtures
from tests.integration.test_generation import LAYOUT_FIELDS, WINDOWS, _stage

LAYOUT = token_layout.TokenLayout(**LAYOUT_FIELDS)
RATIO = LAYOUT.acoustic_rate // LAYOUT.semantic_rate


def _clips(frames, seed=0):
  rng = np.random.default_rng(seed)
  return [(rng.integers(0, LAYOUT.mulan_codes, LAYOUT.mulan_levels),
           rng.integers(0, LAYOUT.semantic_codes, n),
           rng.integers(0, LAYOUT.acoustic_codes, (n * RATIO, LAYOUT.acoustic_levels)))
          for n in frames]


def _greedy_reference(coarse, clip, window, overlap, guidance_scale):
  """Frame by frame, the argmax the stage gives in the first window reaching the frame,
  teacher-forced on the clip's real tokens (each window computed on its own)."""
  qc, codes = LAYOUT.coarse_levels, LAYOUT.acoustic_codes
  frames = len(clip[1])
  size = min(window, frames)
  out, done = np.full((frames * RATIO, qc), -1), 0
  for start in musiclm_lib.window_starts(frames, size, int(size * overlap)):
    prefix, targets = aligned_decoder.coarse_window_inputs(LAYOUT, clip, start, size)
    inputs = np.concatenate([[coarse.model.config.bos_id], targets[:-1]])[None]
    logits = np.asarray(coarse.model.teacher_forced_logits(
        coarse.params, {"prefix_tokens": prefix[None], "decoder_input_tokens": inputs},
        guidance_scale))[0]
    level = np.arange(len(targets)) % qc
    logits = np.where(np.arange(logits.shape[-1])[None] // codes == level[:, None], logits,
                      -np.inf)
    drawn = logits.argmax(-1).reshape(-1, qc) - np.arange(qc) * codes
    first = max(done - start, 0) * RATIO
    out[start * RATIO + first:(start + size) * RATIO] = drawn[first:]
    done = start + size
  return out


@pytest.mark.parametrize("parallel_levels, overlap, guidance_scale", [
    (0, WINDOWS.overlap, 1.5), (LAYOUT.coarse_levels, WINDOWS.overlap, 1.5),
    (LAYOUT.coarse_levels, 0.0, None)])   # the cheap draws: windows side by side, unguided
def test_aligned_tokens_are_drawn_teacher_forced_in_the_generation_windows(
    parallel_levels, overlap, guidance_scale):
  coarse = _stage(LAYOUT, "coarse", 1, parallel_levels)
  clips = _clips([13, 2, 7])   # windows of 3 semantic frames: one clip shorter than that
  window = int(round(WINDOWS.coarse_seconds * LAYOUT.semantic_rate))
  greedy = musiclm_lib.Sampling(temperature=0.0, guidance_scale=guidance_scale)
  drawn = aligned_decoder.aligned_coarse_tokens(coarse, LAYOUT, clips, WINDOWS.coarse_seconds,
                                                overlap, greedy, batch_windows=4)
  for clip, tokens in zip(clips, drawn):
    assert tokens.shape == (len(clip[1]) * RATIO, LAYOUT.coarse_levels)
    np.testing.assert_array_equal(
        tokens, _greedy_reference(coarse, clip, window, overlap, guidance_scale))
  sampled = lambda seed: aligned_decoder.aligned_coarse_tokens(
      coarse, LAYOUT, clips, WINDOWS.coarse_seconds, WINDOWS.overlap,
      musiclm_lib.Sampling(temperature=1.0, guidance_scale=1.5), seed=seed)
  first, again, other = sampled(0), sampled(0), sampled(1)
  for a, b, c in zip(first, again, other):
    assert a.min() >= 0 and a.max() < LAYOUT.acoustic_codes
    np.testing.assert_array_equal(a, b)
  assert any((a != c).any() for a, c in zip(first, other))


def test_finetuning_moves_the_decoder_alone_towards_the_audio(tmp_path):
  codec = codec_lib.Codec.load("pretrained:tiny_16khz")   # a trained decoder to move
  audio = soundstream_fixtures.real_clips(8)              # 20 frames each
  real = codec.encode(audio, 2)
  rng = np.random.default_rng(0)
  # The tokens a stage would draw: the real ones with a fifth of them slipped.
  slipped = np.where(rng.random(real.shape) < 0.2,
                     rng.integers(0, codec.config.codebook_size, real.shape), real)
  config = aligned_decoder.FinetuneConfig(steps=60, batch_size=4, crop_frames=10,
                                          learning_rate=3e-3, ema_decay=0.9)
  tuned, curve = aligned_decoder.finetune_decoder(codec, audio, slipped, config, log=None)
  # Its output is scaled to play the slipped tokens as loud as the codec plays the clips'
  # own tokens (every clip here is a level clip): exactly that, and by the one factor.
  level = lambda c, codes: aligned_decoder.rms_db(c.decode(codes))
  gap = np.median(level(codec, codec.encode(audio)) - level(tuned, slipped))
  assert abs(gap) < 1e-3, gap
  unscaled = aligned_decoder.finetune_decoder(
      codec, audio, slipped, dataclasses.replace(config, level_clips=0), log=None)[0]
  gain_db = tuned.provenance["decoder_finetune"]["output_gain_db"]
  assert gain_db != 0 and unscaled.provenance["decoder_finetune"]["output_gain_db"] == 0
  np.testing.assert_allclose(tuned.decode(slipped),
                             10 ** (gain_db / 20) * unscaled.decode(slipped), atol=1e-5)
  loss = lambda c: float(losses.multi_scale_spectral_loss(audio, c.decode(slipped),
                                                          codec.config.sample_rate))
  assert loss(tuned) < 0.9 * loss(codec), (loss(tuned), loss(codec), curve)
  # The encoder and the codebooks are the codec's: the same audio gives the same tokens.
  np.testing.assert_array_equal(tuned.encode(audio), codec.encode(audio))
  same = jax.tree.map(np.array_equal, codec.variables["params"]["encoder"],
                      tuned.variables["params"]["encoder"])
  assert all(jax.tree.leaves(same))
  assert tuned.provenance["decoder_finetune"]["steps"] == 60
  assert tuned.provenance["decoder_finetune"]["levels"] == 2
  path = str(tmp_path / "aligned_codec")
  tuned.save(path)
  np.testing.assert_array_equal(codec_lib.Codec.load(path).decode(slipped),
                                tuned.decode(slipped))
  # Clips of any length: one shorter than a crop is left out, the rest still train.
  short = aligned_decoder.finetune_decoder(
      codec, [audio[0][:1440], *audio[1:]], [slipped[0][:9], *slipped[1:]],
      dataclasses.replace(config, steps=2), log=None)[0]
  assert short.provenance["decoder_finetune"]["clips"] == 7
  with pytest.raises(ValueError, match="no clip holds a crop of 100 frames"):
    aligned_decoder.finetune_decoder(codec, audio, slipped, aligned_decoder.FinetuneConfig())
  with pytest.raises(ValueError, match="8 clips of audio but 3 of codes"):
    aligned_decoder.finetune_decoder(codec, audio, slipped[:3], config)
