r"""SoundStream encode + decode speed at the `paper` size: real-time factor on this machine.

  python benchmarks/codec_speed.py [--seconds 10] [--repeats 3] [--batch 1] [--out FILE]

Builds the paper codec (24 kHz, hop 480, C=32, D=128, 12 x 1024 RVQ) with random weights
(speed does not depend on training), encodes and decodes a clip of real music
(wesnoth-1.16-music via Debian, or sonic-pi-samples loops when that is unavailable), and
reports how many seconds of audio pass through per second of wall time, whole-clip and in
streaming 0.5 s chunks. Issue #3's target: >= 20x real time at batch 1 on this CPU.
Writes benchmarks/results/codec_speed_<backend>.json with the machine description.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # noqa: E402

from musiclm_jax.audio import debian_music, io as audio_io  # noqa: E402
from musiclm_jax.soundstream import codec as codec_lib, model as model_lib  # noqa: E402
import flax.linen as nn  # noqa: E402


def real_music(seconds: float, sample_rate: int) -> tuple[np.ndarray, str]:
  for package in ("wesnoth-1.16-music", "sonic-pi-samples"):
    try:
      files = debian_music.audio_files(debian_music.fetch(package))
    except RuntimeError:
      continue
    pieces, total = [], 0
    for path in files:
      try:
        wave = audio_io.load_audio(path, sample_rate)
      except audio_io.AudioError:
        continue
      pieces.append(wave)
      total += wave.shape[0]
      if total >= seconds * sample_rate:
        return np.concatenate(pieces)[: int(seconds * sample_rate)], package
  raise RuntimeError("no real music available")


def paper_codec() -> codec_lib.Codec:
  config = model_lib.SoundStreamConfig()  # the defaults are the paper's codec
  module = model_lib.SoundStream(config)
  variables = nn.meta.unbox(jax.jit(lambda r: module.init(r, jnp.zeros((1, 4800))))(
      jax.random.key(0)))
  # Give the codebooks realistic scale: k-means on random encoder outputs is not needed for
  # speed, but all-zero codebooks would make every distance tie.
  quantizer = jax.tree.map(lambda x: x, variables["quantizer"])
  for level in quantizer["quantizer"].values():
    level["codebook"] = jax.random.normal(jax.random.key(1), level["codebook"].shape)
  return codec_lib.Codec(config, {"params": variables["params"], "quantizer": quantizer})


def timed(fn, repeats: int) -> float:
  fn()  # compile
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  codec = paper_codec()
  sr = codec.config.sample_rate
  wave, source = real_music(args.seconds, sr)
  batch = np.repeat(wave[None], args.batch, axis=0)
  audio_seconds = args.batch * wave.shape[0] / sr

  codes = codec.encode(batch)
  encode_s = timed(lambda: codec.encode(batch), args.repeats)
  decode_s = timed(lambda: codec.decode(codes), args.repeats)

  chunk = int(0.5 * sr)
  def streamed():
    encoder, decoder = codec.stream_encoder(), codec.stream_decoder()
    for start in range(0, batch.shape[1] - chunk + 1, chunk):
      decoder.push(encoder.push(batch[:, start:start + chunk]))
  stream_s = timed(streamed, max(1, args.repeats - 1))

  results = {"encode_x_realtime": audio_seconds / encode_s,
             "decode_x_realtime": audio_seconds / decode_s,
             "encode_decode_x_realtime": audio_seconds / (encode_s + decode_s),
             "streaming_0.5s_encode_decode_x_realtime": audio_seconds / stream_s}
  report = {"benchmark": "codec_speed", "size": "paper (24 kHz, hop 480, C=32, D=128, "
                                                  "12 x 1024 RVQ)",
            "batch": args.batch, "clip_seconds": args.seconds, "audio_source": source,
            "machine": machine.describe_jax(), "results": results, "target": {
                "encode_decode_x_realtime": 20.0},
            "meets_target": results["encode_decode_x_realtime"] >= 20.0,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  out = machine.save_result(report, "codec_speed", args.out)
  for name, value in results.items():
    print(f"{name:42s} {value:8.1f}x")
  print(f"-> {out}")


if __name__ == "__main__":
  main()
