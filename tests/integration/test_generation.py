"""Text-to-music generation with tiny random-initialised parts: the chain runs end to end,
makes audio of the requested length, goes past every stage's context by windows, keeps
each acoustic position in its RVQ level, is reproducible per seed, and follows story-mode
prompts."""

import json
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from musiclm_jax.generation import bundle
from musiclm_jax.generation import musiclm as musiclm_lib
from musiclm_jax.lm import decoder_lm, models as lm_models
from musiclm_jax.lm import token_layout
from tests import tokenize_fixtures

LAYOUT_FIELDS = dict(mulan_levels=4, mulan_codes=16, semantic_codes=16, semantic_rate=25,
                     acoustic_levels=4, acoustic_codes=32, acoustic_rate=400, coarse_levels=2)
# Contexts far shorter than the clips generated below: every stage slides.
WINDOWS = musiclm_lib.Windows(semantic_seconds=0.2, coarse_seconds=0.12, fine_seconds=0.02,
                           overlap=0.5)


def _stage(layout, stage, seed, parallel_levels=0):
  prefix_vocab, target_vocab = layout.vocab_sizes(stage)
  config = decoder_lm.DecoderConfig(target_vocab_size=target_vocab,
                                    prefix_vocab_size=prefix_vocab, num_layers=1, num_heads=2,
                                    head_dim=16, emb_dim=32, mlp_dim=64, vocab_multiple=8,
                                    parallel_levels=parallel_levels)
  model = lm_models.DecoderOnlyLMModel(decoder_lm.DecoderOnlyLM(config), optax.adam(1e-3))
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.key(seed), {"prefix_tokens": (1, 4), "decoder_input_tokens": (1, 8)},
      {})["params"])
  return musiclm_lib.StageLM(model, params)


@pytest.fixture(scope="module")
def musiclm():
  layout = token_layout.TokenLayout(**LAYOUT_FIELDS)
  parts = tokenize_fixtures.tiny_tokenizers()
  return musiclm_lib.MusicLM(layout, parts.mulan, *(_stage(layout, s, i) for i, s in
                                                  enumerate(token_layout.STAGES)),
                          parts.codec, WINDOWS, semantic_tokenizer=parts.semantic)


def test_windows_cover_the_clip_with_overlap():
  assert musiclm_lib.window_starts(10, 4, 2) == [0, 2, 4, 6]
  assert musiclm_lib.window_starts(3, 4, 2) == [0]
  calls = []

  def sample(start, frames, prompt, new):
    calls.append((start, prompt.shape[1], new))
    return np.concatenate([prompt, np.full((1, new), start, np.int32)], axis=1)

  out = musiclm_lib.generate_by_windows(7, 4, 2, 1, sample, 1)
  assert out.shape == (1, 7)
  assert calls == [(0, 0, 4), (2, 2, 2), (3, 3, 1)]   # each window continues the last


def test_generates_audio_of_the_requested_length_past_every_context(musiclm):
  seconds = 0.5  # 13 semantic tokens (window 5), 208 acoustic frames (fine window 8)
  tokens = musiclm.generate_tokens(["calm piano", "fast drums"], seconds, seed=0)
  frames = 13 * 16
  assert tokens.shape == (2, frames, 4)
  assert tokens.min() >= 0 and tokens.max() < 32   # every id inside its level
  wave = musiclm.generate(["calm piano", "fast drums"], seconds, seed=0)
  assert wave.shape == (2, int(seconds * musiclm.sample_rate)) and np.all(np.isfinite(wave))
  again = musiclm.generate(["calm piano", "fast drums"], seconds, seed=0)
  np.testing.assert_array_equal(wave, again)
  other = musiclm.generate_tokens(["calm piano", "fast drums"], seconds, seed=1)
  assert not np.array_equal(other, tokens)


