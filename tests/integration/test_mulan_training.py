"""MuLan on the training core: learning on real pairs, global-batch negatives across
devices, text-tower freezing / learning-rate multipliers, pretrained initialisation, and the
train entry point on a captioned audio_folder followed by the `mulan` CLI."""

import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from musiclm_jax.mulan import model as model_lib, pretrained_bert
from musiclm_jax.training import models as models_lib, optimizers, partitioning
from musiclm_jax.training import trainer as trainer_lib
from tests import harness
from tests import mulan_fixtures as fx


def _train(model, batch, steps, devices=None):
  partitioner = partitioning.Partitioner(devices=devices or jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner)
  state = trainer.create_state({k: v.shape for k, v in batch.items()})
  initial = jax.device_get(state.params)
  sharded = partitioner.shard_batch(batch)
  history = []
  for _ in range(steps):
    state, metrics = trainer.train_step(state, sharded)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return initial, state, history


def _mean(record, name):
  return record[f"{name}_sum"] / record["weight_sum"]


def test_loss_falls_from_chance_on_real_caption_pairs():
  batch, _ = fx.captioned_batch(8)
  _, state, history = _train(fx.tiny_model(optax.adam(3e-3)), batch, 40)
  losses = [_mean(h, "loss") for h in history]
  assert abs(_mean(history[0], "log_batch_size") - np.log(8)) < 1e-6
  assert losses[0] > 0.8 * np.log(8)                 # starts near chance
  assert losses[-1] < 0.25 * losses[0]               # and learns the pairing
  assert _mean(history[-1], "text_to_audio_accuracy") == 1.0
  model = fx.tiny_model()
  _, metrics = model.eval_fn(jax.device_get(state.params), batch)
  assert metrics["text_to_audio_recall@1_sum"] / metrics["weight_sum"] == 1.0
  assert (metrics["mean_positive_cosine_sum"] > metrics["mean_negative_cosine_sum"] + 0.3
          * metrics["weight_sum"])


