r"""SoundStream encode + decode speed at the `paper` size: real-time factor on this machine.

  python benchmarks/codec_speed.py [--seconds 10] [--repeats 3] [--batch 1] [--out FILE]

Builds the paper codec (24 kHz, hop 480, C=32, D=128, 12 x 1024 RVQ) with random weights
(speed does not depend on training), encodes and decodes a clip of real music
(wesnoth-1.16-music via Debian, or sonic-pi-samples loops when that is unavailable), and
reports how many seconds of audio pass through per second of wall time, whole-clip and in
streaming 0.5 s chunks. The target: >= 20x real time at batch 1 on this CPU.

Because "this CPU" changes between machines, it also reports the work (XLA's FLOP count of
the compiled encode and decode, per second of audio), the throughput achieved (GFLOP/s),
and the same machine's float32 throughput on the codec's own largest convolution shape
measured alone: their ratio says how much faster code could make the codec here (a
ratio near 1 leaves only less work or lower precision). It also measures the machine's
float32 matrix-product throughput (a 2048^3 product, the best case for its cores) against
the throughput the target needs (target x work per audio second): a machine whose best
float32 product is slower than that cannot meet the target at this work in float32, by
any code. On GPU, XLA's count leaves out the convolutions (cuDNN library calls): read the
work fields on CPU only.
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


TARGET_X_REALTIME = 20.0  # encode + decode, batch 1


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


def compiled_flops(jitted, *args) -> float:
  """XLA's FLOP count of one call (static arguments bound in `jitted`)."""
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def conv_throughput(channels: int, samples: int, repeats: int) -> float:
  """GFLOP/s of one k=7, dilation-3 causal conv [1, samples, C] -> C, as in SEANet's first
  block (the codec's most expensive layer shape), alone on this machine."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, samples + 18, channels)),
                  jnp.float32)
  kernel = jnp.asarray(np.random.default_rng(1).normal(size=(7, channels, channels)),
                       jnp.float32)
  conv = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1,), "VALID", rhs_dilation=(3,), dimension_numbers=("NWC", "WIO", "NWC")))
  seconds = timed(lambda: conv(x, kernel).block_until_ready(), repeats)
  return 2 * 7 * channels * channels * samples / seconds / 1e9


def matmul_throughput(repeats: int, size: int = 2048) -> float:
  """GFLOP/s of a float32 [size, size] @ [size, size] product: the machine's practical
  float32 peak (large square products are what BLAS kernels run best)."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=(size, size)), jnp.float32) for _ in range(2))
  product = jax.jit(jnp.matmul)
  return 2 * size ** 3 / timed(lambda: product(a, b).block_until_ready(), repeats) / 1e9


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

  encode_flops = compiled_flops(
      jax.jit(lambda v, w: codec.module.apply(v, w, method=model_lib.SoundStream.encode)),
      codec.variables, jnp.asarray(batch))
  decode_flops = compiled_flops(
      jax.jit(lambda v, c: codec.module.apply(v, c, method=model_lib.SoundStream.decode)),
      codec.variables, jnp.asarray(codes))
  work = {"encode_gflop_per_audio_second": encode_flops / audio_seconds / 1e9,
          "decode_gflop_per_audio_second": decode_flops / audio_seconds / 1e9,
          "achieved_gflops": (encode_flops + decode_flops) / (encode_s + decode_s) / 1e9,
          "largest_conv_alone_gflops": conv_throughput(codec.config.channels,
                                                       batch.shape[1], args.repeats)}
  work["achieved_over_largest_conv_alone"] = (work["achieved_gflops"]
                                              / work["largest_conv_alone_gflops"])
  work["float32_matmul_peak_gflops"] = matmul_throughput(max(args.repeats, 5))
  work["gflops_needed_for_target"] = TARGET_X_REALTIME * (
      work["encode_gflop_per_audio_second"] + work["decode_gflop_per_audio_second"])

  results = {"encode_x_realtime": audio_seconds / encode_s,
             "decode_x_realtime": audio_seconds / decode_s,
             "encode_decode_x_realtime": audio_seconds / (encode_s + decode_s),
             "streaming_0.5s_encode_decode_x_realtime": audio_seconds / stream_s}
  report = {"benchmark": "codec_speed", "size": "paper (24 kHz, hop 480, C=32, D=128, "
                                                  "12 x 1024 RVQ)",
            "batch": args.batch, "clip_seconds": args.seconds, "audio_source": source,
            "machine": machine.describe_jax(), "results": results, "work": work, "target": {
                "encode_decode_x_realtime": TARGET_X_REALTIME},
            "meets_target": results["encode_decode_x_realtime"] >= TARGET_X_REALTIME,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  out = machine.save_result(report, "codec_speed", args.out)
  for name, value in results.items():
    print(f"{name:42s} {value:8.1f}x")
  for name, value in work.items():
    print(f"{name:42s} {value:8.2f}")
  print(f"-> {out}")


if __name__ == "__main__":
  main()
