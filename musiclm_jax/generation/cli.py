"""`musiclm-jax generate`: text to music from an exported bundle.

  musiclm-jax generate --bundle BUNDLE --prompt "calm solo piano" --seconds 30 --out out.wav
  musiclm-jax generate --bundle BUNDLE --prompts prompts.txt --num_samples 2 --out outdir/
  musiclm-jax generate --bundle BUNDLE --prompt "calm piano@0-15" --prompt "fast drums@15-30" \
      --seconds 30 --out story.wav                                     # story mode
  musiclm-jax generate --bundle BUNDLE --audio_prompt intro.wav [--prompt "..."] \
      --seconds 30 --out continued.wav                                 # continuation

Several plain --prompt flags (or a --prompts file, one per line) make a batch; prompts with
'@START-END' (seconds) make one story whose conditioning changes at those times. With one
clip --out is the WAV; with several it is a folder of NNN_sampleK.wav. Sampling: the
bundle's default (musiclm.DEFAULT_SAMPLING, or what its recipe measured best for its
stages: docs/stages_and_generation.md), or --temperature / --top_k for every stage, or per
stage (--semantic_temperature, ...); --guidance_scale sets classifier-free guidance of the
text-conditioned stages, --no_guidance turns it off; --no_fine_stage decodes the coarse
levels alone, --fine_stage runs the fine stage where the bundle skips it by default (as do
--fine_temperature and --fine_top_k). --text_tokens conditions on the RVQ tokens of the
prompt's MuLan text embedding itself (the paper) where the bundle has an audio token bank
(by default it conditions on the training clips' tokens nearest the text embedding).
--audio_prompt continues a recording (any format, rate and channels): the output starts
with it and lasts --seconds in all; without --prompt the music is conditioned on the
recording's own MuLan tokens.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import List

from musiclm_jax import cli_utils

_SPAN = re.compile(r"^(.*)@\s*([0-9.]+)\s*-\s*([0-9.]+)\s*$")


def parse_prompts(prompts: List[str]):
  """Plain prompts -> the list itself (a batch); 'text@a-b' prompts -> one timeline."""
  from musiclm_jax.generation import musiclm as musiclm_lib  # pylint: disable=g-import-not-at-top
  spans = [_SPAN.match(p) for p in prompts]
  if not any(spans):
    return list(prompts)
  if not all(spans):
    raise ValueError("mix of story prompts ('text@start-end') and plain prompts: use one kind")
  story = [musiclm_lib.TimedPrompt(m.group(1).strip(), float(m.group(2)), float(m.group(3)))
           for m in spans]
  for p in story:
    if not p.start_s < p.end_s:
      raise ValueError(f"story prompt {p.text!r}: start {p.start_s} must be before end "
                       f"{p.end_s}")
  return [sorted(story, key=lambda p: p.start_s)]


def _sampling(args, defaults=None):
  """Per-stage Sampling: the model's defaults (`MusicLM.default_sampling`; None: the
  library's musiclm.DEFAULT_SAMPLING), with what the flags set over them."""
  from musiclm_jax.generation import musiclm as musiclm_lib  # pylint: disable=g-import-not-at-top
  defaults = musiclm_lib.DEFAULT_SAMPLING | dict(defaults or {})
  fine_flags = [f"--fine_{name}" for name in ("temperature", "top_k")
                if getattr(args, f"fine_{name}") is not None]
  if args.no_fine_stage and (fine_flags or args.fine_stage):
    raise ValueError(f"--no_fine_stage skips the fine stage: "
                     f"{', '.join(fine_flags) or '--fine_stage'} contradicts it")
  # A fine-stage flag asks for the fine stage, also where the model skips it by default.
  run_fine = (defaults["fine"] is not musiclm_lib.NO_FINE_STAGE or args.fine_stage
              or bool(fine_flags)) and not args.no_fine_stage
  out = {}
  for stage, default in (defaults | {"fine": musiclm_lib.fine_stage_sampling(defaults)}).items():
    temperature = getattr(args, f"{stage}_temperature")
    temperature = args.temperature if temperature is None else temperature
    top_k = getattr(args, f"{stage}_top_k")
    top_k = args.top_k if top_k is None else top_k
    guidance = default.guidance_scale if args.guidance_scale is None else args.guidance_scale
    out[stage] = musiclm_lib.Sampling(
        temperature=default.temperature if temperature is None else temperature,
        top_k=default.top_k if top_k is None else top_k, top_p=default.top_p,
        # Guidance needs a text-conditioned stage: the fine stage reads coarse tokens only.
        guidance_scale=None if args.no_guidance or stage == "fine" else guidance)
  if not run_fine:
    out["fine"] = musiclm_lib.NO_FINE_STAGE
  return out