def test_negatives_span_the_global_batch_on_8_devices():
  """Each device holds 2 of 16 pairs; the loss still contrasts all 16 (the same numbers as
  one device holding the whole batch)."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  batch, _ = fx.captioned_batch(12)
  batch = {k: np.concatenate([v, v[:4][::-1]]) for k, v in batch.items()}  # 16 pairs
  # SGD, not Adam: Adam turns gradients that are zero up to rounding (BERT's key bias,
  # which softmax ignores) into full-size steps, so summation order would show.
  model = fx.tiny_model(optax.sgd(0.1))
  _, single, single_history = _train(model, batch, 3)
  _, sharded, sharded_history = _train(model, batch, 3, devices=jax.devices())
  for a, b in zip(single_history, sharded_history):
    np.testing.assert_allclose(b["loss_sum"], a["loss_sum"], rtol=2e-5)
  assert abs(_mean(single_history[0], "log_batch_size") - np.log(16)) < 1e-6
  harness.assert_trees_close(jax.device_get(sharded.params), jax.device_get(single.params),
                             rtol=2e-4, atol=2e-5)


def test_text_tower_frozen_or_at_a_lower_learning_rate():
  batch, _ = fx.captioned_batch(4)

  def change(multiplier, freeze=False):
    opt = optimizers.create_optimizer(
        "adam", learning_rate=1e-3, clip_norm=1.0,
        param_lr_multipliers={"text_encoder": multiplier})
    model = model_lib.MuLanModel(model_lib.MuLan(fx.tiny_config()), opt,
                                 freeze_text_tower=freeze)
    initial, state, history = _train(model, batch, 1)
    params = jax.device_get(state.params)
    delta = lambda name: max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(params[name]), jax.tree.leaves(initial[name])))
    return delta("text_encoder"), delta("audio_tower"), state, history[0]

  param_size = lambda state, name: sum(x.size for x in jax.tree.leaves(state.params[name]))
  for multiplier, freeze in ((0.0, False), (0.1, True)):
    text, audio, state, metrics = change(multiplier, freeze)
    assert text == 0.0 and audio > 0
    # Frozen parameters keep no Adam moments.
    opt_leaves = sum(x.size for x in jax.tree.leaves(state.opt_states))
    trained = sum(param_size(state, k) for k in state.params if k != "text_encoder")
    assert opt_leaves < 2 * trained + 10
  # With freeze_text_tower no gradient reaches the text tower at all.
  _, _, _, frozen_metrics = change(1.0, freeze=True)
  _, _, _, free_metrics = change(1.0, freeze=False)
  assert frozen_metrics["grad_norm"] < free_metrics["grad_norm"]
  text, audio, _, _ = change(0.1)
  # Adam's first step moves every parameter by ~lr: the text tower by ~lr / 10.
  np.testing.assert_allclose(text, 1e-4, rtol=0.05)
  np.testing.assert_allclose(audio, 1e-3, rtol=0.05)
  with pytest.raises(ValueError, match="match no parameter"):
    change_opt = optimizers.create_optimizer(param_lr_multipliers={"text_tower": 0.0})
    change_opt.init({"text_encoder": np.zeros(2)})


def test_training_starts_from_the_pretrained_text_tower():
  batch, _ = fx.captioned_batch(2)
  model = fx.tiny_model(text_pretrained=True)
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner, ema_decay=0.9)
  state = trainer.create_state({k: v.shape for k, v in batch.items()})
  _, expected = pretrained_bert.load_bert_folder(pretrained_bert.minilm_l6_folder())
  for tree in (state.params, state.ema_params):
    harness.assert_trees_close(jax.device_get(tree["text_encoder"]), expected, rtol=0, atol=0)
  with pytest.raises(ValueError, match="params/text_encoder/word_embeddings"):
    models_lib.merge_pretrained_params(
        {"text_encoder": {"word_embeddings": np.zeros((3, 2))}},
        {"text_encoder": {"word_embeddings": np.zeros((3, 4))}})
  with pytest.raises(KeyError, match="params/nothing"):
    models_lib.merge_pretrained_params({"a": np.zeros(1)}, {"nothing": np.zeros(1)})


@pytest.fixture(scope="module")
def captioned_data(tmp_path_factory):
  """A captioned audio_folder (sidecar .txt per file) built at 16 kHz in 2 s clips."""
  tmp = tmp_path_factory.mktemp("mulan_data")
  music = tmp / "music"
  music.mkdir()
  for name, path in fx.sample_paths().items():
    shutil.copy(path, music)
    (music / f"{name}.txt").write_text(fx.CAPTIONED[name])
  shutil.copy(fx.sample_paths()["loop_amen"], music / "uncaptioned.flac")
  data_dir = str(tmp / "tfds")
  built = subprocess.run([sys.executable, "-m", "musiclm_jax.cli", "build-data", "audio_folder",
                          f"--manual_dir={music}", f"--data_dir={data_dir}",
                          "--config=16khz_2s"], cwd=harness.REPO, capture_output=True,
                         text=True, timeout=300, env=harness.env_with_devices(1))
  assert built.returncode == 0 and "train" in built.stdout, built.stderr[-2000:]
  return str(music), data_dir


def test_caption_task_tokenizes_what_python_tokenizes(captioned_data):
  from musiclm_jax.tasks import audio as audio_tasks
  from musiclm_jax.training import data as data_lib
  _, data_dir = captioned_data
  name = audio_tasks.register_audio_crop_task(
      "mulan_pairs_test", "audio_folder/16khz_2s:1.0.0", data_dir, sample_rate=16000,
      crop_samples=8000, short_clips="pad", captions=True, text_length=fx.TEXT_LENGTH)
  vocab = fx.tiny_config().text_tokenizer()
  expected = {tuple(vocab.encode_batch([c], fx.TEXT_LENGTH)[0]) for c in fx.CAPTIONED.values()}
  seen = set()
  for split in ("train", "validation", "test"):
    config = data_lib.DatasetConfig(
        mixture_or_task_name=name, task_feature_lengths={"audio": 8000,
                                                         "text_tokens": fx.TEXT_LENGTH},
        split=split, batch_size=1, shuffle=False, seed=0, num_epochs=1)
    try:
      ds = data_lib.get_dataset(config, audio_tasks.CaptionedAudioFeatureConverter(), 0, 1)
    except ValueError:  # a split no file hashed into
      continue
    for batch in ds.as_numpy_iterator():
      assert batch["audio"].shape == (1, 8000)
      seen.add(tuple(batch["text_tokens"][0]))
  # Every captioned file's caption, tokenized as Python tokenizes it, and nothing else (the
  # uncaptioned file is skipped).
  assert seen == expected


def test_a_mixture_of_two_captioned_datasets(captioned_data, music_captions_tiny):
  """MuLan pairs from a folder of captioned samples and from the rendered captioned set, 1:1."""
  from musiclm_jax.tasks import audio as audio_tasks, mixtures
  from musiclm_jax.training import data as data_lib
  _, folder_data = captioned_data
  rendered_data = music_captions_tiny
  tasks = [audio_tasks.register_audio_crop_task(
      f"mix_part_{i}", tfds_name, data_dir, sample_rate=16000, crop_samples=8000,
      short_clips="pad", captions=True, text_length=48)
      for i, (tfds_name, data_dir) in enumerate(
          [("audio_folder/16khz_2s:1.0.0", folder_data),
           ("music_captions/tiny_16khz:1.0.0", rendered_data)])]
  name = mixtures.register_mixture("mulan_mix_test", tasks, [1.0, 1.0])
  config = data_lib.DatasetConfig(
      mixture_or_task_name=name, task_feature_lengths={"audio": 8000, "text_tokens": 48},
      split="train", batch_size=8, shuffle=True, seed=0)
  ds = data_lib.get_dataset(config, audio_tasks.CaptionedAudioFeatureConverter(), 0, 1)
  vocab = fx.tiny_config().text_tokenizer()
  rendered = folder = 0
  for batch in ds.take(4).as_numpy_iterator():
    assert batch["audio"].shape == (8, 8000) and batch["text_tokens"].shape == (8, 48)
    for tokens in batch["text_tokens"]:
      text = vocab.decode(tokens)
      rendered += "bpm" in text
      folder += "bpm" not in text
  assert rendered >= 6 and folder >= 6   # both sources, about 1:1 over 32 pairs
  with pytest.raises(ValueError, match="not registered"):
    mixtures.register_mixture("bad_mix", ["no_such_task"])


def _mulan_cli(*args):
  return subprocess.run([sys.executable, "-m", "musiclm_jax.cli", "mulan", *args],
                        cwd=harness.REPO, capture_output=True, text=True, timeout=300,
                        env=harness.env_with_devices(1))


def test_train_entry_point_then_cli_embed_score_and_fit_rvq(captioned_data, tmp_path):
  music, data_dir = captioned_data
  model_dir = str(tmp_path / "run")
  harness.run_train(model_dir, 4, bindings=[
      f"AUDIO_DATA_DIR='{data_dir}'", "BATCH_SIZE=4", "eval/DatasetConfig.batch_size=2",
      "train.eval_period=4", "train.log_period=1"],
      gin_files=("mulan/tiny.gin", "runs/mulan.gin"))
  from musiclm_jax.training import metrics
  records = metrics.read_metrics(model_dir, "train")
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert all(np.isfinite(r["loss"]) for r in records)
  evaluation = metrics.read_metrics(model_dir, "eval")[-1]
  assert evaluation["step"] == 4
  for key in ("text_to_audio_recall@1", "chance_recall@1", "mean_positive_cosine",
              "log_batch_size"):
    assert np.isfinite(evaluation[key])

  rvq = str(tmp_path / "rvq.npz")
  fit = _mulan_cli("fit-rvq", "--model_dir", model_dir, music, "--output", rvq, "--levels",
                   "3", "--codes", "8", "--steps", "5")
  assert fit.returncode == 0 and "relative squared error" in fit.stdout, fit.stderr[-2000:]
  out = str(tmp_path / "text.npy")
  embed = _mulan_cli("embed", "--model_dir", model_dir, "--text", "a loud crash cymbal",
                     "--text", "ambient piano", "--rvq", rvq, "--output", out)
  assert embed.returncode == 0, embed.stderr[-2000:]
  assert "tokens [" in embed.stdout and np.load(out).shape == (2, 16)
  audio_file = fx.sample_paths()["drum_splash_hard"]
  score = _mulan_cli("score", "--model_dir", model_dir, "--text", "a loud crash cymbal",
                     "--audio", audio_file)
  assert score.returncode == 0, score.stderr[-2000:]
  assert -1 <= float(score.stdout.split()[0]) <= 1
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF\x00\x00")
  bad = _mulan_cli("embed", "--model_dir", model_dir, "--audio", str(broken))
  assert bad.returncode == 2 and "broken.wav" in bad.stderr
  missing = _mulan_cli("score", "--model_dir", str(tmp_path / "nope"), "--text", "x",
                       "--audio", audio_file)
  assert missing.returncode == 2 and "config.gin" in missing.stderr
