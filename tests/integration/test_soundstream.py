"""SoundStream on real audio: learning, codebooks, bitrates, streaming, bundles, CLI."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from musiclm_jax.audio import io as audio_io
from musiclm_jax.soundstream import codec as codec_lib, losses, model as model_lib
from musiclm_jax.training import train_state
from tests import harness
from tests import soundstream_fixtures as fx


@pytest.fixture(scope="module")
def trained():
  """The tiny codec overfitted on two real clips (reconstruction only, no adversary)."""
  clips = fx.real_clips()[:2]
  model = fx.tiny_model(warmup_steps=10_000)
  trainer, state, history = harness.train_on_batch(model, clips, 150)
  codec = codec_lib.Codec.from_train_state(model.config, jax.device_get(state.params),
                                           jax.device_get(state.flax_mutables))
  return clips, model, state, history, codec


def test_overfits_a_real_clip_and_uses_its_codes(trained):
  _, _, _, history, _ = trained
  rec = [h["generator/reconstruction_sum"] / h["generator/weight_sum"] for h in history]
  assert rec[-1] < 0.35 * rec[0], (rec[0], rec[-1])
  usage = history[-1]["generator/codebook_usage_sum"] / history[-1]["generator/weight_sum"]
  assert usage > 0.5, usage


def test_codec_computes_what_the_trained_model_computes(trained):
  clips, model, state, _, codec = trained
  assert model.config.weight_norm and not codec.config.weight_norm  # folded for inference
  expected = model.predict_batch(jax.device_get(state.params), {"audio": clips},
                                 flax_mutables=jax.device_get(state.flax_mutables))
  np.testing.assert_allclose(codec.decode(codec.encode(clips)), expected, atol=1e-4)


def test_codes_shapes_ranges_and_every_bitrate(trained):
  clips, model, _, _, codec = trained
  codes = codec.encode(clips)
  cfg = model.config
  assert codes.shape == (2, fx.CLIP_SAMPLES // cfg.hop_length, cfg.num_quantizers)
  assert codes.dtype == np.int32 and codes.min() >= 0 and codes.max() < cfg.codebook_size
  errors = []
  for q in range(1, cfg.num_quantizers + 1):
    audio = codec.decode(codes[..., :q])
    assert audio.shape == clips.shape and np.all(np.isfinite(audio))
    errors.append(float(losses.multi_scale_spectral_loss(clips, audio, cfg.sample_rate,
                                                         model.spectral_windows)))
  # More levels, more bits, closer to the input (quantizer dropout trained every depth);
  # measured as the loss trained on (spectral: a waveform error would punish phase).
  assert errors[-1] < errors[0], errors
  assert cfg.bitrate(4) == 4 * 5 * cfg.frame_rate


def test_streaming_equals_whole_clip(trained):
  clips, model, _, _, codec = trained
  hop = model.config.hop_length
  whole_codes = codec.encode(clips)
  encoder = codec.stream_encoder()
  pieces = [encoder.push(clips[:, start:start + size])
            for start, size in zip((0, hop, 3 * hop), (hop, 2 * hop, fx.CLIP_SAMPLES - 3 * hop))]
  np.testing.assert_array_equal(np.concatenate(pieces, axis=1), whole_codes)
  whole_audio = codec.decode(whole_codes)
  decoder = codec.stream_decoder()
  frames = whole_codes.shape[1]
  audio = [decoder.push(whole_codes[:, a:b]) for a, b in ((0, 1), (1, 4), (4, frames))]
  np.testing.assert_allclose(np.concatenate(audio, axis=1), whole_audio, atol=2e-5)


def test_tensorboard_summaries_show_the_input_and_both_decodings(trained):
  clips, model, state, _, codec = trained
  media = model.summaries(jax.device_get(state.params), jax.device_get(state.flax_mutables),
                          {"audio": clips})
  names = ["input", "decoded_full", "decoded_1_level"]
  expected = {f"example_{i}/{name}" for i in range(2) for name in names}
  assert set(media["audio"]) == expected
  assert set(media["images"]) == {f"{key}_log_mel" for key in expected}
  np.testing.assert_array_equal(media["audio"]["example_1/input"][0], clips[1])
  full, lowest = (media["audio"][f"example_1/decoded_{n}"][0] for n in ("full", "1_level"))
  np.testing.assert_allclose(full, np.clip(codec.decode(codec.encode(clips))[1], -1, 1),
                             atol=1e-4)
  np.testing.assert_allclose(lowest, np.clip(codec.decode(codec.encode(clips)[..., :1])[1],
                                             -1, 1), atol=1e-4)
  assert all(rate == model.config.sample_rate for _, rate in media["audio"].values())
  image = media["images"]["example_0/input_log_mel"]
  assert image.ndim == 2 and image.shape[0] == 64 and np.all(np.isfinite(image))


def test_warmup_then_adversarial_steps_on_real_audio():
  """Two warm-up steps without the discriminators (compiled without them), then 12
  adversarial steps that lower the reconstruction loss further."""
  clips = fx.real_clips()[:2]
  trainer, state, history = harness.train_on_batch(fx.tiny_model(warmup_steps=2), clips, 14)
  warmup, game = history[:2], history[2:]
  for h in warmup:
    assert h["discriminator/loss"] == h["discriminator/grad_norm"] == 0.0
    assert h["generator/adversarial_sum"] == h["generator/feature_matching_sum"] == 0.0
  assert all(np.isfinite(h["discriminator/loss"]) for h in game)
  # The discriminator is really trained (non-zero gradients once the game is on).
  assert all(h["discriminator/grad_norm"] > 0 and h["generator/feature_matching_sum"] > 0
             for h in game)
  rec = [h["generator/reconstruction_sum"] / h["generator/weight_sum"] for h in history]
  assert rec[-1] < rec[2], rec
  # One compiled step per phase; the warm-up's does not run the discriminators at all.
  steps = {key[1]: fn for key, fn in trainer._compiled.items() if key[0] == "train"}
  assert sorted(steps) == ["adversarial", "warmup"]
  batch = trainer.partitioner.shard_batch({"audio": clips})
  flops = {phase: fn.lower(state, batch).compile().cost_analysis()["flops"]
           for phase, fn in steps.items()}
  assert flops["warmup"] < 0.7 * flops["adversarial"], flops


def test_quantizer_warmup_trains_unquantized_then_fits_codebooks_to_the_encoder():
  """Three unquantized steps (codebooks untouched, not initialised), then quantized ones:
  the codebooks are k-means-initialised on the trained encoder's embeddings at the first."""
  clips = fx.real_clips()[:2]
  model = fx.tiny_model(warmup_steps=100)
  model.quantizer_warmup_steps = 3
  trainer, state, history = harness.train_on_batch(model, clips, 3)
  initialised = lambda s: [bool(v["initialized"]) for v in jax.device_get(
      s.flax_mutables["quantizer"]["generator"]["quantizer"]).values()]
  assert not any(initialised(state))
  assert all("generator/commitment_loss_sum" not in h for h in history)
  assert all(np.isfinite(h["generator/reconstruction_sum"]) for h in history)
  assert model.training_phase(state) == "warmup"
  state, metrics = trainer.train_step(state, trainer.partitioner.shard_batch({"audio": clips}))
  assert all(initialised(state))
  assert float(metrics["generator/codebook_usage_sum"]) > 0
  assert sorted(key[1] for key in trainer._compiled if key[0] == "train") == [
      "autoencoder", "warmup"]
  with pytest.raises(ValueError, match="quantizer_warmup_steps 5 > discriminator_warmup"):
    model_lib.SoundStreamModel(
        model.module, {"generator": optax.adam(1e-3), "discriminator": optax.adam(1e-3)},
        discriminator_warmup_steps=2, quantizer_warmup_steps=5)


