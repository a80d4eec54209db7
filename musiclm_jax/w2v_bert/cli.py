"""`musiclm-jax semantic ...`: fit the k-means of the semantic tokenizer, tokenize audio.

  musiclm-jax semantic fit-kmeans --model_dir RUN AUDIO [AUDIO ...] --output CENTROIDS.npz
      [--layer 7] [--clusters 1024] [--steps 1000] [--crops_per_step 16] [--crop_seconds 10]
  musiclm-jax semantic tokenize IN.(wav|flac|ogg|mp3) OUT.npy --model_dir RUN
      --centroids CENTROIDS.npz

AUDIO arguments are files or folders (searched recursively). Audio of any rate and channel
count is down-mixed and resampled to w2v-BERT's 16 kHz. fit-kmeans draws each step's crops
at random from (seed, step) alone and saves its state to --output every --save_every steps:
run the same command again after an interruption and it resumes where it stopped. tokenize
writes int32 [frames] at 25 tokens/s.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from musiclm_jax import cli_utils


def _fit_kmeans(args) -> None:
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.w2v_bert import tokenizer as tokenizer_lib
  config, params = tokenizer_lib.load_w2v_bert(args.model_dir, args.step, not args.no_ema)
  crop = int(args.crop_seconds * config.sample_rate)
  waves = []
  for path in cli_utils.audio_paths(args.audio):
    try:
      wave = audio_io.load_audio(path, sample_rate=config.sample_rate)
    except audio_io.AudioError as e:
      print(f"skipped {path}: {e}", file=sys.stderr)
      continue
    if wave.shape[0] >= crop:
      waves.append(wave)
    else:
      print(f"skipped {path}: shorter than the {args.crop_seconds} s crop", file=sys.stderr)
  if not waves:
    raise ValueError("no usable audio (every file was unreadable or too short)")
  probe = tokenizer_lib.SemanticTokenizer(config, params, args.layer,
                                          np.zeros((1, config.emb_dim), np.float32))

  def embeddings(stream: int, index: int) -> np.ndarray:
    """Frames of crops_per_step random crops drawn from (seed, stream, index) alone."""
    rng = np.random.default_rng([args.seed, stream, index])
    crops = []
    for _ in range(args.crops_per_step):
      wave = waves[rng.integers(len(waves))]
      start = rng.integers(wave.shape[0] - crop + 1)
      crops.append(wave[start:start + crop])
    return np.asarray(probe.embed(np.stack(crops))).reshape(-1, config.emb_dim)

  batch_fn = lambda step: embeddings(0, step)
  init_sample = lambda: np.concatenate([embeddings(1, i) for i in range(args.init_steps)])
  kmeans = tokenizer_lib.MiniBatchKMeans(args.clusters, seed=args.seed)
  log = lambda step, d: print(f"step {step}: mean squared distance {d:.4f}") if (
      step % 50 == 0 or step == args.steps) else None
  state = kmeans.fit(batch_fn, args.steps, state_path=args.output, save_every=args.save_every,
                     init_sample=init_sample, metadata={"layer": args.layer}, log_fn=log)
  print(f"{len(waves)} files, layer {args.layer}: {state.num_clusters} centroids after "
        f"{int(state.step)} steps -> {args.output}")


def _tokenize(args) -> None:
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.w2v_bert import tokenizer as tokenizer_lib
  tokenizer = tokenizer_lib.SemanticTokenizer.load(args.model_dir, args.centroids, args.layer,
                                                   args.step, not args.no_ema)
  wave = audio_io.load_audio(args.input, sample_rate=tokenizer.config.sample_rate)
  tokens = tokenizer.tokenize(wave[None])[0]
  cli_utils.save_npy(args.output, tokens.astype(np.int32))
  print(f"{args.input}: {wave.shape[0] / tokenizer.config.sample_rate:.2f} s -> "
        f"{tokens.shape[0]} tokens ({tokenizer.token_rate:g}/s) -> {args.output}")


def parser() -> argparse.ArgumentParser:
  from musiclm_jax.w2v_bert import tokenizer as tokenizer_lib
  p = cli_utils.ArgumentParser(prog="musiclm-jax semantic",
                               description=cli_utils.first_paragraph(__doc__))
  sub = p.add_subparsers(dest="command", required=True)

  model_args = lambda q: cli_utils.add_run_arguments(q, "w2v-BERT")

  fit = sub.add_parser("fit-kmeans", help="fit the tokenizer's centroids on audio")
  fit.add_argument("audio", nargs="+", help="audio files or folders")
  fit.add_argument("--output", required=True, help="centroids .npz (also the resume state)")
  fit.add_argument("--layer", type=int, default=tokenizer_lib.PAPER_LAYER)
  fit.add_argument("--clusters", type=int, default=tokenizer_lib.PAPER_NUM_CLUSTERS)
  fit.add_argument("--steps", type=int, default=1000)
  fit.add_argument("--crops_per_step", type=int, default=16)
  fit.add_argument("--crop_seconds", type=float, default=10.0)
  fit.add_argument("--init_steps", type=int, default=8,
                   help="batches of crops in the seeding sample")
  fit.add_argument("--save_every", type=int, default=50)
  fit.add_argument("--seed", type=int, default=0)
  model_args(fit)
  fit.set_defaults(run=_fit_kmeans)

  tok = sub.add_parser("tokenize", help="audio file -> semantic tokens .npy")
  tok.add_argument("input")
  tok.add_argument("output")
  tok.add_argument("--centroids", required=True)
  tok.add_argument("--layer", type=int, default=None, help="default: the centroids file's")
  model_args(tok)
  tok.set_defaults(run=_tokenize)
  return p


def main(argv=None) -> None:
  cli_utils.run(parser(), argv)


if __name__ == "__main__":
  main()
