"""MusicLM's three stages train from token shards: the tokenize job's output (tiny untrained
tokenizers over the rendered captioned set) through `python -m musiclm_jax.train` with the
stage gin files, at the tiny LM size."""

import json
import os

import numpy as np
import pytest

from musiclm_jax.tasks import stages, tokenize_job
from musiclm_jax.training import metrics
from tests import harness, tokenize_fixtures

CROP_SECONDS = 0.2   # 5 semantic tokens, 80 acoustic frames of the tiny 400 Hz codec
COARSE_LEVELS = 2


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory, music_captions_tiny):
  out = str(tmp_path_factory.mktemp("stage_tokens") / "tokens")
  tokenize_job.run(tokenize_fixtures.tiny_tokenizers(), tokenize_fixtures.DATASET,
                   music_captions_tiny, ["train", "validation"], out, 2, show_progress=False)
  return out


@pytest.fixture(scope="module")
def stage_runs(tokens_dir, tmp_path_factory):
  """The three stages trained 3 steps each through the train entry point."""
  root = tmp_path_factory.mktemp("stage_runs")
  with open(os.path.join(tokens_dir, "layout.json"), encoding="utf-8") as f:
    fields = json.load(f)
  layout = stages.TokenLayout(**fields, coarse_levels=COARSE_LEVELS)
  runs = {}
  for stage in stages.STAGES:
    # gin/stages/tiny/<stage>.gin with the test tokenizers' layout (their codec is the
    # tests' 400 Hz one, not the demo's 100 Hz), crops shortened to the tiny set's clips.
    prefix_len, target_len = layout.lengths(stage, CROP_SECONDS)
    bindings = [f"TOKENS_DIR='{tokens_dir}'",
                *[f"TokenLayout.{k}={v}" for k, v in sorted(fields.items())],
                f"TASK_FEATURE_LENGTHS={{'prefix_tokens': {prefix_len}, 'targets': {target_len}}}",
                f"DecoderConfig.max_length={prefix_len + target_len}",
                f"{stage}/register_stage_task.crop_seconds={CROP_SECONDS}",
                "BATCH_SIZE=4", "train.eval_period=3", "eval/DatasetConfig.batch_size=2"]
    runs[stage] = str(root / stage)
    harness.run_train(runs[stage], 3, bindings=bindings, gin_files=(
        f"stages/tiny/{stage}.gin", "runs/pretrain.gin"))
  return runs, layout


@pytest.mark.parametrize("stage", stages.STAGES)
def test_each_stage_trains_from_token_shards(stage, stage_runs):
  runs, layout = stage_runs
  records = metrics.read_metrics(runs[stage], "train")
  assert [r["step"] for r in records] == [1, 2, 3]
  losses = [r["loss"] for r in records]
  assert all(np.isfinite(losses))
  # An untrained model is near-uniform over the target vocabulary.
  assert losses[0] > 0.5 * np.log(layout.vocab_sizes(stage)[1])
  assert metrics.read_metrics(runs[stage], "eval")[-1]["step"] == 3


