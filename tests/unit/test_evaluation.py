"""FAD, KLD and MCC, and `musiclm-jax evaluate`, on real music (sonic-pi-samples' loops and
ambient pieces through the real musicnn tagger)."""

import csv
import functools
import json
import os

import numpy as np
import pytest
import scipy.linalg

from musiclm_jax.audio import debian_music, io as audio_io
from musiclm_jax.evaluation import embedders, evaluate, fad, kld, mcc

SECONDS = 1.0
NAMES = ("loop_amen_full", "loop_compus", "loop_garzul", "loop_mika", "loop_safari",
         "loop_tabla", "ambi_glass_hum", "ambi_haunted_hum", "ambi_sauna", "guit_em9")


@functools.lru_cache(maxsize=None)
def music_clips() -> np.ndarray:
  """[30, 16000]: three 1 s crops of each of ten real recordings, 16 kHz."""
  root = debian_music.fetch("sonic-pi-samples")
  files = {os.path.basename(f).split(".")[0]: f for f in debian_music.audio_files(root)}
  clips = []
  for name in NAMES:
    wave = audio_io.load_audio(files[name], 16000)
    clips += [wave[int(s * 16000):int((s + SECONDS) * 16000)] for s in (0.0, 2.0, 4.0)]
  return np.stack(clips).astype(np.float32)


def with_noise(audio: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  noise = rng.normal(size=audio.shape).astype(np.float32)
  scale = np.sqrt(np.mean(audio ** 2, axis=1, keepdims=True) / 10 ** (snr_db / 10))
  return audio + scale * noise


def test_frechet_distance_matches_scipy_and_is_stable_when_singular():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
  b = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 0.5
  ga, gb = fad.fit_gaussian(a), fad.fit_gaussian(b)
  covmean = scipy.linalg.sqrtm(ga.cov @ gb.cov).real
  direct = (np.sum((ga.mean - gb.mean) ** 2) + np.trace(ga.cov) + np.trace(gb.cov)
            - 2 * np.trace(covmean))
  np.testing.assert_allclose(fad.frechet_distance(ga, gb), direct, rtol=1e-8)
  assert fad.frechet_distance(ga, ga) < 1e-9 * np.trace(ga.cov)
  # Fewer samples than dimensions: singular covariances, still finite and ~0 for itself.
  few = rng.normal(size=(5, 50))
  assert abs(fad.frechet_distance(fad.fit_gaussian(few), fad.fit_gaussian(few))) < 1e-8
  report = fad.fad(a, b, bootstrap=50)
  assert report["ci_low"] <= report["fad"] <= report["ci_high"]
  assert (report["n_generated"], report["n_reference"], report["dim"]) == (400, 300, 8)
  with pytest.raises(ValueError, match="N >= 2"):
    fad.fit_gaussian(a[:1])


def test_fad_infinity_removes_the_small_sample_bias():
  # Both sets from one Gaussian: FAD at N is all bias (about c / N), FAD-inf near 0. A shifted
  # mean: FAD-inf near the true distance |shift|^2.
  rng = np.random.default_rng(1)
  mix = rng.normal(size=(16, 16)) / 4
  draw = lambda n: rng.normal(size=(n, 16)) @ mix
  reference = draw(20000)
  same = fad.fad_infinity(draw(400), reference, smallest=100)
  assert same["fad"] > 0.05 and abs(same["fad_inf"]) < 0.25 * same["fad"], same
  assert same["slope"] > 0 and same["r2"] > 0.5
  shift = np.full(16, 0.25)
  shifted = fad.fad_infinity(draw(400) + shift, reference, smallest=100)
  true = float(np.sum(shift ** 2))
  assert abs(shifted["fad_inf"] - true) < abs(shifted["fad"] - true), shifted
  assert abs(shifted["fad_inf"] - true) < 0.1 * true, shifted
  with pytest.raises(ValueError, match="smallest"):
    fad.fad_infinity(draw(10), reference, smallest=10)


def test_fad_of_real_music_is_zero_for_itself_and_grows_with_noise():
  musicnn = embedders.get("musicnn_mtt")
  clean = musicnn.embed(music_clips())
  assert clean.shape == (30, 200)
  values = [fad.fad(clean, clean, bootstrap=0)["fad"]]
  for snr in (30, 10, 0):
    values.append(fad.fad(musicnn.embed(with_noise(music_clips(), snr)), clean,
                          bootstrap=0)["fad"])
  assert values[0] < 1e-6 * values[1]
  assert values == sorted(values), values


def test_kld_is_zero_for_identical_posteriors_and_positive_otherwise():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 50)) * 3
  for mode in ("softmax", "bernoulli"):
    assert np.allclose(kld.kl_divergence(logits, logits, mode), 0, atol=1e-12)
    other = kld.kl_divergence(logits, logits[::-1], mode)
    assert np.all(other[[0, 1, 4, 5]] > 0)
  # softmax KL against a direct sum over the categorical distributions
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  q = p[::-1]
  np.testing.assert_allclose(kld.kl_divergence(logits, logits[::-1]),
                             np.sum(p * np.log(p / q), axis=-1), rtol=1e-9)
  with pytest.raises(ValueError, match="mode"):
    kld.kld(logits, logits, "nope")


