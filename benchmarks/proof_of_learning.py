r"""Proof of learning: does the text steer the music a pipeline run generates?

  python benchmarks/proof_of_learning.py --work_dir runs/demo [--prompts 24]
      [--chain_prompts 240] [--chain_clips 0] [--seconds 8] [--out FILE]

From a finished `musiclm-jax pipeline` run (its bundle, MuLan run and dataset):
1. Probes: logistic regressions on MuLan audio embeddings of the real training renderings
   predict a clip's ensemble (the instrument(s) named in captions) and tempo word (slow /
   moderate / fast); their accuracy on the held-out real clips is the ceiling.
2. Prompts "<ensemble> playing <tempo> music" for (ensemble, tempo) pairs drawn from the
   caption vocabulary, none of them a whole training caption.
3. Generation from the prompts, and from the same prompts shuffled (each clip then scored
   against the attributes of a prompt it was not given): how often the probe recognises
   the named ensemble and tempo, against chance (one over the classes, and the majority
   class's share) and the shuffled baseline. Also the tempo librosa's beat tracker
   estimates, checked against the tempo word's BPM range. A one-sided Fisher exact test
   says whether the prompts are recognised more often than the shuffled ones (the primary
   test); a one-sided Mann-Whitney U test whether the probe gives the named class more
   probability (finer where few clips are recognised; per-clip values in the JSON).
4. FAD (musicnn MTT) to held-out real renderings of: the generated clips; SoundStream's own
   resynthesis of held-out clips (the floor: what the codec allows); and unconditioned
   generation (classifier-free guidance scale 0: the stages' unconditional model).
5. The chain, link by link, to see where the prompt's information is lost: the same
   MuLan-audio probes read (a) the prompts' MuLan text embeddings (the joint space: does
   the text land near audio of its ensemble?) and (b) those embeddings after the RVQ (the
   12 tokens the stages see, decoded); (c) probes on histograms of semantic tokens (the
   bundle's w2v-BERT + k-means on real clips; ceiling on held-out ones) read the first
   stage's output for the prompts, the shuffled prompts and without guidance. These links
   skip the acoustic stages, so they use a larger prompt set (--chain_prompts, 240), and
   report the probability the probe gives the named class next to its accuracy.
6. The acoustic half, link by link, on held-out real clips (--chain_clips of them, all by
   default), each scored by the MuLan-audio probes against its own ensemble and tempo word:
   the clips themselves; SoundStream's resynthesis of them (the most the final audio can
   show); and the coarse and fine stages rendering the clips' real semantic tokens,
   prompted with the clips' own attributes (what the acoustic stages keep of perfect
   semantic tokens). Where the final audio's recognition falls between links says which
   part the longer run must improve. Beside it, what the codec keeps of the same clips by
   measures a spectral blur cannot pass (`evaluation.fidelity`: chroma cosine with its
   flat, shuffled and static baselines, onset F1, SI-SDR, STFT distance).
Writes benchmarks/results/proof_of_learning_<backend>.json.
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

TEMPO_BPM = {"slow": (0, 80), "moderate": (80, 112), "fast": (112, 1000)}


def _split(recipe, split):
  """(audio [N, T], rate, ensembles, tempo words, captions) of a split."""
  import tensorflow_datasets as tfds
  rows = list(tfds.as_numpy(tfds.load(recipe.tfds_name, split=split,
                                      data_dir=recipe.tfds_dir)))
  return (np.stack([r["audio"] for r in rows]).astype(np.float32), int(rows[0]["sample_rate"]),
          [r["ensemble"].decode() for r in rows], [r["tempo"].decode() for r in rows],
          [r["caption"].decode() for r in rows])


def _probe(train_x, train_y):
  from sklearn.linear_model import LogisticRegression
  return LogisticRegression(max_iter=2000, C=1.0).fit(train_x, train_y)


def _estimated_tempo_word(wave: np.ndarray, rate: int) -> str:
  import librosa
  bpm = float(librosa.feature.tempo(y=wave, sr=rate)[0])
  return next(w for w, (lo, hi) in TEMPO_BPM.items() if lo <= bpm < hi)


def _named_probability(probe, features: np.ndarray, named) -> np.ndarray:
  """[N]: the probability `probe` gives row i's named class (0 for a class it never saw)."""
  column = {c: j for j, c in enumerate(probe.classes_)}
  probabilities = probe.predict_proba(features)
  return np.array([probabilities[i, column[n]] if n in column else 0.0
                   for i, n in enumerate(named)])


