r"""Do semantic tokens carry musical content?

  python benchmarks/semantic_quality.py --model_dir W2V_RUN --centroids CENTROIDS.npz
      [--data_dir DIR --dataset small_16khz] [--step N] [--no_ema] [--layer_sweep]
      [--out FILE]

1. Robustness: the tokens of held-out music (`music_captions/<dataset>` test split) against
   the tokens of the same clips with white noise at 20 dB SNR, and at half the gain (-6 dB):
   the share of frames whose token is unchanged, against chance (the probability that two
   tokens drawn from the clips' own token distribution agree, sum_k p_k^2) and against
   another clip's token at the same frame (a tokenizer that ignores the music, e.g. one
   whose tokens follow the frame's position in the clip, agrees with other clips as often
   as with the noisy copy).
2. Pitch class: single notes and triads of every pitch class rendered with the GM SoundFont
   on several instruments and octaves; a clip is the histogram of its tokens; a logistic
   regression trained on some instruments predicts the pitch class (the root for triads) on
   the other instruments. Chance is 1/12. The same probe on the layer's embeddings before
   k-means (mean and standard deviation over the clip's frames) says what the network
   carries and k-means keeps, and on the network's input, the normalised log-mel pooled the
   same way, what a linear probe can read at all: the ceiling.
Random-initialised w2v-BERT + k-means of the same sizes (`--baseline`, default on) gives the
same numbers for a network that learned nothing: the honest comparison.
Writes benchmarks/results/semantic_quality_<backend>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

# GM programs: acoustic grand, electric piano, vibraphone, church organ, nylon guitar,
# violin, cello, trumpet, clarinet, flute, alto sax, choir aahs.
PROGRAMS = (0, 4, 11, 19, 24, 40, 42, 56, 71, 73, 65, 52)
TRAIN_PROGRAMS = PROGRAMS[:8]


def _agreement(tokenizer, clips: np.ndarray) -> dict:
  rng = np.random.default_rng(0)
  clean = tokenizer.tokenize(clips)
  noise = rng.normal(size=clips.shape).astype(np.float32)
  rms = np.sqrt(np.mean(clips ** 2, axis=1, keepdims=True))
  noisy = clips + noise * rms / np.sqrt(np.mean(noise ** 2)) / 10.0   # 20 dB SNR
  counts = np.bincount(clean.ravel(), minlength=tokenizer.num_clusters) / clean.size
  return {"noise_20dB": float(np.mean(tokenizer.tokenize(noisy) == clean)),
          "gain_minus_6dB": float(np.mean(tokenizer.tokenize(0.5 * clips) == clean)),
          "chance": float(np.sum(counts ** 2)),
          "other_clip_same_frame": float(np.mean(np.roll(clean, 1, axis=0) == clean)),
          "tokens_used": int(np.count_nonzero(counts))}


def _notes_dataset(sample_rate: int, seconds: float = 1.0):
  """(audio [N, T], pitch class [N], program [N]) of single notes and root-position triads."""
  from musiclm_jax.music import corpus, render
  soundfont = render.soundfont_path("timgm6mb-soundfont")
  audio, labels, programs = [], [], []
  for program in PROGRAMS:
    for octave in (48, 60, 72):
      for pc in range(12):
        for chord in ((0,), (0, 4, 7)):
          notes = [corpus.Note(0.0, 4.0, octave + pc + i, v) for v, i in enumerate(chord)]
          perf = render.Performance(programs=(program,) * 3, bpm=120.0, velocity=90)
          audio.append(render.render(notes, perf, seconds, sample_rate, soundfont))
          labels.append(pc)
          programs.append(program)
  return np.stack(audio), np.array(labels), np.array(programs)


def _probe(features: np.ndarray, labels: np.ndarray, programs: np.ndarray) -> float:
  """Held-out accuracy of a logistic regression from features [N, F] to pitch class, trained
  on TRAIN_PROGRAMS' clips and scored on the other instruments' (features standardised)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler
  train = np.isin(programs, TRAIN_PROGRAMS)
  scaler = StandardScaler().fit(features[train])
  probe = LogisticRegression(max_iter=3000).fit(scaler.transform(features[train]),
                                                labels[train])
  return float(probe.score(scaler.transform(features[~train]), labels[~train]))


def _pooled(frames: np.ndarray) -> np.ndarray:
  """[N, T, D] -> [N, 2D]: each dimension's mean and standard deviation over time."""
  return np.concatenate([frames.mean(axis=1), frames.std(axis=1)], axis=1)


