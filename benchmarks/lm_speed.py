r"""Decoder-only LM speed: training tokens/s and cached-sampling tokens/s.

The size of audiolm-pytorch's SemanticTransformer comparison: d_model 512,
6 layers, 8 heads, vocab 1024, length 512, batch 8. Reference numbers for audiolm-pytorch
on the same kind of 2-core CPU machine (as quoted by its comparison): 266 training tokens/s,
56 / 309 sampling tokens/s at batch 1 / 8. Targets: >= 3x, >= 5x, >= 2x.

  python benchmarks/lm_speed.py [--dtype float32|bfloat16] [--steps 5] [--out FILE]
      [--reference_python /work/bench-venv/bin/python]

Each rate is also read against this machine's limit: model FLOP/s (PaLM's count per token:
6 N + 12 L H Q T in training, 2 N + 2 L H Q T in cached sampling, N the parameters, T the
length; the sampled token attends to T/2 positions on average) over the float32 matmul
peak measured here (`matmul_peak_flops`: the best of square matmuls through XLA). Cached
sampling, which reads every weight once per step, is also read against the memory
bandwidth measured here (`memory_bandwidth`): the bytes a step must read (float32 weights,
plus each sequence's key/value cache) per token, over that rate.

With --reference_python (a Python with torch and audiolm-pytorch, see
benchmarks/audiolm_pytorch_speed.py), the reference is measured in the same run, right after
this side, and the ratios use those numbers; without it they use the quoted numbers, and
the report says so. Writes benchmarks/results/lm_speed_<backend>_<dtype>.json with the
machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # noqa: E402

from musiclm_jax.lm import decoder_lm, models as lm_models  # noqa: E402
from musiclm_jax.training import partitioning, trainer as trainer_lib  # noqa: E402

QUOTED_REFERENCE = {"source": "audiolm-pytorch SemanticTransformer, same size, 2-core CPU "
                              "(quoted numbers, not measured in this run)",
                    "train_tokens_per_s": 266.0, "sample_tokens_per_s_batch1": 56.0,
                    "sample_tokens_per_s_batch8": 309.0}
TARGET_RATIO = {"train_tokens_per_s": 3.0, "sample_tokens_per_s_batch1": 5.0,
                "sample_tokens_per_s_batch8": 2.0}
VOCAB, LENGTH, BATCH = 1024, 512, 8
# Gated MLP width with the parameter count of the reference's GEGLU feed-forward
# (audiolm-pytorch: mult 4 * 2/3 = 1365): the same size, not only the same d_model.
MLP_DIM = 1365
# The reference's attention shares one key/value head across the 8 query heads
# (multi-query); so does this side, through DecoderConfig.num_kv_heads.
NUM_KV_HEADS = 1
# jax.nn.dot_product_attention (XLA's attention): 1.25x the written-out einsum path's
# training speed on the 2-core EPYC. Cached sampling runs the einsum path either way.
ATTENTION = "xla"


def make_model(dtype: str) -> lm_models.DecoderOnlyLMModel:
  config = decoder_lm.DecoderConfig(
      target_vocab_size=VOCAB, prefix_vocab_size=0, num_layers=6, num_heads=8, head_dim=64,
      emb_dim=512, mlp_dim=MLP_DIM, num_kv_heads=NUM_KV_HEADS, dropout_rate=0.0,
      max_length=LENGTH, dtype=dtype, attention_implementation=ATTENTION)
  return lm_models.DecoderOnlyLMModel(decoder_lm.DecoderOnlyLM(config), optax.adamw(1e-4))


def bench_training(model, steps: int) -> float:
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner)
  rng = np.random.default_rng(0)
  targets = rng.integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)
  batch = {"decoder_target_tokens": targets,
           "decoder_input_tokens": np.concatenate(
               [np.full((BATCH, 1), VOCAB, np.int32), targets[:, :-1]], axis=1),
           "decoder_loss_weights": np.ones((BATCH, LENGTH), np.float32)}
  state = trainer.create_state({k: v.shape for k, v in batch.items()})
  batch = partitioner.shard_batch(batch)
  for _ in range(2):  # compile + warm-up
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  return BATCH * LENGTH * steps / (time.perf_counter() - start)


def bench_sampling(model, batch_size: int, repeats: int) -> float:
  params = jax.jit(lambda rng: model.get_initial_variables(
      rng, {"decoder_input_tokens": (1, LENGTH)})["params"])(jax.random.key(0))
  from flax import linen as nn
  params = nn.meta.unbox(params)
  batch = {"decoder_input_tokens": np.zeros((batch_size, LENGTH), np.int32)}
  # top_k = 10% of the vocabulary: the reference's default filter, so both do that work.
  sample = lambda rng: model.predict_batch(params, batch, rng, max_decode_length=LENGTH,
                                           temperature=1.0, top_k=VOCAB // 10)
  jax.block_until_ready(sample(jax.random.key(1)))  # compile
  start = time.perf_counter()
  for i in range(repeats):
    jax.block_until_ready(sample(jax.random.key(2 + i)))
  return batch_size * LENGTH * repeats / (time.perf_counter() - start)


def memory_bandwidth(mebibytes: int = 512, repeats: int = 10) -> float:
  """Bytes/s of the fastest of `repeats` float32 sums over a `mebibytes` array (read once,
  far larger than the caches): the rate at which a decoding step can read the weights."""
  x = jnp.ones((mebibytes * 2**20 // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  jax.block_until_ready(total(x))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(total(x))
    best = min(best, time.perf_counter() - start)
  return x.nbytes / best


def sampling_bytes_per_step(model, params: int, batch: int) -> float:
  """Bytes a cached decoding step must read: every float32 weight once (shared by the
  batch) and, per sequence, the key/value cache up to the mean position T/2."""
  config = model.module.config
  kv_heads = config.num_kv_heads or config.num_heads
  cache = batch * config.num_layers * 2 * kv_heads * config.head_dim * (LENGTH / 2) * 4
  return 4 * params + cache


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of the fastest of `repeats` float32 [size, size] @ [size, size] products: what
  XLA's dense matmul reaches on this machine (its practical peak)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, a))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, a))
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


def model_flops_per_token(model, params: int) -> dict:
  """PaLM's model FLOPs per token (module docstring), training and cached sampling."""
  config = model.module.config
  attention = config.num_layers * config.num_heads * config.head_dim * LENGTH
  return {"train_tokens_per_s": 6 * params + 12 * attention,
          "sample_tokens_per_s_batch1": 2 * params + 2 * attention,
          "sample_tokens_per_s_batch8": 2 * params + 2 * attention}


