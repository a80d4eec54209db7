"""Mini-batch k-means (vs scikit-learn, sharded vs one device, resumable) and the semantic
tokenizer (rate, range, centroids file)."""

import functools
import os

import jax
import numpy as np
import pytest

from musiclm_jax.audio import features
from musiclm_jax.training import partitioning
from musiclm_jax.w2v_bert import tokenizer as tokenizer_lib
from tests import w2v_bert_fixtures as fx


@functools.lru_cache(maxsize=None)
def _log_mel_frames() -> np.ndarray:
  """Real vectors to cluster: [1568, 24] log-mel frames of 16 one-second music clips."""
  clips = fx.real_clips(16, 16000)
  frames = features.log_mel_spectrogram(clips, 16000, 400, 160, num_mels=24)
  return np.asarray(frames, np.float32).reshape(-1, 24)


def _batches(x: np.ndarray, size: int):
  """Step-indexed mini-batches (a pure function of the step: resumable)."""
  return lambda step: x[np.random.default_rng(step).choice(len(x), size, replace=False)]


def test_kmeans_agrees_with_scikit_learn():
  sklearn_cluster = pytest.importorskip("sklearn.cluster")
  x = _log_mel_frames()
  reference = sklearn_cluster.KMeans(8, n_init=4, random_state=0).fit(x).inertia_
  kmeans = tokenizer_lib.MiniBatchKMeans(8, standardize=False, seed=0)
  state = kmeans.fit(_batches(x, 256), 60, init_sample=x[::2])
  ratio = kmeans.inertia(state, x) / reference
  assert 0.95 < ratio < 1.05, ratio
  assert int(state.step) == 60 and float(np.sum(state.counts)) >= 60 * 256
  # Standardised clustering equals clustering standardised data.
  scaled = tokenizer_lib.MiniBatchKMeans(8, seed=0).fit(_batches(x, 256), 60,
                                                         init_sample=x[::2])
  z = (x - scaled.mean) / scaled.scale
  reference_z = sklearn_cluster.KMeans(8, n_init=4, random_state=0).fit(z).inertia_
  assert 0.95 < kmeans.inertia(scaled, x) / reference_z < 1.05