def test_first_stage_alone_gives_the_tokens_the_coarse_stage_reads(musiclm, monkeypatch):
  prompts = ["calm piano", "fast drums"]
  semantic = musiclm.generate_semantic_tokens(prompts, 0.5, seed=0)
  assert semantic.shape == (2, 13) and semantic.min() >= 0 and semantic.max() < 16
  prefixes = []
  read = musiclm.coarse.continue_tokens
  monkeypatch.setattr(musiclm.coarse, "continue_tokens",
                      lambda prefix, *args: (prefixes.append(prefix), read(prefix, *args))[1])
  musiclm.generate_tokens(prompts, 0.5, seed=0)
  lay = musiclm.layout
  first_window = prefixes[0][:, lay.mulan_levels:] - lay.mulan_levels * lay.mulan_codes
  np.testing.assert_array_equal(first_window, semantic[:, :first_window.shape[1]])
  assert not np.array_equal(musiclm.generate_semantic_tokens(prompts, 0.5, seed=1), semantic)


def test_acoustic_stages_alone_render_given_semantic_tokens(musiclm):
  """The acoustic half on its own (e.g. a real clip's semantic tokens): on the first
  stage's tokens it is generate_tokens; other semantic tokens give other acoustic ones."""
  prompts = ["calm piano", "fast drums"]
  semantic = musiclm.generate_semantic_tokens(prompts, 0.5, seed=0)
  whole = musiclm.generate_tokens(prompts, 0.5, seed=0)
  np.testing.assert_array_equal(musiclm.generate_acoustic_tokens(prompts, semantic, seed=0),
                                whole)
  given = (semantic + 5) % musiclm.layout.semantic_codes
  assert not np.array_equal(musiclm.generate_acoustic_tokens(prompts, given, seed=0), whole)
  with pytest.raises(ValueError, match=r"\[batch=2, frames >= 1\], got shape \(13,\)"):
    musiclm.generate_acoustic_tokens(prompts, semantic[0], seed=0)
  out_of_range = semantic.copy()
  out_of_range[1, 3] = 16
  with pytest.raises(ValueError, match=r"cluster ids in \[0, 16\), got \[\d+, 16\]"):
    musiclm.generate_acoustic_tokens(prompts, out_of_range, seed=0)


def test_fine_stage_alone_keeps_the_given_coarse_tokens(musiclm):
  """generate_fine_tokens adds the detail levels to given coarse tokens (e.g. a real
  clip's), level ids in range, and depends on them."""
  lay = musiclm.layout
  whole = musiclm.generate_tokens(["calm piano", "fast drums"], 0.5, seed=0)
  coarse = whole[..., :lay.coarse_levels]
  fine = musiclm.generate_fine_tokens(coarse, seed=0)
  assert fine.shape == whole.shape[:2] + (lay.acoustic_levels - lay.coarse_levels,)
  assert fine.min() >= 0 and fine.max() < lay.acoustic_codes
  np.testing.assert_array_equal(musiclm.generate_fine_tokens(coarse, seed=0), fine)
  other = musiclm.generate_fine_tokens((coarse + 7) % lay.acoustic_codes, seed=0)
  assert not np.array_equal(other, fine)
  with pytest.raises(ValueError, match=r"coarse tokens must be \[batch, frames >= 1, 2\]"):
    musiclm.generate_fine_tokens(coarse[..., 0], seed=0)
  with pytest.raises(ValueError, match=r"level ids in \[0, \d+\)"):
    musiclm.generate_fine_tokens(coarse + lay.acoustic_codes, seed=0)