def test_discriminator_step_judges_fakes_at_the_generators_bitrates(trained):
  """The discriminator step decodes with quantizer dropout, as the generator step does (each
  draw of the step's rng puts the clips at other bitrates), and leaves the codebooks."""
  clips, model, state, _, _ = trained
  model = model.for_phase("adversarial")
  step = lambda rng: model.loss_fn_with_mutables(state.params, state.flax_mutables,
                                                 {"audio": clips}, rng, group="discriminator")
  (first, (_, mutables)), (second, _) = step(jax.random.key(0)), step(jax.random.key(1))
  assert np.isfinite(float(first)) and float(first) != float(second)
  assert mutables is state.flax_mutables


def test_warmup_counts_train_steps_not_microbatches():
  """With gradient accumulation the generator loss runs once per microbatch; the warm-up
  still lasts `discriminator_warmup_steps` train steps."""
  model = fx.tiny_model(warmup_steps=2)
  phase = lambda step, passes: model.training_phase(train_state.TrainState.create(
      {}, {}, False, {model_lib.GAN_STATE: {"step": jnp.asarray(passes, jnp.int32)}}
  ).replace(step=jnp.asarray(step, jnp.int32)))
  assert phase(step=1, passes=4) == "warmup"        # one step of 4 microbatches
  assert phase(step=2, passes=8) == "adversarial"