def test_mcc_is_a_mean_cosine_in_range():
  from tests import tokenize_fixtures
  mulan = tokenize_fixtures.tiny_tokenizers().mulan
  report = mcc.mcc(mulan, ["calm piano", "fast drums"], music_clips()[:2])
  assert -1 <= report["mcc"] <= 1 and report["n"] == 2
  np.testing.assert_allclose(report["mcc"], np.mean(mulan.score(
      ["calm piano", "fast drums"], music_clips()[:2])), rtol=1e-6)
  with pytest.raises(ValueError, match="2 prompts for 3 clips"):
    mcc.mcc(mulan, ["a", "b"], music_clips()[:3])


def test_evaluate_cli_writes_a_report(tmp_path, capsys):
  clips = music_clips()[::3]                       # one crop of each recording
  generated, reference = tmp_path / "generated", tmp_path / "reference"
  generated.mkdir()
  reference.mkdir()
  rows = []
  for i, clip in enumerate(clips):
    audio_io.save_audio(str(reference / f"ref{i}.wav"), clip, 16000)
    # Generated at another rate and in stereo: resampled and down-mixed on reading.
    noisy = audio_io.resample(with_noise(clip[None], 10, seed=i)[0], 16000, 22050)
    audio_io.save_audio(str(generated / f"gen{i}.wav"), np.stack([noisy, noisy], 1), 22050)
    rows.append({"id": f"gen{i}", "caption": f"clip {i}", "reference": f"ref{i}"})
  prompts = tmp_path / "prompts.csv"
  with open(prompts, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["id", "caption", "reference"])
    writer.writeheader()
    writer.writerows(rows)
  out = tmp_path / "report.json"
  evaluate.main(["--generated", str(generated), "--reference", str(reference), "--prompts",
                 str(prompts), "--bootstrap", "20", "--out", str(out)])
  report = json.loads(out.read_text())
  assert report["fad"]["musicnn_mtt"]["n_generated"] == 10
  assert report["fad"]["musicnn_mtt"]["fad"] > 0
  assert report["kld"]["n_pairs"] == 10 and report["kld"]["kld"] > 0
  assert report["mcc"]["mcc"] is None              # no MuLan given
  table = capsys.readouterr().out
  assert "FAD musicnn_mtt" in table and "KLD" in table
  bad = tmp_path / "bad.csv"
  bad.write_text("file,text\nx,y\n")
  with pytest.raises(SystemExit) as e:
    evaluate.main(["--generated", str(generated), "--reference", str(reference),
                   "--prompts", str(bad), "--out", str(out)])
  assert e.value.code == 2 and "missing column(s) ['caption', 'id']" in capsys.readouterr().err
  stray = tmp_path / "stray.csv"
  stray.write_text("id,caption\ngen0,a\nnot_there,b\n")
  with pytest.raises(SystemExit):
    evaluate.main(["--generated", str(generated), "--reference", str(reference),
                   "--prompts", str(stray), "--out", str(out)])
  assert "1 clip(s) not in" in capsys.readouterr().err