def _pitch_probes(tokenizer, audio, labels, programs) -> dict:
  """Pitch-class probe accuracy on token histograms and on pooled embeddings."""
  tokens = tokenizer.tokenize(audio)
  hist = np.stack([np.bincount(t, minlength=tokenizer.num_clusters) for t in tokens])
  hist = hist / hist.sum(axis=1, keepdims=True)
  embeddings = _pooled(np.asarray(tokenizer.embed(audio)))
  return {"tokens": _probe(hist, labels, programs),
          "embeddings": _probe(embeddings, labels, programs)}


def _layer_sweep(tokenizer, audio, labels, programs) -> dict:
  """The embedding probe at every MLM layer the parameters hold (0 = the contrastive
  module's output; an export keeps the layers up to the tokenizer's): where in the network
  the pitch class is linearly readable."""
  from musiclm_jax.w2v_bert import tokenizer as tokenizer_lib
  config = tokenizer.config
  held = sum(name.startswith("layers_") for name in tokenizer.params["mlm_module"])
  no_centroids = np.zeros((1, config.emb_dim), np.float32)
  return {layer: _probe(_pooled(np.asarray(tokenizer_lib.SemanticTokenizer(
      config, tokenizer.params, layer, no_centroids).embed(audio))), labels, programs)
          for layer in range(held + 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model_dir", required=True, help="w2v-BERT training run")
  parser.add_argument("--centroids", required=True, help="its k-means centroids (.npz)")
  parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
  parser.add_argument("--dataset", default="small_16khz")
  parser.add_argument("--max_clips", type=int, default=64)
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
  parser.add_argument("--no_ema", action="store_true", help="raw params even if EMA is saved")
  parser.add_argument("--layer_sweep", action="store_true",
                      help="also probe the pitch class at every MLM layer's embeddings")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  import tensorflow_datasets as tfds
  import machine
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.w2v_bert import model as model_lib, tokenizer as tokenizer_lib
  start = time.time()
  trained = tokenizer_lib.SemanticTokenizer.load(args.model_dir, args.centroids,
                                                 step=args.step, use_ema=not args.no_ema)
  rate = trained.config.sample_rate
  rows = list(tfds.as_numpy(tfds.load(f"music_captions/{args.dataset}", split="test",
                                      data_dir=args.data_dir).take(args.max_clips)))
  clips = np.stack([audio_io.resample(r["audio"], int(r["sample_rate"]), rate) for r in rows])
  notes = _notes_dataset(rate)

  random_init = _random_init_tokenizer(trained, clips)
  results = {}
  for name, tokenizer in (("trained", trained), ("random_init", random_init)):
    results[name] = {"agreement": _agreement(tokenizer, clips),
                     "pitch_class_probe_accuracy": _pitch_probes(tokenizer, *notes)}
    if args.layer_sweep:
      results[name]["pitch_class_probe_by_layer"] = _layer_sweep(tokenizer, *notes)
    print(name, results[name], flush=True)
  results["pitch_class_probe_on_input_log_mel"] = _probe(
      _pooled(np.asarray(model_lib.normalized_log_mel(notes[0], trained.config))), *notes[1:])
  results["pitch_class_chance"] = 1 / 12
  report = {"benchmark": "semantic_quality", "model_dir": args.model_dir,
            "step": args.step, "ema": not args.no_ema,  # step None: the newest
            "clusters": trained.num_clusters, "layer": trained.layer,
            "heldout_clips": len(clips), "note_clips": int(len(notes[0])),
            "probe_train_programs": TRAIN_PROGRAMS, "results": results,
            "wall_seconds": time.time() - start, "machine": machine.describe_jax()}
  print(f"-> {machine.save_result(report, 'semantic_quality', args.out)}")


def _random_init_tokenizer(trained, clips: np.ndarray):
  """A tokenizer of the same sizes with a random-initialised network, its k-means fitted
  on its own embeddings of the held-out clips (the same number of clusters)."""
  import flax.linen as nn
  import jax
  from musiclm_jax.w2v_bert import model as model_lib, tokenizer as tokenizer_lib
  config = trained.config
  variables = model_lib.W2vBertModel(model_lib.W2vBert(config), None).get_initial_variables(
      jax.random.key(0), {"audio": (1, config.hop_length * 8)})
  params = nn.meta.unbox(variables["params"])
  probe = tokenizer_lib.SemanticTokenizer(
      config, params, trained.layer,
      np.zeros((trained.num_clusters, config.emb_dim), np.float32))
  embeddings = np.asarray(probe.embed(clips)).reshape(-1, config.emb_dim)
  kmeans = tokenizer_lib.MiniBatchKMeans(trained.num_clusters, seed=0)
  draw = lambda seed, n: embeddings[np.random.default_rng(seed).integers(0, len(embeddings), n)]
  state = kmeans.fit(lambda step: draw(step + 1, 4096), 50, init_sample=draw(0, 8192))
  return tokenizer_lib.SemanticTokenizer(config, params, trained.layer, state)


if __name__ == "__main__":
  main()
