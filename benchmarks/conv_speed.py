r"""Our convolution forms against XLA's grouped convolutions, at the shapes the models train.

  python benchmarks/conv_speed.py [--repeats 5] [--out FILE]

Two layers are written by hand instead of as `lax.conv_general_dilated(...,
feature_group_count=...)`, because XLA:CPU runs grouped convolutions (and the input- and
window-dilated convolutions of a strided one's gradients) on slow generic code:
  - the conformer's depthwise conv (`layers.conformer.depthwise_conv1d`: shifted sums),
    at w2v-BERT `small` (384 channels, 15 taps) and `paper` (1024 channels, 5 taps), batch
    16 x 10 s (250 frames, the gin files' crops);
  - the wave discriminators' grouped strided k=41 convs
    (`soundstream.discriminators.grouped_strided_conv1d`: polyphase form, one batched matrix
    product per tap), the four of one scale-0 discriminator at SoundStream `small` and
    `paper`, batch 16 x 1 s at 24 kHz (runs/soundstream.gin).
Each layer: forward + backward (gradients for input and kernel) of both forms, jitted, the
median of --repeats calls; and the largest difference between their outputs. Both run in
the same process one after the other, so the ratio is what to compare across machines.
Writes benchmarks/results/conv_speed_<backend>.json with the machine.
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
from musiclm_jax.layers import conformer  # noqa: E402
from musiclm_jax.soundstream import discriminators  # noqa: E402

BATCH = 16
# (model, channels, taps) of the conformer's depthwise conv; 250 frames.
DEPTHWISE = (("w2v_bert small", 384, 15), ("w2v_bert paper", 1024, 5))
# (model, first width, width cap) of a wave discriminator: 4 stride-4 k=41 convs.
WAVE = (("soundstream small", 8, 256), ("soundstream paper", 16, 1024))


def _seconds(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def compare(ours, xla, x, kernel, repeats: int) -> dict:
  """Forward + backward seconds of both forms, and their outputs' largest difference."""
  cotangent = jax.random.normal(jax.random.key(2), jax.eval_shape(xla, x, kernel).shape)
  step = lambda f: jax.jit(jax.grad(lambda x, k: jnp.sum(f(x, k) * cotangent), (0, 1)))
  ours_s, xla_s = _seconds(step(ours), (x, kernel), repeats), _seconds(step(xla), (x, kernel),
                                                                      repeats)
  difference = float(jnp.max(jnp.abs(jax.jit(ours)(x, kernel) - jax.jit(xla)(x, kernel))))
  return {"ours_ms": 1e3 * ours_s, "xla_grouped_ms": 1e3 * xla_s,
          "speedup": xla_s / ours_s, "max_abs_difference": difference}


def depthwise_rows(repeats: int) -> list:
  rows = []
  for name, channels, taps in DEPTHWISE:
    x = jax.random.normal(jax.random.key(0), (BATCH, 250, channels))
    kernel = jax.random.normal(jax.random.key(1), (taps, channels)) / np.sqrt(taps)
    left = taps // 2
    xla = lambda x, k, c=channels, t=taps, l=left: jax.lax.conv_general_dilated(
        x, k[:, None, :], (1,), [(l, t - 1 - l)], dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=c)
    ours = lambda x, k, l=left: conformer.depthwise_conv1d(x, k, l)
    rows.append({"layer": f"{name} depthwise conv", "shape": [BATCH, 250, channels],
                 "taps": taps, **compare(ours, xla, x, kernel, repeats)})
  return rows


def wave_rows(repeats: int) -> list:
  rows = []
  for name, width, cap in WAVE:
    time_steps = 24000
    for i in range(4):
      out, groups = min(width * 4, cap), max(1, width // 4)
      x = jax.random.normal(jax.random.key(0), (BATCH, time_steps, width))
      kernel = jax.random.normal(jax.random.key(1), (41, width // groups, out)) * 0.1
      xla = lambda x, k, g=groups: jax.lax.conv_general_dilated(
          x, k, (4,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=g)
      ours = lambda x, k, g=groups: discriminators.grouped_strided_conv1d(x, k, 4, g)
      rows.append({"layer": f"{name} wave discriminator down_{i}",
                   "shape": [BATCH, time_steps, width], "features": out, "groups": groups,
                   **compare(ours, xla, x, kernel, repeats)})
      width, time_steps = out, time_steps // 4
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  start = time.time()
  rows = depthwise_rows(args.repeats) + wave_rows(args.repeats)
  for r in rows:
    print(f"{r['layer']:45s} ours {r['ours_ms']:8.1f} ms   XLA grouped {r['xla_grouped_ms']:8.1f}"
          f" ms   x{r['speedup']:.2f}   max diff {r['max_abs_difference']:.1e}", flush=True)
  totals = {}
  for r in rows:
    model = " ".join(r["layer"].split()[:2])
    t = totals.setdefault(model, {"ours_ms": 0.0, "xla_grouped_ms": 0.0})
    t["ours_ms"] += r["ours_ms"]
    t["xla_grouped_ms"] += r["xla_grouped_ms"]
  for t in totals.values():
    t["speedup"] = t["xla_grouped_ms"] / t["ours_ms"]
  report = {"benchmark": "conv_speed", "machine": machine.describe_jax(),
            "what": "forward + backward (input and kernel gradients), jitted, median of "
                    f"{args.repeats}", "layers": rows, "per_model_totals": totals,
            "wall_seconds": time.time() - start,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  print("wrote", machine.save_result(report, "conv_speed", args.out))


if __name__ == "__main__":
  main()
