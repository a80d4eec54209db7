"""`musiclm-jax mulan ...`: MuLan embeddings, text-audio scores, and the tokenizer's RVQ.

  musiclm-jax mulan embed --model_dir RUN (--text "calm piano" ... | --audio FILE ...)
      [--output EMB.npy] [--rvq RVQ.npz]
  musiclm-jax mulan score --model_dir RUN --text "calm piano" --audio FILE
  musiclm-jax mulan fit-rvq --model_dir RUN AUDIO [AUDIO ...] --output RVQ.npz
      [--levels 12] [--codes 1024] [--steps 200]

embed prints one line per input (norm-1 embedding's first values, and the MuLan tokens
with --rvq) and writes float32 [N, 128] with --output. score prints the cosine of the text
and the audio embedding (MuLan cycle consistency's core). fit-rvq embeds every window of
the audio (files or folders, searched recursively) and fits the residual VQ of the MuLan
tokenizer on them. Audio of any rate and channel count is down-mixed and resampled.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from musiclm_jax import cli_utils


def _tokenizer(args):
  from musiclm_jax.mulan import tokenizer as tokenizer_lib
  return tokenizer_lib.MuLanTokenizer.load(args.model_dir, getattr(args, "rvq", None),
                                           args.step, not args.no_ema)


def _load(path: str, sample_rate: int) -> np.ndarray:
  from musiclm_jax.audio import io as audio_io
  return audio_io.load_audio(path, sample_rate=sample_rate)


def _embed(args) -> None:
  if bool(args.text) == bool(args.audio):
    raise ValueError("give either --text or --audio (one or more)")
  tok = _tokenizer(args)
  if args.text:
    names, emb = args.text, tok.embed_text(args.text)
  else:
    names = args.audio
    emb = np.concatenate([tok.embed_audio(_load(p, tok.config.sample_rate))
                          for p in args.audio])
  tokens = None
  if args.rvq:
    from musiclm_jax.mulan import tokenizer as tokenizer_lib
    tokens = tokenizer_lib.encode_rvq(tok.codebooks, emb)
  for i, name in enumerate(names):
    line = f"{name!r}: [{', '.join(f'{v:+.3f}' for v in emb[i, :4])}, ...]"
    if tokens is not None:
      line += f" tokens {tokens[i].tolist()}"
    print(line)
  if args.output:
    cli_utils.save_npy(args.output, emb.astype(np.float32))
    print(f"{emb.shape} embeddings -> {args.output}")


def _score(args) -> None:
  tok = _tokenizer(args)
  wave = _load(args.audio, tok.config.sample_rate)
  cosine = float(tok.score([args.text], wave[None])[0])
  print(f"{cosine:.4f}\t{args.text!r}\t{args.audio}")


def _fit_rvq(args) -> None:
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.mulan import tokenizer as tokenizer_lib
  tok = _tokenizer(args)
  windows = []
  for path in cli_utils.audio_paths(args.audio):
    try:
      wave = _load(path, tok.config.sample_rate)
      windows.append(tok.window_embeddings(wave)[0])
    except (audio_io.AudioError, ValueError) as e:
      print(f"skipped {path}: {e}", file=sys.stderr)
  if not windows:
    raise ValueError("no usable audio (every file was unreadable or too short)")
  embeddings = np.concatenate(windows)
  codebooks, report = tokenizer_lib.fit_rvq(embeddings, args.levels, args.codes, args.steps,
                                            seed=args.seed)
  tokenizer_lib.save_rvq(args.output, codebooks, **report)
  print(f"RVQ {codebooks.shape[0]} x {codebooks.shape[1]} on {report['num_embeddings']} "
        f"window embeddings: relative squared error {report['relative_squared_error']:.4f}, "
        f"code usage {report['code_usage']:.2f} -> {args.output}")


def parser() -> argparse.ArgumentParser:
  p = cli_utils.ArgumentParser(prog="musiclm-jax mulan",
                               description=cli_utils.first_paragraph(__doc__))
  sub = p.add_subparsers(dest="command", required=True)

  with_run = lambda q: cli_utils.add_run_arguments(q, "MuLan")
  emb = with_run(sub.add_parser("embed", help="text or audio -> MuLan embeddings"))
  emb.add_argument("--text", action="append", default=[])
  emb.add_argument("--audio", action="append", default=[])
  emb.add_argument("--output", default=None, help="write float32 [N, dim] .npy")
  emb.add_argument("--rvq", default=None, help="RVQ file (fit-rvq): also print tokens")
  emb.set_defaults(run=_embed)

  score = with_run(sub.add_parser("score", help="cosine of a text and an audio embedding"))
  score.add_argument("--text", required=True)
  score.add_argument("--audio", required=True)
  score.set_defaults(run=_score)

  fit = with_run(sub.add_parser("fit-rvq", help="fit the MuLan tokenizer's residual VQ"))
  fit.add_argument("audio", nargs="+", help="audio files or folders")
  fit.add_argument("--output", required=True, help="RVQ .npz")
  fit.add_argument("--levels", type=int, default=12)
  fit.add_argument("--codes", type=int, default=1024)
  fit.add_argument("--steps", type=int, default=200)
  fit.add_argument("--seed", type=int, default=0)
  fit.set_defaults(run=_fit_rvq)
  return p


def main(argv=None) -> None:
  cli_utils.run(parser(), argv)
