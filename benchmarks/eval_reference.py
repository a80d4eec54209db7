r"""Reference values of FAD, KLD and MCC: what a good and a bad value look like.

  python benchmarks/eval_reference.py [--data_dir DIR] [--dataset small_16khz]
      [--mulan_model_dir RUN] [--out FILE]

Held-out music (the test and validation splits of `music_captions/<dataset>`: pieces never
seen in training, built here if missing) is shuffled and cut into two halves A and B.
  real vs real     A against B: unrelated clips of the same kind of music (the floor a
                   perfect generator reaches with this many clips);
  real vs degraded A against A with white noise at 20 dB and 0 dB SNR;
  real vs noise    A against noise of the same loudness (white, and pink).
FAD: musicnn MTT penultimate features (and MuLan's audio embedding with --mulan_model_dir),
all of A against all of the other set, with a bootstrap interval. KLD: clip i of A against
clip i of the other set (musicnn MTT tags). MCC (with --mulan_model_dir, e.g. the MuLan of
benchmarks/mulan_retrieval.py): each caption of A with its own clip, with a shuffled
clip, and with noise. Writes benchmarks/results/eval_reference_<backend>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def _held_out(data_dir: str, dataset: str):
  import tensorflow_datasets as tfds
  from musiclm_jax.tasks import builders
  name = f"music_captions/{dataset}"
  try:
    tfds.builder(name, data_dir=data_dir).info.splits["test"]
  except Exception:  # not built yet: build it (minutes)
    builders.build("music_captions", data_dir, dataset)
  clips, captions = [], []
  for split in ("test", "validation"):
    for ex in tfds.as_numpy(tfds.load(name, split=split, data_dir=data_dir)):
      clips.append(np.asarray(ex["audio"], np.float32))
      captions.append(ex["caption"].decode())
  return np.stack(clips), captions, int(ex["sample_rate"])


def _pink(shape, rng) -> np.ndarray:
  """1/f noise: white noise shaped by 1/sqrt(f) in the frequency domain."""
  spectrum = np.fft.rfft(rng.normal(size=shape), axis=-1)
  f = np.arange(spectrum.shape[-1])
  spectrum = spectrum / np.sqrt(np.maximum(f, 1))
  return np.fft.irfft(spectrum, n=shape[-1], axis=-1)


def _match_rms(noise: np.ndarray, like: np.ndarray, snr_db: float = 0.0) -> np.ndarray:
  rms = lambda x: np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True))
  return (noise / rms(noise) * rms(like) / 10 ** (snr_db / 20)).astype(np.float32)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
  parser.add_argument("--dataset", default="small_16khz")
  parser.add_argument("--mulan_model_dir", default=None)
  parser.add_argument("--bootstrap", type=int, default=200)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  import machine
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.evaluation import embedders, fad, kld, mcc
  start = time.time()
  audio, captions, rate = _held_out(args.data_dir, args.dataset)
  rng = np.random.default_rng(0)
  order = rng.permutation(len(audio))
  half = len(audio) // 2
  a, b = audio[order[:half]], audio[order[half:2 * half]]
  captions_a = [captions[i] for i in order[:half]]
  others = {
      "real_B": b,
      "A_noisy_20dB": a + _match_rms(rng.normal(size=a.shape), a, 20),
      "A_noisy_0dB": a + _match_rms(rng.normal(size=a.shape), a, 0),
      "white_noise": _match_rms(rng.normal(size=a.shape), a),
      "pink_noise": _match_rms(_pink(a.shape, rng), a),
  }
  mulan = None
  if args.mulan_model_dir:
    from musiclm_jax.mulan import tokenizer
    mulan = tokenizer.MuLanTokenizer.load(args.mulan_model_dir)
  models = {"musicnn_mtt": embedders.get("musicnn_mtt")}
  if mulan is not None:
    models["mulan"] = embedders.MuLanEmbedder(mulan)
  at = lambda x, r: np.stack([audio_io.resample(c, rate, r) for c in x])

  results = {}
  tagger = models["musicnn_mtt"].tagger
  logits = lambda x: tagger.embed_clips(at(x, 16000), outputs=("logits",))["logits"]
  logits_a = logits(a)
  embedded_a = {n: m.embed(at(a, m.sample_rate)) for n, m in models.items()}
  for name, other in others.items():
    row = {"fad": {n: fad.fad(m.embed(at(other, m.sample_rate)), embedded_a[n],
                              bootstrap=args.bootstrap) for n, m in models.items()},
           "kld": {mode: kld.kld(logits_a, logits(other), mode)
                   for mode in ("softmax", "bernoulli")}}
    if mulan is not None:
      row["mcc_captions_of_A"] = mcc.mcc(mulan, captions_a, at(other, mulan.config.sample_rate))
    results[f"A_vs_{name}"] = row
    print(name, json.dumps(row["fad"]["musicnn_mtt"]["fad"]), row["kld"]["softmax"]["kld"],
          flush=True)
  if mulan is not None:
    results["mcc_own_clips"] = mcc.mcc(mulan, captions_a, at(a, mulan.config.sample_rate))

  report = {"benchmark": "eval_reference", "dataset": f"music_captions/{args.dataset}",
            "clips_per_set": half, "seconds_per_clip": a.shape[1] / rate,
            "mulan_model_dir": args.mulan_model_dir, "results": results,
            "wall_seconds": time.time() - start, "machine": machine.describe_jax()}
  print(f"-> {machine.save_result(report, 'eval_reference', args.out)}")


if __name__ == "__main__":
  main()