def test_without_the_fine_stage_the_coarse_levels_are_decoded_alone(musiclm, monkeypatch):
  """NO_FINE_STAGE returns the coarse levels the whole chain would have made, and the
  codec decodes those levels alone."""
  prompts, qc = ["calm piano", "fast drums"], musiclm.layout.coarse_levels
  skip = {"fine": musiclm_lib.NO_FINE_STAGE}
  whole = musiclm.generate_tokens(prompts, 0.5, seed=0)
  coarse = musiclm.generate_tokens(prompts, 0.5, seed=0, sampling=skip)
  assert coarse.shape == whole.shape[:2] + (qc,)
  np.testing.assert_array_equal(coarse, whole[..., :qc])
  decoded, decode = [], musiclm.codec.decode
  monkeypatch.setattr(musiclm.codec, "decode",
                      lambda codes: (decoded.append(np.array(codes)), decode(codes))[1])
  wave = musiclm.generate(prompts, 0.5, seed=0, sampling=skip)
  np.testing.assert_array_equal(decoded[0], coarse)
  assert wave.shape == (2, int(0.5 * musiclm.sample_rate)) and np.all(np.isfinite(wave))
  with pytest.raises(ValueError, match="give it a fine Sampling"):
    musiclm.generate_fine_tokens(coarse, seed=0, sampling=skip)


def test_a_models_default_sampling_travels_in_its_bundle(musiclm, tmp_path):
  """A model whose default skips the fine stage (as the tiny recipes export) generates the
  coarse levels alone with no sampling given, after a bundle round trip too; a fine
  Sampling given runs the fine stage; a manifest without sampling (an older bundle) means
  the library's defaults, and a broken one is named."""
  prompts, qc = ["calm piano", "fast drums"], musiclm.layout.coarse_levels
  skip = {"fine": musiclm_lib.NO_FINE_STAGE}
  own = musiclm_lib.MusicLM(musiclm.layout, musiclm.mulan, musiclm.semantic, musiclm.coarse,
                            musiclm.fine, musiclm.codec, musiclm.windows,
                            semantic_tokenizer=musiclm.semantic_tokenizer,
                            default_sampling=skip)
  whole = musiclm.generate_tokens(prompts, 0.3, seed=2)
  path = str(tmp_path / "bundle")
  bundle.save_bundle(own, path)
  manifest_path = os.path.join(path, "manifest.json")
  manifest = json.load(open(manifest_path))
  assert manifest["sampling"]["fine"] is None
  assert manifest["sampling"]["coarse"] == {"temperature": 1.0, "top_k": 250, "top_p": 1.0,
                                            "guidance_scale": 1.5}
  loaded = bundle.load_bundle(path)
  assert loaded.default_sampling == musiclm_lib.DEFAULT_SAMPLING | skip
  np.testing.assert_array_equal(loaded.generate_tokens(prompts, 0.3, seed=2), whole[..., :qc])
  with_fine = {"fine": musiclm_lib.DEFAULT_SAMPLING["fine"]}
  np.testing.assert_array_equal(loaded.generate_tokens(prompts, 0.3, seed=2,
                                                       sampling=with_fine), whole)
  fine = loaded.generate_fine_tokens(whole[..., :qc], seed=4)   # the library's fine sampling
  np.testing.assert_array_equal(fine, musiclm.generate_fine_tokens(whole[..., :qc], seed=4))
  with pytest.raises(ValueError, match=r"unknown stages \['fien'\]"):
    loaded.generate_tokens(prompts, 0.3, sampling={"fien": musiclm_lib.NO_FINE_STAGE})
  del manifest["sampling"]
  json.dump(manifest, open(manifest_path, "w"))
  assert bundle.load_bundle(path).default_sampling == musiclm_lib.DEFAULT_SAMPLING
  for broken, message in (({"coarse": None}, r"sampling\['coarse'\] must be a Sampling"),
                          ({"fine": {"temprature": 1.0}}, "unknown Sampling fields"),
                          ({"fine": {"temperature": -1.0}}, "temperature must be >= 0")):
    json.dump({**manifest, "sampling": broken}, open(manifest_path, "w"))
    with pytest.raises(bundle.BundleError, match=message):
      bundle.load_bundle(path)