def test_sharded_kmeans_equals_single_device():
  if jax.device_count() < 8:
    pytest.skip("needs 8 simulated devices")
  x = _log_mel_frames()
  fits = {}
  for devices in (jax.devices()[:1], jax.devices()[:8]):
    kmeans = tokenizer_lib.MiniBatchKMeans(
        8, partitioner=partitioning.Partitioner(devices=devices), seed=1)
    # 250-vector batches: not a multiple of 8, so the sharded fit pads with zero weights.
    fits[len(devices)] = jax.device_get(kmeans.fit(_batches(x, 250), 5, init_sample=x[:800]))
  one, eight = fits[1], fits[8]
  np.testing.assert_array_equal(one.counts, eight.counts)
  np.testing.assert_allclose(eight.centroids, one.centroids, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(eight.mean, one.mean, rtol=1e-6, atol=1e-6)
  assert int(one.step) == int(eight.step) == 5


def test_fit_resumes_from_its_state_file(tmp_path):
  x = _log_mel_frames()
  path = str(tmp_path / "kmeans.npz")
  kmeans = tokenizer_lib.MiniBatchKMeans(8, seed=0)
  straight = kmeans.fit(_batches(x, 128), 10, init_sample=x)
  kmeans.fit(_batches(x, 128), 4, state_path=path, save_every=2, init_sample=x,
             metadata={"layer": 3})
  state, metadata = tokenizer_lib.load_state(path)
  assert int(state.step) == 4 and metadata == {"layer": 3}
  resumed = tokenizer_lib.MiniBatchKMeans(8, seed=0).fit(_batches(x, 128), 10,
                                                         state_path=path)
  np.testing.assert_allclose(resumed.centroids, straight.centroids, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(resumed.counts, straight.counts)
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]  # atomic writes
  with open(path, "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match="kmeans.npz"):
    tokenizer_lib.load_state(path)
  with pytest.raises(ValueError, match="16 clusters"):
    tokenizer_lib.MiniBatchKMeans(4).fit(_batches(x, 8), 1, state_path=_saved(tmp_path, x))


def _saved(tmp_path, x) -> str:
  path = str(tmp_path / "other.npz")
  tokenizer_lib.save_state(path, tokenizer_lib.MiniBatchKMeans(16).initialize(x))
  return path


def test_tokenizer_rate_range_and_centroids_file(tmp_path):
  cfg = fx.tiny_config()
  params = fx.tiny_params()
  clips = fx.real_clips(4)
  layer = cfg.num_mlm_layers
  probe = tokenizer_lib.SemanticTokenizer(cfg, params, layer, np.zeros((1, cfg.emb_dim)))
  embeddings = np.asarray(probe.embed(clips)).reshape(-1, cfg.emb_dim)  # [80, emb_dim]
  kmeans = tokenizer_lib.MiniBatchKMeans(16, seed=0)
  state = kmeans.fit(lambda step: embeddings, 3)
  tokenizer = tokenizer_lib.SemanticTokenizer(cfg, params, layer, state)

  # Tokens are the nearest centroids of the (standardised) layer embeddings.
  tokens = tokenizer.tokenize(clips)
  np.testing.assert_array_equal(
      np.asarray(tokenizer_lib.assign(state, embeddings)).reshape(tokens.shape), tokens)
  audio = fx.real_clips(2, 2 * 16000 + 300)  # 2 s and a part token
  tokens = tokenizer.tokenize(audio)
  assert tokenizer.token_rate == 25
  assert tokens.shape == (2, 50) and tokens.dtype == np.int32  # 25 tokens/s
  assert tokens.min() >= 0 and tokens.max() < 16
  assert len(np.unique(tokens)) > 1  # real music: not one cluster everywhere

  path = str(tmp_path / "centroids.npz")
  tokenizer.save_centroids(path)
  loaded = tokenizer_lib.SemanticTokenizer.from_centroids_file(cfg, params, path)
  assert loaded.layer == layer and loaded.num_clusters == 16
  np.testing.assert_array_equal(loaded.tokenize(audio), tokens)
  with pytest.raises(ValueError, match="NaN"):
    tokenizer.tokenize(np.full((1, 16000), np.nan, np.float32))
  with pytest.raises(ValueError, match="no token"):
    tokenizer.tokenize(np.zeros((1, 100), np.float32))


def test_cli_fits_resumes_and_tokenizes(tmp_path, capsys):
  from musiclm_jax.training import checkpoints
  from musiclm_jax.w2v_bert import cli
  cfg = fx.tiny_config()
  # A training run as `train` leaves it: config.gin and a checkpoint holding the params.
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.gin").write_text("".join(
      f"W2vBertConfig.{name} = {value!r}\n" for name, value in vars(cfg).items()))
  manager = checkpoints.CheckpointManager(str(run), async_save=False)
  manager.save(3, {"params": fx.tiny_params()}, {}, force=True)
  manager.close()
  root = fx.debian_music.fetch("sonic-pi-samples")
  loops = [f for f in fx.debian_music.audio_files(root) if f.endswith(fx.LOOPS)]
  centroids = str(tmp_path / "centroids.npz")
  fit = ["fit-kmeans", *loops, "--model_dir", str(run), "--output", centroids, "--layer", "1",
         "--clusters", "8", "--crops_per_step", "2", "--crop_seconds", "0.8",
         "--init_steps", "2", "--save_every", "2"]
  cli.main(fit + ["--steps", "2"])
  cli.main(fit + ["--steps", "4"])  # resumes from the saved state
  state, metadata = tokenizer_lib.load_state(centroids)
  assert int(state.step) == 4 and metadata["layer"] == 1
  assert "4 steps" in capsys.readouterr().out

  amen = next(f for f in loops if f.endswith("loop_amen.flac"))  # 1.75 s at 44.1 kHz
  out = str(tmp_path / "tokens.npy")
  cli.main(["tokenize", amen, out, "--model_dir", str(run), "--centroids", centroids])
  tokens = np.load(out)
  assert tokens.dtype == np.int32 and tokens.shape == (28000 // 640,)
  assert tokens.min() >= 0 and tokens.max() < 8
  with pytest.raises(SystemExit):
    cli.main(["tokenize", str(tmp_path / "missing.wav"), out, "--model_dir", str(run),
              "--centroids", centroids])