def test_codebooks_on_8_devices_equal_one_device():
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  clips = fx.real_clips(8)
  # Plain SGD: 8 devices sum gradients in another order than one, and Adam's first steps
  # (update = lr * g / |g|) turn a gradient entry that is zero but for rounding into a full
  # +-lr step, one way on one device and the other on eight; the codebooks then follow
  # diverging encoders (seen for 2 of 5 seeds). SGD keeps the difference at rounding, so
  # what is compared is the quantizer state's cross-device reduction.
  model = fx.tiny_model(warmup_steps=10_000, generator_optimizer=optax.sgd(1e-5),
                        quantizer_dropout=False)
  _, single, history = harness.train_on_batch(model, clips, 3)
  _, sharded, _ = harness.train_on_batch(model, clips, 3, devices=jax.devices())
  assert history[-1]["generator/loss"] < history[0]["generator/loss"]   # it does train
  harness.assert_trees_close(jax.device_get(sharded.params), jax.device_get(single.params),
                             rtol=2e-4, atol=2e-5)
  harness.assert_trees_close(jax.device_get(sharded.flax_mutables),
                             jax.device_get(single.flax_mutables), rtol=2e-4, atol=2e-5)
  codebook = sharded.flax_mutables["quantizer"]["generator"]["quantizer"]["level_0"]["codebook"]
  shards = [np.asarray(s.data) for s in codebook.addressable_shards]
  assert len(shards) == 8 and all(np.array_equal(shards[0], s) for s in shards)


