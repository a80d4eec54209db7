r"""Text-to-music generation speed per stage and end to end, as real-time factors.

  python benchmarks/generation_speed.py [--size tiny|small|paper] [--seconds 10] [--batch 1]
      [--out FILE]

Parts are randomly initialised at the gin sizes (speed does not depend on training): the
stages at lm/<size>.gin (float32 on CPU: XLA:CPU runs bfloat16 slower), the codec at
soundstream/<size>.gin, MuLan at mulan/<size>.gin (random text tower), over the paper's
token layout (12 x 1024 MuLan, 1024 semantic at 25 Hz, 12 x 1024 acoustic at 50 Hz, 4
coarse levels) and contexts (30 / 10 / 3 s). `tiny` uses the tiny codec and the demo's
layout (gin/stages/tiny/layout.gin: 8 x 32 codes at 100 Hz) instead. One warm-up call
compiles; the timed call generates --seconds of audio for --batch prompts. Real-time
factor = seconds of audio / wall seconds (> 1 is faster than real time). Writes
benchmarks/results/generation_speed_<size>_<backend>.json.
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


def build(size: str):
  import flax.linen as nn
  import jax
  import optax
  import random_parts
  from musiclm_jax.generation import musiclm as musiclm_lib
  from musiclm_jax.lm import decoder_lm, models as lm_models
  from musiclm_jax.lm import token_layout
  if size == "tiny":
    # The demo's layout (gin/stages/tiny/layout.gin): it matches soundstream/tiny.gin.
    layout = random_parts.gin_config(["stages/tiny/layout.gin"], token_layout.TokenLayout)
    windows = musiclm_lib.Windows(semantic_seconds=10.0, coarse_seconds=2.0, fine_seconds=0.5)
  else:
    layout, windows = token_layout.TokenLayout(), musiclm_lib.Windows()
  codec = random_parts.codec(size)
  mulan = random_parts.mulan(size, layout.mulan_levels, layout.mulan_codes)
  stage_lms = []
  for stage in token_layout.STAGES:
    prefix_vocab, target_vocab = layout.vocab_sizes(stage)
    config = random_parts.gin_config([f"lm/{size}.gin"], decoder_lm.DecoderConfig, [
        f"TARGET_VOCAB_SIZE = {target_vocab}", f"PREFIX_VOCAB_SIZE = {prefix_vocab}",
        "DecoderConfig.dtype = 'float32'", "DecoderConfig.max_length = 8192"])
    model = lm_models.DecoderOnlyLMModel(decoder_lm.DecoderOnlyLM(config), optax.identity())
    params = nn.meta.unbox(model.get_initial_variables(
        jax.random.key(0), {"prefix_tokens": (1, 4), "decoder_input_tokens": (1, 8)})["params"])
    stage_lms.append(musiclm_lib.StageLM(model, params))
  return musiclm_lib.MusicLM(layout, mulan, *stage_lms, codec, windows)


class _Timed:
  """Wraps a StageLM and adds up its wall time."""

  def __init__(self, stage):
    self.stage, self.seconds = stage, 0.0

  def continue_tokens(self, *args, **kw):
    start = time.time()
    out = self.stage.continue_tokens(*args, **kw)
    self.seconds += time.time() - start
    return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  import machine
  musiclm = build(args.size)
  prompts = ["a calm solo piano piece"] * args.batch
  musiclm.generate(prompts, args.seconds, seed=0)   # warm-up: compiles every shape
  timers = {name: _Timed(getattr(musiclm, name)) for name in ("semantic", "coarse", "fine")}
  for name, timer in timers.items():
    setattr(musiclm, name, timer)
  start = time.time()
  tokens = musiclm.generate_tokens(prompts, args.seconds, seed=1)
  decode_start = time.time()
  wave = musiclm.codec.decode(tokens.astype(np.int32))
  end = time.time()
  audio = args.seconds * args.batch
  result = {name: {"seconds": t.seconds, "real_time_factor": audio / t.seconds}
            for name, t in timers.items()}
  result["codec_decode"] = {"seconds": end - decode_start,
                            "real_time_factor": audio / (end - decode_start)}
  result["end_to_end"] = {"seconds": end - start, "real_time_factor": audio / (end - start)}
  report = {"benchmark": "generation_speed", "machine": machine.describe_jax(),
            "size": args.size, "seconds": args.seconds, "batch": args.batch,
            "audio_shape": list(wave.shape), "stages": result}
  out = machine.save_result(report, f"generation_speed_{args.size}", args.out)
  for name, r in result.items():
    print(f"{name:12s} {r['seconds']:7.2f} s   {r['real_time_factor']:7.2f} x real time")
  print(f"-> {out}")


if __name__ == "__main__":
  main()