def test_story_mode_switches_the_conditioning_at_window_starts(musiclm):
  story = [musiclm_lib.TimedPrompt("calm piano", 0.0, 0.2),
           musiclm_lib.TimedPrompt("fast drums", 0.2, 1.0)]
  seen = []
  original = musiclm.mulan.text_tokens
  try:
    musiclm.mulan.text_tokens = lambda texts: (seen.append(list(texts)), original(texts))[1]
    musiclm.generate_tokens([story], 0.4, seed=0)
  finally:
    musiclm.mulan.text_tokens = original
  assert ["calm piano"] in seen and ["fast drums"] in seen


def test_continues_an_audio_prompt_from_its_own_tokens(musiclm):
  from tests import soundstream_fixtures
  clips = soundstream_fixtures.real_clips()[:2]          # 0.2 s each: 5 semantic frames
  given = musiclm.tokenize_prompt(clips, soundstream_fixtures.SAMPLE_RATE)
  assert given.semantic.shape == (2, 5) and given.acoustic.shape == (2, 80, 4)
  assert given.mulan.shape == (2, 4)
  np.testing.assert_array_equal(given.acoustic, musiclm.codec.encode(clips))
  # Text for one, the recording's own MuLan tokens for the other.
  tokens = musiclm.generate_tokens(["calm piano", None], 0.5, seed=0, audio_prompt=given)
  assert tokens.shape == (2, 13 * 16, 4)
  np.testing.assert_array_equal(tokens[:, :80], given.acoustic)   # the prompt, kept
  other = musiclm.generate_tokens(["calm piano", None], 0.5, seed=1, audio_prompt=given)
  np.testing.assert_array_equal(other[:, :80], given.acoustic)
  assert not np.array_equal(other[:, 80:], tokens[:, 80:])      # and continued
  wave = musiclm.generate([None], 0.5, audio_prompt=clips[0],
                          audio_prompt_rate=soundstream_fixtures.SAMPLE_RATE)
  assert wave.shape == (1, 8000) and np.all(np.isfinite(wave))
  with pytest.raises(ValueError, match="ask for more seconds"):
    musiclm.generate(["calm piano"], 0.2, audio_prompt=clips[0])
  with pytest.raises(ValueError, match="needs an audio prompt"):
    musiclm.generate_tokens([None], 0.2)