def _scores(probe_set, features: np.ndarray, named_pairs) -> dict:
  """The probes' reading of rows `features` [N, D] against (ensemble, tempo) `named_pairs`:
  per attribute the accuracy, the mean probability given the named class, and (under
  'per_clip_probability') those probabilities row by row, for the rank test."""
  out, per_clip = {}, {}
  for attr, index in (("ensemble", 0), ("tempo", 1)):
    probe, named = probe_set[attr], [pair[index] for pair in named_pairs]
    out[attr] = float(np.mean(probe.predict(features) == np.array(named)))
    per_clip[attr] = _named_probability(probe, features, named)
    out[f"{attr}_probability"] = float(np.mean(per_clip[attr]))
  out["per_clip_probability"] = {k: v.round(5).tolist() for k, v in per_clip.items()}
  return out


def _add_p_vs_shuffled(conditioned: dict, shuffled: dict, count: int) -> None:
  """Adds to `conditioned`, per attribute, one-sided tests that its `count` prompts beat the
  shuffled prompts: '<attr>_p_vs_shuffled', a Fisher exact test on the recognition rates
  (the primary test), and '<attr>_probability_p_vs_shuffled', a Mann-Whitney U test on the
  probabilities the probe gives the named class (finer where few clips are recognised)."""
  from scipy import stats
  for attr in ("ensemble", "tempo"):
    table = [[round(rates[attr] * count), count - round(rates[attr] * count)]
             for rates in (conditioned, shuffled)]
    conditioned[f"{attr}_p_vs_shuffled"] = float(
        stats.fisher_exact(table, alternative="greater").pvalue)
    conditioned[f"{attr}_probability_p_vs_shuffled"] = float(stats.mannwhitneyu(
        conditioned["per_clip_probability"][attr], shuffled["per_clip_probability"][attr],
        alternative="greater").pvalue)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", required=True, help="a finished pipeline run")
  parser.add_argument("--prompts", type=int, default=24)
  parser.add_argument("--chain_prompts", type=int, default=240,
                      help="prompts for the chain's text and semantic-stage links (cheap: "
                           "no acoustic stages), for a finer reading than --prompts gives")
  parser.add_argument("--chain_clips", type=int, default=0,
                      help="held-out clips for the acoustic half's links (0: all of them)")
  parser.add_argument("--seconds", type=float, default=8.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  for name, least in (("prompts", 1), ("chain_prompts", 1), ("chain_clips", 0)):
    if getattr(args, name) < least:
      parser.error(f"--{name} must be at least {least}, got {getattr(args, name)}")
  if args.seconds <= 0:
    parser.error(f"--seconds must be positive, got {args.seconds}")

  import machine
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.evaluation import embedders, fad, fidelity
  from musiclm_jax.generation import bundle as bundle_lib
  from musiclm_jax.generation import musiclm as musiclm_lib
  from musiclm_jax.pipeline import recipe as recipe_lib
  start = time.time()
  recipe = recipe_lib.Recipe.load(args.work_dir)
  musiclm = bundle_lib.load_bundle(recipe.path("bundle"))
  mulan = musiclm.mulan
  at = lambda x, r, to: np.stack([audio_io.resample(c, r, to) for c in x])

  train_audio, rate, train_ens, train_tempo, train_captions = _split(recipe, "train")
  test_audio, _, test_ens, test_tempo, _ = _split(recipe, recipe.reference_split)
  embed = lambda x, r: mulan.embed_audio(at(x, r, mulan.config.sample_rate))
  train_emb, test_emb = embed(train_audio, rate), embed(test_audio, rate)
  probes = {"ensemble": _probe(train_emb, train_ens), "tempo": _probe(train_emb, train_tempo)}
  ceiling = {"ensemble": float(probes["ensemble"].score(test_emb, test_ens)),
             "tempo": float(probes["tempo"].score(test_emb, test_tempo))}

  rng = np.random.default_rng(args.seed)
  ensembles = sorted(set(train_ens) & set(test_ens)) or sorted(set(train_ens))
  seen = set(train_captions)

  def draw_prompts(count):
    """(ensemble, tempo) pairs, their prompts, and the prompts in shuffled order."""
    pairs = [(ensembles[rng.integers(len(ensembles))], list(TEMPO_BPM)[rng.integers(3)])
             for _ in range(count)]
    prompts = [f"{e} playing {t} music" for e, t in pairs]
    assert not any(p in seen for p in prompts), "a prompt is a whole training caption"
    return pairs, prompts, [prompts[i] for i in rng.permutation(count)]

  pairs, prompts, shuffled = draw_prompts(args.prompts)

  def generated(texts, **kw):
    return musiclm.generate(texts, args.seconds, seed=args.seed, **kw)

  conditioned = generated(prompts)
  from_shuffled = generated(shuffled)
  guidance = {s: musiclm_lib.Sampling(temperature=musiclm_lib.DEFAULT_SAMPLING[s].temperature,
                                   guidance_scale=0.0) for s in ("semantic", "coarse")}
  unconditioned = generated(prompts, sampling=guidance)

  def recognised(audio, named=pairs, audio_rate=musiclm.sample_rate):
    """How often the probes (and the beat tracker) find each clip's named (ensemble,
    tempo word) in audio [N, samples] at audio_rate."""
    emb = mulan.embed_audio(at(audio, audio_rate, mulan.config.sample_rate))
    out = _scores(probes, emb, named)
    beat = [_estimated_tempo_word(w, audio_rate) for w in audio]
    out["tempo_beat_tracker"] = float(np.mean([b == t for b, (_, t) in zip(beat, named)]))
    return out

  # The chain, link by link (docstring, point 5), on its own larger prompt set. Row i is
  # always scored against chain_pairs[i]: accuracy, and the probability the probe gives
  # the named class (a finer reading than accuracy when the probe's ceiling is low).
  from musiclm_jax.mulan import tokenizer as mulan_tokenizer
  chain_pairs, chain_prompts, chain_shuffled = draw_prompts(args.chain_prompts)

  def hits(probe_set, features):
    return _scores(probe_set, features, chain_pairs)

  unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  chain = {"mulan_text_embedding": hits(probes, mulan.embed_text(chain_prompts)),
           "mulan_text_tokens_decoded": hits(probes, unit(mulan_tokenizer.decode_rvq(
               mulan.codebooks, mulan.text_tokens(chain_prompts))))}
  tokenizer = musiclm.semantic_tokenizer
  histogram = lambda tokens: np.stack([np.bincount(t, minlength=tokenizer.num_clusters)
                                       / len(t) for t in tokens])
  semantic_of = lambda x: histogram(tokenizer.tokenize(at(x, rate,
                                                          tokenizer.config.sample_rate)))
  train_hist, test_hist = semantic_of(train_audio), semantic_of(test_audio)
  semantic_probes = {"ensemble": _probe(train_hist, train_ens),
                     "tempo": _probe(train_hist, train_tempo)}
  chain["semantic_probe_on_real_heldout"] = {
      "ensemble": float(semantic_probes["ensemble"].score(test_hist, test_ens)),
      "tempo": float(semantic_probes["tempo"].score(test_hist, test_tempo))}
  for name, texts, kw in (("semantic_stage_conditioned", chain_prompts, {}),
                          ("semantic_stage_shuffled_prompts", chain_shuffled, {}),
                          ("semantic_stage_unconditioned", chain_prompts,
                           {"sampling": guidance})):
    tokens = np.concatenate([
        musiclm.generate_semantic_tokens(texts[i:i + 48], args.seconds, seed=args.seed + i,
                                         **kw) for i in range(0, len(texts), 48)])
    chain[name] = hits(semantic_probes, histogram(tokens))
  _add_p_vs_shuffled(chain["semantic_stage_conditioned"],
                     chain["semantic_stage_shuffled_prompts"], len(chain_prompts))

  majority = {"ensemble": max(np.mean(np.array(train_ens) == e) for e in set(train_ens)),
              "tempo": max(np.mean(np.array(train_tempo) == t) for t in TEMPO_BPM)}
  recognition = {"conditioned": recognised(conditioned),
                 "shuffled_prompts": recognised(from_shuffled),
                 "unconditioned": recognised(unconditioned),
                 "chance_uniform": {"ensemble": 1 / len(ensembles), "tempo": 1 / 3},
                 "chance_majority": {k: float(v) for k, v in majority.items()},
                 "probe_on_real_heldout": ceiling}
  _add_p_vs_shuffled(recognition["conditioned"], recognition["shuffled_prompts"], len(prompts))

  musicnn = embedders.get("musicnn_mtt")
  real = musicnn.embed(at(test_audio, rate, 16000))
  codec_rate = musiclm.codec.config.sample_rate
  heldout = at(test_audio, rate, codec_rate)
  resynth = np.concatenate([musiclm.codec.decode(musiclm.codec.encode(heldout[i:i + 16]))
                            for i in range(0, len(heldout), 16)])
  # The acoustic half, link by link (docstring, point 6), on the first --chain_clips held-out
  # clips, each scored against its own ensemble and tempo word.
  count = min(args.chain_clips or len(test_audio), len(test_audio))
  own = list(zip(test_ens[:count], test_tempo[:count]))
  real_semantic = tokenizer.tokenize(at(test_audio[:count], rate,
                                        tokenizer.config.sample_rate))
  real_semantic = real_semantic[:, :max(1, round(args.seconds * musiclm.layout.semantic_rate))]
  own_prompts = [f"{e} playing {t} music" for e, t in own]
  rendered = np.concatenate([musiclm.codec.decode(musiclm.generate_acoustic_tokens(
      own_prompts[i:i + 48], real_semantic[i:i + 48], seed=args.seed + i).astype(np.int32))
      for i in range(0, count, 48)])
  # What the codec keeps of the held-out clips (evaluation.fidelity: pitch, onsets,
  # waveform), beside what the probe recognises in its resynthesis.
  codec_fidelity = fidelity.mean_fidelity([
      fidelity.fidelity(h, np.clip(r[:len(h)], -1, 1), codec_rate)
      for h, r in zip(heldout[:count], resynth[:count])])
  acoustic_chain = {
      "real_heldout": recognised(test_audio[:count], own, rate),
      "codec_resynthesis": recognised(resynth[:count], own, codec_rate),
      "acoustic_stages_on_real_semantic_tokens": recognised(rendered, own, codec_rate)}
  fads = {name: fad.fad(musicnn.embed(at(x, r, 16000)), real, bootstrap=100)
          for name, x, r in (("generated", conditioned, musiclm.sample_rate),
                             ("unconditioned", unconditioned, musiclm.sample_rate),
                             ("codec_resynthesis_floor", resynth, codec_rate))}
  report = {"benchmark": "proof_of_learning", "work_dir": args.work_dir,
            "recipe": {k: getattr(recipe, k) for k in ("dataset", "dataset_config", "size",
                                                       "codec_steps", "w2v_bert_steps",
                                                       "mulan_steps", "stage_steps",
                                                       "extra_bindings",
                                                       "codec_bundle")},
            "codec_fidelity_on_heldout": codec_fidelity,
            "prompts": prompts, "seconds": args.seconds, "recognition": recognition,
            "chain": chain, "chain_prompts": len(chain_prompts),
            "acoustic_chain": acoustic_chain, "acoustic_chain_clips": count,
            "fad_musicnn_to_heldout_real": fads, "wall_seconds": time.time() - start,
            "machine": machine.describe_jax()}
  out = machine.save_result(report, "proof_of_learning", args.out)
  for name, values in (recognition | chain | acoustic_chain).items():
    print(f"{name:34s} " + "  ".join(f"{k}={v:.3g}" for k, v in values.items()
                                     if isinstance(v, float)))
  for name, r in fads.items():
    print(f"FAD {name:24s} {r['fad']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]")
  print("codec on held-out clips: " + "  ".join(f"{k}={v:.3g}"
                                                for k, v in codec_fidelity.items()))
  print(f"-> {out}")


if __name__ == "__main__":
  main()
