r"""The delay pattern's speed: one acoustic stage flattened against the same stage with its
levels in parallel (`DecoderConfig.parallel_levels`), in the same run.

  python benchmarks/delay_pattern_speed.py [--steps 5] [--out FILE]

The stage is `pipeline/tiny_long.gin`'s coarse stage (4 layers of width 256, 3 levels of
32 codes, 1 s crops: a prefix of 29 tokens and 100 frames): a training step (loss,
gradients and an Adam update, batch 16) and the sampling of one window (batch 8,
classifier-free guidance 1.5, top-k 250, the generation's default). Writes
benchmarks/results/delay_pattern_speed_<backend>.json with the machine; the ratios are
flat time over delayed time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import machine  # noqa: E402  pylint: disable=wrong-import-position
from musiclm_jax.lm import decoder_lm  # noqa: E402  pylint: disable=wrong-import-position
from musiclm_jax.lm import models as lm_models  # noqa: E402  pylint: disable=wrong-import-position

LEVELS, CODES, FRAMES, PREFIX, PREFIX_VOCAB = 3, 32, 100, 29, 128
SIZES = dict(num_layers=4, num_heads=4, head_dim=64, emb_dim=256, mlp_dim=512, max_length=384)


def _model(parallel_levels: int) -> lm_models.DecoderOnlyLMModel:
  config = decoder_lm.DecoderConfig(target_vocab_size=LEVELS * CODES,
                                    prefix_vocab_size=PREFIX_VOCAB,
                                    parallel_levels=parallel_levels, **SIZES)
  return lm_models.DecoderOnlyLMModel(decoder_lm.DecoderOnlyLM(config), optax.adam(1e-3),
                                      prefix_dropout_rate=0.1, z_loss=1e-4)


def _batch(batch_size: int, rng: np.random.Generator) -> dict:
  codes = rng.integers(0, CODES, (batch_size, FRAMES, LEVELS)) + np.arange(LEVELS) * CODES
  targets = codes.reshape(batch_size, -1).astype(np.int32)
  bos = np.full((batch_size, 1), LEVELS * CODES, np.int32)
  return {"prefix_tokens": rng.integers(0, PREFIX_VOCAB, (batch_size, PREFIX)).astype(np.int32),
          "decoder_input_tokens": np.concatenate([bos, targets[:, :-1]], axis=1),
          "decoder_target_tokens": targets, "decoder_loss_weights": np.ones_like(targets)}


def _best_seconds(fn, steps: int) -> float:
  jax.block_until_ready(fn())                      # compile
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def measure(parallel_levels: int, steps: int) -> dict:
  model = _model(parallel_levels)
  rng = np.random.default_rng(0)
  train_batch = _batch(16, rng)
  shapes = {k: v.shape for k, v in train_batch.items()}
  params = nn.meta.unbox(model.get_initial_variables(jax.random.key(0), shapes))["params"]
  optimizer = model.optimizer_def
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, key):
    grads = jax.grad(lambda p: model.loss_fn(p, train_batch, key)[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  train = _best_seconds(lambda: train_step(params, opt_state, jax.random.key(1)), steps)
  prefix = _batch(8, rng)["prefix_tokens"]
  sample = lambda: model.predict_batch(params, {"prefix_tokens": prefix}, jax.random.key(2),
                                       max_decode_length=FRAMES * LEVELS, top_k=250,
                                       guidance_scale=1.5, level_codes=CODES,
                                       levels_per_frame=LEVELS)
  window = _best_seconds(sample, max(1, steps // 2))
  positions = PREFIX + (FRAMES + LEVELS - 1 if parallel_levels else FRAMES * LEVELS + 1)
  return {"positions": positions, "train_step_s": train, "train_tokens_per_s":
          16 * FRAMES * LEVELS / train, "sample_window_s": window,
          "sample_tokens_per_s": 8 * FRAMES * LEVELS / window}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=5, help="timed repeats (best kept)")
  parser.add_argument("--out", default=None, help="result JSON (default: benchmarks/results)")
  args = parser.parse_args(argv)
  if args.steps < 1:
    parser.error(f"--steps must be >= 1, got {args.steps}")
  flat, delayed = measure(0, args.steps), measure(LEVELS, args.steps)
  report = {"benchmark": "delay_pattern_speed", "machine": machine.describe_jax(),
            "stage": dict(levels=LEVELS, codes=CODES, frames=FRAMES, prefix=PREFIX, **SIZES),
            "flat": flat, "delayed": delayed,
            "train_speedup": flat["train_step_s"] / delayed["train_step_s"],
            "sample_speedup": flat["sample_window_s"] / delayed["sample_window_s"]}
  print(f"training step {flat['train_step_s']:.3f} s flat, {delayed['train_step_s']:.3f} s "
        f"delayed ({report['train_speedup']:.2f}x); one window sampled "
        f"{flat['sample_window_s']:.2f} s flat, {delayed['sample_window_s']:.2f} s delayed "
        f"({report['sample_speedup']:.2f}x)")
  print("wrote", machine.save_result(report, "delay_pattern_speed", args.out))


if __name__ == "__main__":
  main()