def test_export_from_training_runs_then_generate(stage_runs, tokens_dir, music_captions_tiny,
                                                 tmp_path):
  """Tiny MuLan and w2v-BERT runs (one step on the rendered set), the tiny codec, the three
  stage runs -> `musiclm-jax export` -> a bundle that `generate` uses."""
  from musiclm_jax.generation import cli as generate_cli, export
  from musiclm_jax.mulan import tokenizer as mulan_tokenizer
  from musiclm_jax.w2v_bert import tokenizer as semantic_tokenizer
  runs, _ = stage_runs
  data = [f"AUDIO_DATA_DIR='{music_captions_tiny}'",
          "AUDIO_DATASET='music_captions/tiny_16khz:1.0.0'", "BATCH_SIZE=4", "train.eval_period=0"]
  mulan_run, w2v_run = str(tmp_path / "mulan"), str(tmp_path / "w2v")
  harness.run_train(mulan_run, 1, bindings=data, gin_files=("mulan/tiny.gin", "runs/mulan.gin"))
  harness.run_train(w2v_run, 1, bindings=data,
                    gin_files=("w2v_bert/tiny.gin", "runs/w2v_bert.gin"))
  parts = tokenize_fixtures.tiny_tokenizers()
  rng = np.random.default_rng(0)
  rvq, centroids, codec = (str(tmp_path / n) for n in ("rvq.npz", "centroids.npz", "codec"))
  mulan_tokenizer.save_rvq(rvq, rng.normal(size=(4, 16, 16)).astype(np.float32))
  w2v = semantic_tokenizer.load_w2v_bert(w2v_run)
  semantic_tokenizer.SemanticTokenizer(
      *w2v, 1, rng.normal(size=(16, 32)).astype(np.float32)).save_centroids(centroids)
  parts.codec.save(codec)
  args = ["--mulan_model_dir", mulan_run, "--mulan_rvq", rvq, "--semantic_model_dir", w2v_run,
          "--centroids", centroids, "--codec", codec, "--semantic_stage_dir",
          runs["semantic"], "--coarse_stage_dir", runs["coarse"], "--fine_stage_dir",
          runs["fine"]]
  bundle = str(tmp_path / "bundle")
  export.main(args + ["--out", bundle, "--bfloat16"])
  out = str(tmp_path / "out.wav")
  generate_cli.main(["--bundle", bundle, "--prompt", "a calm chorale", "--seconds", "0.3",
                     "--out", out])
  from musiclm_jax.audio import io as audio_io
  wave, rate = audio_io.read_audio(out)
  assert rate == 16000 and wave.shape[0] == 4800
  # A bundle whose default generation skips the fine stage (the tiny recipes' export) says
  # so in its manifest; generate follows it, and --fine_stage runs the stage it still holds.
  skips = str(tmp_path / "bundle_no_fine")
  export.main(args + ["--out", skips, "--no_fine_stage", "--mulan_token_data", tokens_dir])
  manifest = json.load(open(os.path.join(skips, "manifest.json")))
  assert manifest["sampling"]["fine"] is None
  # The train clips' MuLan tokens travel as the bundle's audio token bank; text prompts
  # condition on its rows.
  from musiclm_jax.generation import bundle as bundle_lib
  loaded = bundle_lib.load_bundle(skips)
  np.testing.assert_array_equal(loaded.audio_token_bank.tokens,
                                np.unique(stages.read_mulan_tokens(tokens_dir), axis=0))
  chosen = loaded.text_tokens(["a calm chorale", "fast drums"])
  assert all((row == loaded.audio_token_bank.tokens).all(axis=1).any() for row in chosen)
  # At pod scale the bank is a seeded sample of the clips, not a pass over every shard.
  every = stages.read_mulan_tokens(tokens_dir)
  sample = stages.read_mulan_tokens(tokens_dir, max_clips=3)
  assert sample.shape == (3, every.shape[1])
  assert all((row == every).all(axis=1).any() for row in sample)
  with pytest.raises(ValueError, match="max_clips must be >= 1"):
    stages.read_mulan_tokens(tokens_dir, max_clips=0)
  with pytest.raises(ValueError, match="no token shards match"):
    export.from_runs(mulan_run, rvq, w2v_run, centroids, codec, runs["semantic"],
                     runs["coarse"], runs["fine"], mulan_token_data=str(tmp_path))
  for flags in ([], ["--fine_stage"], ["--text_tokens"]):
    generate_cli.main(["--bundle", skips, "--prompt", "a calm chorale", "--seconds", "0.3",
                       "--out", out, *flags])
    assert audio_io.read_audio(out)[0].shape[0] == 4800
  # Parts that disagree with the stages' layout: refused, naming the file.
  wrong = str(tmp_path / "rvq_wrong.npz")
  mulan_tokenizer.save_rvq(wrong, rng.normal(size=(3, 16, 16)).astype(np.float32))
  with pytest.raises(ValueError, match="MuLan levels x codes.*rvq_wrong.npz"):
    export.from_runs(mulan_run, wrong, w2v_run, centroids, codec, runs["semantic"],
                     runs["coarse"], runs["fine"])