def test_bundle_round_trip_gives_the_same_audio_and_refuses_damage(musiclm, tmp_path):
  path = str(tmp_path / "bundle")
  musiclm.codec.provenance = {"trained_with": "musiclm-jax train", "step": 7}
  try:
    bundle.save_bundle(musiclm, path)
  finally:
    musiclm.codec.provenance = None
  manifest = json.load(open(os.path.join(path, "manifest.json")))
  assert {rel.split(os.sep)[0] for rel in manifest["files"]} == set(bundle.PARTS)
  assert manifest["provenance"] == {"codec": {"trained_with": "musiclm-jax train", "step": 7}}
  loaded = bundle.load_bundle(path)
  assert loaded.codec.provenance == manifest["provenance"]["codec"]
  prompts = ["calm piano", "fast drums"]
  np.testing.assert_array_equal(loaded.generate(prompts, 0.2, seed=3),
                                musiclm.generate(prompts, 0.2, seed=3))
  # bfloat16 parameters: half the bytes, still a working pipeline.
  small = str(tmp_path / "bundle_bf16")
  bundle.save_bundle(musiclm, small, dtype="bfloat16")
  wave = bundle.load_bundle(small).generate(prompts, 0.2, seed=3)
  assert wave.shape == (2, 3200) and np.all(np.isfinite(wave))
  # A flipped byte, a missing part, a params tree that does not fit the config.
  victim = next(os.path.join(path, rel) for rel in sorted(manifest["files"])
                if rel.startswith("coarse") and "params" in rel)
  data = bytearray(open(victim, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(victim, "wb").write(bytes(data))
  with pytest.raises(bundle.BundleError, match="does not match its checksum"):
    bundle.load_bundle(path)
  shutil.rmtree(os.path.join(small, "fine"))
  with pytest.raises(bundle.BundleError, match="lacks the part 'fine'"):
    bundle.load_bundle(small)
  with pytest.raises(bundle.BundleError, match="no manifest.json"):
    bundle.load_bundle(str(tmp_path))
  # A config edited (and its checksum updated): the parameters no longer fit it.
  edited = str(tmp_path / "bundle_edited")
  bundle.save_bundle(musiclm, edited)
  config_path = os.path.join(edited, "semantic", "config.json")
  config = json.load(open(config_path))
  config["mlp_dim"] *= 2
  json.dump(config, open(config_path, "w"))
  manifest = json.load(open(os.path.join(edited, "manifest.json")))
  manifest["files"][os.path.join("semantic", "config.json")] = {
      "sha256": bundle._sha256(config_path), "bytes": os.path.getsize(config_path)}
  json.dump(manifest, open(os.path.join(edited, "manifest.json"), "w"))
  with pytest.raises(bundle.BundleError, match="'semantic': parameters do not match"):
    bundle.load_bundle(edited)


def test_delay_pattern_stages_generate_continue_and_travel_in_a_bundle(tmp_path):
  """Acoustic stages that model their levels in parallel (the delay pattern) slide over
  the clip, keep each id in its level, continue an audio prompt and load from a bundle."""
  from tests import soundstream_fixtures
  layout = token_layout.TokenLayout(**LAYOUT_FIELDS)
  parts = tokenize_fixtures.tiny_tokenizers()
  parallel = {"semantic": 0, "coarse": 2, "fine": 2}
  stage_lms = [_stage(layout, s, i, parallel[s]) for i, s in enumerate(token_layout.STAGES)]
  model = musiclm_lib.MusicLM(layout, parts.mulan, *stage_lms, parts.codec, WINDOWS,
                              semantic_tokenizer=parts.semantic)
  prompts = ["calm piano", "fast drums"]
  tokens = model.generate_tokens(prompts, 0.5, seed=0)
  assert tokens.shape == (2, 13 * 16, 4)
  assert tokens.min() >= 0 and tokens.max() < 32
  clips = soundstream_fixtures.real_clips()[:2]
  given = model.tokenize_prompt(clips, soundstream_fixtures.SAMPLE_RATE)
  continued = model.generate_tokens(prompts, 0.5, seed=0, audio_prompt=given)
  np.testing.assert_array_equal(continued[:, :80], given.acoustic)
  path = str(tmp_path / "bundle")
  bundle.save_bundle(model, path)
  np.testing.assert_array_equal(bundle.load_bundle(path).generate(prompts, 0.2, seed=3),
                                model.generate(prompts, 0.2, seed=3))
  with pytest.raises(ValueError, match="the coarse stage models 4 levels in parallel, but "
                                       "the token layout gives it 2"):
    musiclm_lib.MusicLM(layout, parts.mulan, stage_lms[0], _stage(layout, "coarse", 1, 4),
                        stage_lms[2], parts.codec, WINDOWS)


def test_generate_cli_writes_wavs_for_prompts_stories_and_batches(musiclm, tmp_path, capsys):
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.generation import cli
  path = str(tmp_path / "bundle")
  bundle.save_bundle(musiclm, path)
  out = str(tmp_path / "one.wav")
  cli.main(["--bundle", path, "--prompt", "calm piano", "--seconds", "0.2", "--out", out,
            "--temperature", "0.8", "--fine_top_k", "5"])
  wave, rate = audio_io.read_audio(out)
  assert rate == 16000 and wave.shape[0] == 3200
  story = cli.parse_prompts(["fast drums@0.2-0.4", "calm piano@0-0.2"])
  assert [(p.text, p.start_s) for p in story[0]] == [("calm piano", 0.0), ("fast drums", 0.2)]
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("calm piano\nfast drums\n")
  folder = str(tmp_path / "many")
  cli.main(["--bundle", path, "--prompts", str(prompts), "--num_samples", "2", "--seconds",
            "0.1", "--out", folder])
  assert sorted(os.listdir(folder)) == ["000_sample0.wav", "000_sample1.wav",
                                        "001_sample0.wav", "001_sample1.wav"]
  ranked = str(tmp_path / "ranked")
  cli.main(["--bundle", path, "--prompt", "calm piano", "--num_samples", "3", "--rerank",
            "--seconds", "0.2", "--out", ranked])
  assert sorted(os.listdir(ranked)) == ["000_rank0.wav", "000_rank1.wav", "000_rank2.wav"]
  scores = [float(v) for v in capsys.readouterr().out.split("best first: ")[1].split("\n")[0]
            .split(", ")]
  assert scores == sorted(scores, reverse=True) and all(-1 <= v <= 1 for v in scores)
  from tests import soundstream_fixtures
  intro = str(tmp_path / "intro.wav")   # stereo at 22.05 kHz: down-mixed and resampled
  clip = soundstream_fixtures.real_clips()[0]
  audio_io.save_audio(intro, np.stack([clip, clip], axis=1), 16000)
  stereo = audio_io.load_audio(intro, 22050, mono=False)
  audio_io.save_audio(intro, stereo, 22050)
  continued = str(tmp_path / "continued.wav")
  cli.main(["--bundle", path, "--audio_prompt", intro, "--seconds", "0.4", "--out",
            continued])
  wave, rate = audio_io.read_audio(continued)
  assert rate == 16000 and wave.shape[0] == 6400
  with pytest.raises(SystemExit) as e:
    cli.main(["--bundle", str(tmp_path / "nope"), "--prompt", "x", "--out", out])
  assert e.value.code == 2 and "manifest.json" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    cli.main(["--bundle", path, "--prompt", "a@0-1", "--prompt", "b", "--out", out])


def test_text_prompts_condition_on_the_audio_token_bank_and_it_travels(musiclm, tmp_path):
  """With an audio token bank the stages see, for a text prompt, the bank's tuple nearest
  its MuLan text embedding (not the text embedding's own RVQ tokens); the bank travels in
  the bundle, and `text_conditioning` switches back to the paper's tokens."""
  from musiclm_jax.mulan import audio_token_bank
  parts = tokenize_fixtures.tiny_tokenizers()
  clips = np.random.default_rng(0).integers(0, 16, size=(12, 4))
  bank = audio_token_bank.AudioTokenBank(clips, parts.mulan.codebooks)
  model = musiclm_lib.MusicLM(musiclm.layout, musiclm.mulan, musiclm.semantic, musiclm.coarse,
                              musiclm.fine, musiclm.codec, WINDOWS,
                              semantic_tokenizer=musiclm.semantic_tokenizer,
                              audio_token_bank=bank)
  prompts = ["calm piano", "fast drums"]
  chosen = model.text_tokens(prompts)
  np.testing.assert_array_equal(chosen, bank.nearest(musiclm.mulan.embed_text(prompts)))
  assert all((row == bank.tokens).all(axis=1).any() for row in chosen)
  path = str(tmp_path / "bundle")
  bundle.save_bundle(model, path)
  loaded = bundle.load_bundle(path)
  np.testing.assert_array_equal(loaded.audio_token_bank.tokens, bank.tokens)
  np.testing.assert_array_equal(loaded.generate(prompts, 0.2, seed=3),
                                model.generate(prompts, 0.2, seed=3))
  loaded.text_conditioning = musiclm_lib.TEXT_TOKENS
  np.testing.assert_array_equal(loaded.text_tokens(prompts), musiclm.mulan.text_tokens(prompts))
  np.testing.assert_array_equal(loaded.generate(prompts, 0.2, seed=3),
                                musiclm.generate(prompts, 0.2, seed=3))
  with pytest.raises(ValueError, match="the MuLan audio token bank has 3 levels"):
    musiclm_lib.MusicLM(musiclm.layout, musiclm.mulan, musiclm.semantic, musiclm.coarse,
                        musiclm.fine, musiclm.codec, WINDOWS, audio_token_bank=
                        audio_token_bank.AudioTokenBank(clips[:, :3], parts.mulan.codebooks))