def test_evaluate_skips_and_lists_every_unusable_clip_unless_strict(tmp_path, capsys):
  clips = music_clips()[::3][:4]
  generated, reference = tmp_path / "generated", tmp_path / "reference"
  generated.mkdir()
  reference.mkdir()
  for i, clip in enumerate(clips):
    audio_io.save_audio(str(reference / f"c{i}.wav"), clip, 16000)
    audio_io.save_audio(str(generated / f"c{i}.wav"), with_noise(clip[None], 10, seed=i)[0],
                        16000)
  # Three bad generated clips at once: silent, too short, not audio.
  audio_io.save_audio(str(generated / "silent.wav"), np.zeros(16000), 16000)
  audio_io.save_audio(str(generated / "short.wav"), clips[0][:800], 16000)
  (generated / "garbage.flac").write_bytes(b"\x00garbage")
  prompts = tmp_path / "prompts.csv"
  prompts.write_text("id,caption\n" + "".join(f"c{i},clip {i}\n" for i in range(4))
                     + "silent,nothing\n")
  out = tmp_path / "report.json"
  evaluate.main(["--generated", str(generated), "--reference", str(reference), "--prompts",
                 str(prompts), "--bootstrap", "10", "--out", str(out)])
  report = json.loads(out.read_text())
  skipped = {os.path.basename(s["file"]): s["reason"] for s in report["skipped"]["generated"]}
  assert skipped == {"silent.wav": "silent", "short.wav": "too_short",
                     "garbage.flac": "unreadable"}
  assert report["prompts_of_skipped_clips"] == 1 and report["kld"]["n_pairs"] == 4
  printed = capsys.readouterr().out
  assert all(name in printed for name in skipped)
  with pytest.raises(SystemExit) as e:
    evaluate.main(["--generated", str(generated), "--reference", str(reference), "--strict",
                   "--out", str(tmp_path / "strict.json")])
  assert e.value.code == 2 and not (tmp_path / "strict.json").exists()
  only_bad = tmp_path / "only_bad"
  only_bad.mkdir()
  (only_bad / "garbage.wav").write_bytes(b"nope")
  with pytest.raises(SystemExit):
    evaluate.main(["--generated", str(only_bad), "--reference", str(reference),
                   "--out", str(out)])
  assert "no usable audio file (1 skipped: {'unreadable': 1})" in capsys.readouterr().err


def test_a_savedmodel_on_disk_plugs_in_as_an_embedder(tmp_path):
  import tensorflow as tf

  class FrameEnergies(tf.Module):   # VGGish's interface: one waveform -> [frames, D]
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, wave):
      frames = tf.signal.frame(wave, 1600, 1600)
      return tf.stack([tf.reduce_mean(frames ** 2, -1), tf.reduce_max(frames, -1)], -1)

  path = str(tmp_path / "energies")
  tf.saved_model.save(FrameEnergies(), path)
  embedder = embedders.get(f"savedmodel:{path}@16000", per_clip=True)
  out = embedder.embed(music_clips()[:3])
  frames = music_clips()[:3].reshape(3, 10, 1600)
  np.testing.assert_allclose(out, np.stack([np.mean(frames ** 2, -1).mean(-1),
                                            frames.max(-1).mean(-1)], -1), rtol=1e-5)
  with pytest.raises(ValueError, match="unknown embedder 'vggish'"):
    embedders.get("vggish")
  with pytest.raises(ValueError, match="number of Hz"):
    embedders.get(f"savedmodel:{path}@fast")


def test_seqio_metric_functions_follow_the_task_contract():
  import seqio
  from musiclm_jax.evaluation import seqio_metrics
  from tests import tokenize_fixtures
  clips = list(music_clips()[::3])
  at_24k = [audio_io.resample(c, 16000, 24000) for c in clips]     # 'generated' at 24 kHz
  fns = [seqio_metrics.fad_metric(16000, 24000), seqio_metrics.kld_metric(16000, 24000)]
  task = seqio.Task("musiclm_eval_contract", seqio.FunctionDataSource(
      lambda split, shuffle_files: None, splits=["test"]), output_features={}, metric_fns=fns)
  assert task.predict_metric_fns == fns
  same = {}
  for fn in task.predict_metric_fns:
    same.update(fn(clips, at_24k))
  assert same["kld"] < 0.01       # only a resampling round trip between them
  noisy = [audio_io.resample(c, 16000, 24000) for c in with_noise(np.stack(clips), 0)]
  worse = fns[0](clips, noisy) | fns[1](clips, noisy)
  assert worse["fad_musicnn_mtt"] > 50 * same["fad_musicnn_mtt"]
  assert worse["kld"] > 100 * same["kld"]
  mulan = tokenize_fixtures.tiny_tokenizers().mulan
  mcc_fn = seqio_metrics.mcc_metric(mulan, 24000)
  assert -1 <= mcc_fn([b"calm piano"] * 3, at_24k[:3])["mcc"] <= 1