def measure_reference(python: str, steps: int, repeats: int) -> dict:
  """Runs benchmarks/audiolm_pytorch_speed.py under `python`; returns its report."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "audiolm_pytorch_speed.py")
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "reference.json")
    subprocess.run([python, script, "--steps", str(steps), "--repeats", str(repeats),
                    "--out", out], check=True)
    with open(out, encoding="utf-8") as f:
      return json.load(f)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", default=None)
  parser.add_argument("--reference_python", default=None,
                      help="Python with torch + audiolm-pytorch: measure the reference too")
  args = parser.parse_args()

  # The machine's limits, first (in one run they read up to 2x lower after the other
  # measurements than before them) and again at the end; the best of the two is the limit.
  limits = [(matmul_peak_flops(), memory_bandwidth())]
  model = make_model(args.dtype)
  results = {
      "train_tokens_per_s": bench_training(model, args.steps),
      "sample_tokens_per_s_batch1": bench_sampling(model, 1, args.repeats),
      "sample_tokens_per_s_batch8": bench_sampling(model, 8, args.repeats),
  }
  reference = dict(QUOTED_REFERENCE)
  if args.reference_python:
    measured = measure_reference(args.reference_python, args.steps, args.repeats)
    reference = {"source": "audiolm-pytorch SemanticTransformer, measured in this run "
                           "(benchmarks/audiolm_pytorch_speed.py)",
                 "report": measured, **measured["results"]}
  ratios = {k: v / reference[k] for k, v in results.items()}
  params = sum(x.size for x in jax.tree.leaves(jax.eval_shape(
      lambda: model.get_initial_variables(jax.random.key(0),
                                          {"decoder_input_tokens": (1, LENGTH)})["params"])))
  limits.append((matmul_peak_flops(), memory_bandwidth()))
  peak, bandwidth = (max(values) for values in zip(*limits))
  per_token = model_flops_per_token(model, params)
  of_peak = {k: v * per_token[k] / peak for k, v in results.items()}
  # Sampling against the memory limit: tokens/s x bytes per step / batch, over bandwidth.
  of_bandwidth = {f"sample_tokens_per_s_batch{b}":
                  results[f"sample_tokens_per_s_batch{b}"]
                  * sampling_bytes_per_step(model, params, b) / b / bandwidth
                  for b in (1, 8)}
  report = {"benchmark": "lm_speed", "size": {"d_model": 512, "layers": 6, "heads": 8,
                                              "mlp_dim": MLP_DIM,
                                              "num_kv_heads": NUM_KV_HEADS,
                                              "vocab": VOCAB, "length": LENGTH,
                                              "batch": BATCH},
            "dtype": args.dtype, "machine": machine.describe_jax(), "results": results,
            "reference": reference, "ratio_vs_reference": ratios,
            "target_ratio": TARGET_RATIO,
            "ratio_vs_quoted_reference": {k: v / QUOTED_REFERENCE[k]
                                          for k, v in results.items()},
            "meets_target": {k: ratios[k] >= TARGET_RATIO[k] for k in ratios},
            "parameters": int(params), "model_flops_per_token": per_token,
            "matmul_peak_gflops": peak / 1e9, "fraction_of_matmul_peak": of_peak,
            "memory_bandwidth_gb_per_s": bandwidth / 1e9,
            "limits_before_and_after": [{"matmul_gflops": f / 1e9, "bandwidth_gb_per_s": b / 1e9}
                                        for f, b in limits],
            "sampling_fraction_of_bandwidth_limit": of_bandwidth,
            "attention_implementation_training": ATTENTION,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  out = machine.save_result(report, "lm_speed", args.out or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      f"lm_speed_{jax.default_backend()}_{args.dtype}.json"))
  for name, value in results.items():
    print(f"{name:30s} {value:10.1f}  ({ratios[name]:.2f}x reference, "
          f"target {TARGET_RATIO[name]:.0f}x; {of_peak[name]:.2f} of the matmul peak, "
          f"{peak / 1e9:.0f} GFLOP/s)")
  for name, value in of_bandwidth.items():
    print(f"{name:30s} {value:.2f} of the memory-bandwidth limit ({bandwidth / 1e9:.1f} GB/s)")
  print(f"-> {out}")


if __name__ == "__main__":
  main()
