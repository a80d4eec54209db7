r"""Do a run's semantic tokens follow the music in time, or only name the clip?

  python benchmarks/semantic_in_time.py --work_dir [LABEL=]runs/long
      [--work_dir [LABEL=]runs/other ...] [--tokenizer LABEL=W2V_RUN:CENTROIDS.npz ...]
      [--clips 129] [--out FILE]

The acoustic stages render semantic tokens; what the tokens do not say, the stages must
invent. For each finished pipeline run (its exported bundle: w2v-BERT, centroids, codec),
on the held-out clips, read three ways that fail differently:
- **runs**: the mean length of a run of one token (seconds) and the distinct tokens per
  clip. A tokenizer that names only the clip (its instrument, its level) holds one token
  for seconds; tokens that follow notes change at about the note rate.
- **coarse**: the mutual information between the token and the codec's coarse codes at
  the same frame (bits per acoustic frame, plug-in over all clips), minus the same with
  the tokens shuffled over all frames (the estimate's bias): how much of what the coarse
  stage must produce the token already says.
- **melody**: within each clip, the mutual information between the token and the frame's
  strongest chroma bin, minus the same with the clip's tokens shuffled in time (the
  plug-in estimate's bias, which grows with the vocabulary): pitch that moves with the
  tokens inside a clip, not a key shared by the whole clip.
Runs given together are measured in the same process, on the same clips; --tokenizer adds
a w2v-BERT training run with its k-means centroids outside any pipeline run (an ablation),
read against the first run's codec.
Writes benchmarks/results/semantic_in_time_<backend>.json.
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


def entropy_bits(x: np.ndarray) -> float:
  """Plug-in entropy of the rows of x ([N] or [N, k] discrete), in bits."""
  _, counts = np.unique(x, return_counts=True, axis=0)
  p = counts / counts.sum()
  return float(-(p * np.log2(p)).sum())


def mutual_information_bits(a: np.ndarray, b: np.ndarray) -> float:
  """Plug-in I(a; b) of two aligned [N] discrete sequences, in bits."""
  return entropy_bits(a) + entropy_bits(b) - entropy_bits(np.stack([a, b], 1))


def mean_run_frames(tokens: np.ndarray) -> float:
  """Mean length, in frames, of the runs of one token in a [T] sequence."""
  starts = np.flatnonzero(np.r_[1, np.diff(tokens) != 0, 1])
  return float(np.mean(np.diff(starts)))


def measure(layout, codec, tokenizer, clips: np.ndarray, rate: int, seed: int) -> dict:
  """The three readings (module docstring) of `tokenizer`'s tokens of `clips` [N, samples]
  at `rate`, against `codec`'s coarse codes (`layout`: rates and coarse levels)."""
  import librosa  # pylint: disable=g-import-not-at-top
  from musiclm_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
  at = lambda to: np.stack([audio_io.resample(c, rate, to) for c in clips])
  semantic = np.asarray(tokenizer.tokenize(at(tokenizer.config.sample_rate)))   # [N, S]
  codec_audio = at(codec.config.sample_rate)
  coarse = np.asarray(codec.encode(codec_audio, num_levels=layout.coarse_levels))  # [N, T, qc]
  per_token = layout.acoustic_rate // layout.semantic_rate
  frames = min(coarse.shape[1] // per_token, semantic.shape[1])
  semantic, coarse = semantic[:, :frames], coarse[:, :frames * per_token]
  coarse_ids = np.zeros(coarse.shape[:2], np.int64)
  for level in range(coarse.shape[2]):
    coarse_ids = coarse_ids * layout.acoustic_codes + coarse[..., level]
  hop = codec.config.sample_rate // layout.semantic_rate
  rng = np.random.default_rng(seed)
  melody, shuffled = [], []
  for tokens, wave in zip(semantic, codec_audio):
    chroma = librosa.feature.chroma_stft(y=wave, sr=codec.config.sample_rate, n_fft=2048,
                                         hop_length=hop)[:, :frames].argmax(0)
    tokens = tokens[:len(chroma)]
    melody.append(mutual_information_bits(tokens, chroma))
    shuffled.append(mutual_information_bits(rng.permutation(tokens), chroma))
  coarse_ids, aligned = coarse_ids.reshape(-1), np.repeat(semantic, per_token, 1).reshape(-1)
  coarse_bits = mutual_information_bits(coarse_ids, aligned)
  coarse_shuffled = mutual_information_bits(coarse_ids, rng.permutation(aligned))
  return {
      "clusters": int(tokenizer.num_clusters),
      "token_entropy_bits": entropy_bits(semantic.reshape(-1)),
      "mean_run_seconds": float(np.mean([mean_run_frames(t) for t in semantic])
                                / layout.semantic_rate),
      "distinct_tokens_per_clip": float(np.mean([len(set(t)) for t in semantic])),
      "coarse_information_bits": coarse_bits,
      "coarse_shuffled_bits": coarse_shuffled,
      "coarse_excess_bits": coarse_bits - coarse_shuffled,
      "coarse_entropy_bits": entropy_bits(coarse_ids),
      "melody_information_bits": float(np.mean(melody)),
      "melody_shuffled_bits": float(np.mean(shuffled)),
      "melody_excess_bits": float(np.mean(melody) - np.mean(shuffled)),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", action="append", required=True,
                      help="[LABEL=]a finished pipeline run (repeat to compare runs); the "
                      "results name it LABEL (default: the folder's name)")
  parser.add_argument("--tokenizer", action="append", default=[],
                      help="LABEL=W2V_RUN:CENTROIDS.npz, a tokenizer outside a pipeline run")
  parser.add_argument("--clips", type=int, default=129, help="held-out clips read")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  if args.clips < 2:
    parser.error(f"--clips must be at least 2, got {args.clips}")

  import machine
  import proof_of_learning
  from musiclm_jax.generation import bundle as bundle_lib
  from musiclm_jax.pipeline import recipe as recipe_lib
  from musiclm_jax.w2v_bert import tokenizer as tokenizer_lib
  start = time.time()
  recipes, labels = [], []
  for arg in args.work_dir:
    label, _, work_dir = arg.rpartition("=")
    try:
      recipe = recipe_lib.Recipe.load(work_dir)
    except (FileNotFoundError, ValueError) as e:
      parser.error(f"--work_dir: {e}")
    if not os.path.isfile(recipe.path("bundle", "manifest.json")):
      parser.error(f"--work_dir {work_dir}: no exported bundle (run its export step)")
    recipes.append(recipe)
    labels.append(label or os.path.basename(os.path.normpath(work_dir)))
  clips, rate, _, _, _ = proof_of_learning._split(recipes[0], recipes[0].reference_split)
  clips = clips[:args.clips]
  report = {"machine": machine.describe_jax(), "clips": len(clips),
            "split": recipes[0].reference_split, "runs": {}}
  extra = []
  for arg in args.tokenizer:
    label, _, paths = arg.partition("=")
    model_dir, _, centroids = paths.rpartition(":")
    if not (label and os.path.isdir(model_dir) and os.path.isfile(centroids)):
      parser.error(f"--tokenizer {arg!r}: give LABEL=W2V_RUN:CENTROIDS.npz (an existing "
                   "run folder and file)")
    extra.append((label, model_dir, centroids))
  first = None

  def record(label, result, **about):
    report["runs"][label] = {**about, **result}
    print(f"{label}: {result['clusters']} clusters, runs "
          f"{result['mean_run_seconds']:.2f} s, {result['distinct_tokens_per_clip']:.1f} "
          f"tokens a clip, coarse information excess {result['coarse_excess_bits']:.2f} of "
          f"{result['coarse_entropy_bits']:.2f} bits, melody excess "
          f"{result['melody_excess_bits']:.3f} bits ({time.time() - start:.0f} s)", flush=True)

  for recipe, label in zip(recipes, labels):
    musiclm = bundle_lib.load_bundle(recipe.path("bundle"))
    first = first or musiclm
    record(label, measure(musiclm.layout, musiclm.codec, musiclm.semantic_tokenizer, clips,
                          rate, args.seed), extra_bindings=list(recipe.extra_bindings))
  for label, model_dir, centroids in extra:
    tokenizer = tokenizer_lib.SemanticTokenizer.load(model_dir, centroids)
    record(label, measure(first.layout, first.codec, tokenizer, clips, rate, args.seed),
           w2v_bert_run=os.path.basename(os.path.normpath(model_dir)),
           centroids=os.path.basename(centroids))
  report["seconds"] = time.time() - start
  print("->", machine.save_result(report, "semantic_in_time", args.out))


if __name__ == "__main__":
  main()