def _generate(args) -> None:
  from musiclm_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
  from musiclm_jax.generation import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  from musiclm_jax.generation import musiclm as musiclm_lib  # pylint: disable=g-import-not-at-top
  texts = list(args.prompt)
  if args.prompts:
    with open(args.prompts, encoding="utf-8") as f:
      texts += [line.strip() for line in f if line.strip()]
  if not texts and not args.audio_prompt:
    raise ValueError("give --prompt (one or more), --prompts FILE or --audio_prompt FILE")
  if args.seconds <= 0:
    raise ValueError(f"--seconds must be > 0, got {args.seconds}")
  prompts = parse_prompts(texts) if texts else [None]
  _sampling(args)   # contradictory or bad flags fail before the bundle loads
  musiclm = bundle_lib.load_bundle(args.bundle)
  if args.text_tokens:
    musiclm.text_conditioning = musiclm_lib.TEXT_TOKENS
  sampling = _sampling(args, musiclm.default_sampling)
  continuation = {}
  if args.audio_prompt:
    continuation = {"audio_prompt": audio_io.load_audio(args.audio_prompt, musiclm.sample_rate),
                    "audio_prompt_rate": musiclm.sample_rate}
  n = args.num_samples
  if args.rerank:
    ranked, scores = musiclm.generate_ranked(prompts, args.seconds, n, seed=args.seed,
                                             sampling=sampling, show_progress=True,
                                             **continuation)
    waves = ranked.reshape(len(prompts) * n, -1)
    names = [f"{i:03d}_rank{k}.wav" for i in range(len(prompts)) for k in range(n)]
    for i, row in enumerate(scores):
      print(f"prompt {i}: MuLan scores, best first: {', '.join(f'{v:.3f}' for v in row)}")
  else:
    batch = [p for p in prompts for _ in range(n)]
    waves = musiclm.generate(batch, args.seconds, seed=args.seed, sampling=sampling,
                             show_progress=True, **continuation)
    names = [f"{i // n:03d}_sample{i % n}.wav" for i in range(len(batch))]
  if len(names) == 1:
    paths = [args.out]
  else:
    os.makedirs(args.out, exist_ok=True)
    paths = [os.path.join(args.out, name) for name in names]
  for path, wave in zip(paths, waves):
    audio_io.save_audio(path, wave, musiclm.sample_rate)
  print(f"{len(paths)} clip(s) of {args.seconds:g} s at {musiclm.sample_rate} Hz -> "
        f"{args.out}")


def parser() -> argparse.ArgumentParser:
  p = cli_utils.ArgumentParser(prog="musiclm-jax generate",
                               description=cli_utils.first_paragraph(__doc__))
  p.add_argument("--bundle", required=True, help="exported MusicLM bundle")
  p.add_argument("--prompt", action="append", default=[],
                 help="a text prompt; several make a batch. 'TEXT@START-END' (seconds) "
                      "prompts make one story whose prompt changes over time, e.g. "
                      "--prompt 'calm piano@0-15' --prompt 'fast drums@15-30'")
  p.add_argument("--prompts", default=None, help="a text file, one prompt per line")
  p.add_argument("--audio_prompt", default=None,
                 help="a recording to continue (the output starts with it)")
  p.add_argument("--seconds", type=float, default=10.0, help="output length, in all")
  p.add_argument("--out", type=cli_utils.output_path, required=True,
                 help="WAV file (one clip) or folder")
  p.add_argument("--num_samples", type=int, default=1)
  p.add_argument("--rerank", action="store_true",
                 help="rank each prompt's samples by MuLan text-audio similarity")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--temperature", type=float, default=None,
                 help="every stage's (default: the bundle's)")
  p.add_argument("--top_k", type=int, default=None,
                 help="every stage's (default: the bundle's; 0: no top-k)")
  p.add_argument("--guidance_scale", type=float, default=None,
                 help="classifier-free guidance of the text-conditioned stages (default: "
                      "the bundle's)")
  p.add_argument("--no_guidance", action="store_true",
                 help="no classifier-free guidance (one pass per step, not two)")
  p.add_argument("--no_fine_stage", action="store_true",
                 help="decode the coarse levels alone (the codec trains with quantizer "
                      "dropout): for a fine stage that adds noise, not detail")
  p.add_argument("--fine_stage", action="store_true",
                 help="run the fine stage where the bundle's default skips it")
  p.add_argument("--text_tokens", action="store_true",
                 help="condition on the RVQ tokens of the MuLan text embedding (the "
                      "paper), not on the bundle's audio token bank")
  for stage in ("semantic", "coarse", "fine"):
    p.add_argument(f"--{stage}_temperature", type=float, default=None)
    p.add_argument(f"--{stage}_top_k", type=int, default=None)
  p.set_defaults(run=_generate)
  return p


def main(argv=None) -> None:
  cli_utils.run(parser(), argv)