def test_bundle_round_trip_and_damaged_bundles(trained, tmp_path):
  clips, _, _, _, codec = trained
  bundle = str(tmp_path / "bundle")
  codec.save(bundle)
  loaded = codec_lib.Codec.load(bundle)
  np.testing.assert_array_equal(loaded.encode(clips), codec.encode(clips))
  variables = os.path.join(bundle, codec_lib.VARIABLES_FILE)
  with open(variables, "r+b") as f:
    f.truncate(os.path.getsize(variables) // 2)
  with pytest.raises(ValueError, match="variables.msgpack"):
    codec_lib.Codec.load(bundle)
  with pytest.raises(FileNotFoundError, match="config.json"):
    codec_lib.Codec.load(str(tmp_path))
  with pytest.raises(ValueError, match="NaN"):
    codec.encode(np.full((1, 400), np.nan))
  with pytest.raises(ValueError, match="code ids"):
    codec.decode(np.full((1, 3, 2), 99))


def _codec_cli(*args):
  return subprocess.run([sys.executable, "-m", "musiclm_jax.cli", "codec", *args],
                        cwd=harness.REPO, env=harness.env_with_devices(1), capture_output=True,
                        text=True, timeout=300)


def test_codec_cli_on_real_and_broken_files(trained, tmp_path):
  _, model, _, _, codec = trained
  bundle = str(tmp_path / "bundle")
  codec.save(bundle)
  # A real stereo 44.1 kHz FLAC: down-mixed and resampled on the way in.
  source = next(f for f in fx.debian_music.audio_files(fx.debian_music.fetch(
      "sonic-pi-samples")) if f.endswith("loop_amen.flac"))
  codes_path, out_path = str(tmp_path / "codes.npy"), str(tmp_path / "out.wav")
  result = _codec_cli("encode", source, codes_path, "--bundle", bundle)
  assert result.returncode == 0, result.stderr
  codes = np.load(codes_path)
  seconds = audio_io.read_audio(source)[0].shape[0] / 44100
  assert codes.shape[1] == model.config.num_quantizers
  assert abs(codes.shape[0] - seconds * model.config.frame_rate) <= 1
  result = _codec_cli("decode", codes_path, out_path, "--bundle", bundle, "--levels", "2")
  assert result.returncode == 0, result.stderr
  assert abs(audio_io.read_audio(out_path)[0].shape[0] - codes.shape[0] *
             model.config.hop_length) == 0

  broken = tmp_path / "broken.flac"
  broken.write_bytes(b"fLaC" + b"\0" * 20)
  result = _codec_cli("encode", str(broken), codes_path, "--bundle", bundle)
  assert result.returncode == 2 and "broken.flac" in result.stderr and "unreadable" in result.stderr
  empty = tmp_path / "empty.wav"
  empty.write_bytes(b"")
  result = _codec_cli("encode", str(empty), codes_path, "--bundle", bundle)
  assert result.returncode == 2 and "empty.wav" in result.stderr
  # The earlier good output is untouched by the failed runs.
  assert np.array_equal(np.load(codes_path), codes)


CODEC_GIN = ("soundstream/tiny.gin", "runs/soundstream.gin")


@pytest.fixture(scope="module")
def loops_data_dir(tmp_path_factory):
  """A TFDS data_dir with `audio_folder/16khz_2s` built from 8 real sonic-pi loops (the
  `build-data` command is tested by tests/integration/test_mulan_training.py)."""
  import shutil
  from musiclm_jax.tasks import builders
  root = tmp_path_factory.mktemp("loops")
  music = root / "music"
  music.mkdir()
  samples = fx.debian_music.fetch("sonic-pi-samples")
  for path in [f for f in fx.debian_music.audio_files(samples) if "/samples/loop_" in f][:8]:
    shutil.copy(path, music)
  data_dir = str(root / "tfds")
  builders.build("audio_folder", data_dir, "16khz_2s", manual_dir=str(music))
  return data_dir


def _codec_run_bindings(data_dir: str):
  """Warm-up steps of the tiny codec on 0.2 s crops, quantized from the first (the codebook
  tests need them): the adversarial step is tested in-process above, and compiling it
  again in a subprocess would double a test's time."""
  return (f"AUDIO_DATA_DIR='{data_dir}'", "CROP_SAMPLES=3200",
          "SoundStreamModel.discriminator_warmup_steps=100",
          "SoundStreamModel.quantizer_warmup_steps=0")


def test_train_entry_point_then_export_and_encode(loops_data_dir, tmp_path):
  """gin configs + `python -m musiclm_jax.train` on a built audio_folder, then export."""
  model_dir = str(tmp_path / "run")
  result = harness.run_train(
      model_dir, 4, (*_codec_run_bindings(loops_data_dir), "BATCH_SIZE=4",
                     "train.eval_period=4", "train.log_period=1"), gin_files=CODEC_GIN)
  from musiclm_jax.training import metrics
  records = metrics.read_metrics(model_dir, "train")
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert all(np.isfinite(r["generator/reconstruction"]) for r in records)
  assert metrics.read_metrics(model_dir, "eval")[-1]["step"] == 4
  bundle = str(tmp_path / "bundle")
  result = _codec_cli("export", "--model_dir", model_dir, bundle)
  assert result.returncode == 0, result.stderr
  codec = codec_lib.Codec.load(bundle)
  assert (codec.config.sample_rate, codec.config.hop_length, codec.config.num_quantizers) == (
      16000, 160, 8)
  # How it was made travels with it (and on into a MusicLM bundle's manifest).
  assert codec.provenance["step"] == 4 and codec.provenance["parameters"] == "EMA"
  assert "SoundStreamModel.quantizer_warmup_steps = 0" in codec.provenance["gin_config"]
  assert codec.encode(fx.real_clips()[:1]).shape == (1, fx.CLIP_SAMPLES // 160, 8)


def test_two_processes_hold_the_codebooks_of_one(loops_data_dir, tmp_path):
  """The RVQ's codebook updates (k-means initialisation, EMA statistics, dead-code revival)
  are computed from the global batch inside the jitted step, so the codebooks cannot drift
  between hosts: two processes of 4 devices each (gloo on localhost) finish, and after a
  step hold the k-means-initialised, EMA-updated codebooks, the parameters and the loss of
  one process of 8 devices on the same global batch.

  Compared after step 1: from there the runs differ in rounding (gloo sums the gradients in
  another order), and a codec amplifies that by design (a frame near two codes can flip,
  and Adam's first updates are about lr * sign(gradient), so a parameter whose gradient is
  ~0 moves either way): step 2's loss agrees to 1e-4, not to step 1's 1e-6."""
  learning_rate = 3e-3
  bindings = (*_codec_run_bindings(loops_data_dir), "train.log_period=1",
              "train/DatasetConfig.num_data_shards=2",
              "CheckpointManager.save_interval_steps=1",
              f"CODEC_LEARNING_RATE={learning_rate}")
  single = str(tmp_path / "single")
  harness.run_train(single, 2, bindings, devices=8, gin_files=CODEC_GIN)
  multi = str(tmp_path / "multi")
  port = harness.free_port()
  procs = [harness.popen_train(
      multi, 2, bindings, devices=4, log_path=str(tmp_path / f"proc{i}.log"),
      gin_files=CODEC_GIN,
      extra_args=[f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  f"--process_id={i}", "--cpu_collectives=gloo"]) for i in range(2)]
  for i, proc in enumerate(procs):
    assert proc.wait(timeout=600) == 0, open(tmp_path / f"proc{i}.log").read()[-4000:]

  from musiclm_jax.training import checkpoints, metrics
  saved = {name: checkpoints.restore_numpy_state(d, 1)[1]
           for name, d in (("single", single), ("multi", multi))}
  codebooks = {name: state["flax_mutables"]["quantizer"] for name, state in saved.items()}
  initialised = [v for path, v in jax.tree_util.tree_flatten_with_path(codebooks["single"])[0]
                 if "initialized" in jax.tree_util.keystr(path)]
  assert len(initialised) == 8 and all(bool(v) for v in initialised)   # k-means, each level
  # Equal up to float32 rounding of the k-means sums (codebook entries are of scale ~0.5;
  # a drifted codebook differs at that scale).
  harness.assert_trees_close(codebooks["multi"], codebooks["single"], rtol=1e-5, atol=1e-5)
  # Adam's first update is lr * g / (|g| + eps): where |g| is near eps, rounding moves it
  # by a fraction of lr. So: every parameter within one step (lr) of the other run's, and
  # all but one in a thousand equal to 1e-4.
  pairs = list(zip(jax.tree.leaves(saved["multi"]["params"]),
                   jax.tree.leaves(saved["single"]["params"])))
  assert pairs and max(float(np.max(np.abs(a - b))) for a, b in pairs) < learning_rate
  off = sum(int(np.sum(~np.isclose(a, b, rtol=1e-4, atol=1e-6))) for a, b in pairs)
  assert off <= 1e-3 * sum(a.size for a, _ in pairs), off
  losses_of = lambda d: [(r["step"], r["generator/loss"])
                         for r in metrics.read_metrics(d, "train")]
  (got_1, got_2), (expected_1, expected_2) = losses_of(multi), losses_of(single)
  assert got_1[0] == expected_1[0] == 1 and got_2[0] == expected_2[0] == 2
  np.testing.assert_allclose(got_1[1], expected_1[1], rtol=1e-6)
  np.testing.assert_allclose(got_2[1], expected_2[1], rtol=1e-4)
