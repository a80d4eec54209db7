r"""Training throughput and model FLOPs utilisation (MFU) of a stage LM at `paper` size.

  python benchmarks/lm_mfu.py [--gin_file lm/paper.gin] [--batch 16] [--length 2048]
      [--steps 10] [--peak_tflops N] [--gin BINDING ...] [--out FILE]
  # fused (cuDNN flash) attention, which has no dropout on the probabilities:
  python benchmarks/lm_mfu.py --gin "DecoderConfig.attention_implementation = 'cudnn'" \
      --gin "DecoderConfig.attention_dropout_rate = 0.0"

One train step (forward, backward, AdamW update; the gin size's bfloat16 compute, scanned
layers and 'dots' rematerialisation) of the coarse stage's target vocabulary (4 x 1024
acoustic codes), unconditioned, on random tokens. Model FLOPs per token are PaLM's count
(arXiv 2204.02311, appendix B): 6 N (N: parameters outside the embedding tables, plus the
logit projection) + 12 L H Q T (attention scores and values, L layers, H heads, Q head
size, T context); the step's compiled FLOPs (XLA's count, rematerialisation included) are
reported beside them (on GPU that count leaves out the cuBLAS and cuDNN library calls,
i.e. most matmuls: read it on CPU only). MFU = model FLOP/s over the chip's dense bfloat16 peak (datasheet:
989 TFLOP/s for H100/H200 SXM; --peak_tflops for others).
Writes benchmarks/results/lm_mfu_<backend>.json with the machine description.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # noqa: E402

DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
COARSE_VOCAB = 4 * 1024


def _peak_tflops(requested):
  if requested:
    return requested
  kind = jax.devices()[0].device_kind
  return next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in kind), None)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gin_file", default="lm/paper.gin")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--length", type=int, default=2048)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--peak_tflops", type=float, default=None)
  parser.add_argument("--gin", action="append", default=[], help="extra gin binding")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  import gin
  from musiclm_jax import gin_config
  import musiclm_jax.lm  # noqa: F401  (gin configurables)
  from musiclm_jax.training import optimizers, partitioning, trainer as trainer_lib  # noqa
  gin.external_configurable(lambda model=gin.REQUIRED: model, "mfu_model")
  gin_config.parse_gin_flags([args.gin_file], [
      f"TARGET_VOCAB_SIZE = {COARSE_VOCAB}", "PREFIX_VOCAB_SIZE = 0",
      "mfu_model.model = %MODEL"] + args.gin, finalize=False)
  model = gin.get_configurable("mfu_model")()
  config = model.module.config

  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner)
  rng = np.random.default_rng(0)
  targets = rng.integers(0, COARSE_VOCAB, (args.batch, args.length)).astype(np.int32)
  batch = {"decoder_target_tokens": targets,
           "decoder_input_tokens": np.concatenate(
               [np.full((args.batch, 1), COARSE_VOCAB, np.int32), targets[:, :-1]], axis=1),
           "decoder_loss_weights": np.ones((args.batch, args.length), np.float32)}
  state = trainer.create_state({k: v.shape for k, v in batch.items()})
  batch = partitioner.shard_batch(batch)
  start = time.perf_counter()
  state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - start
  state, metrics = trainer.train_step(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = trainer.train_step(state, batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - start) / args.steps

  params = sum(x.size for x in jax.tree.leaves(state.params))
  tokens = args.batch * args.length
  attention = 12 * config.num_layers * config.num_heads * config.head_dim * args.length
  # N whole: the logit projection is FLOPs and the embedding lookup nearly none, but the
  # tables are small beside 24 layers (PaLM counts tied tables in N too).
  model_flops = (6 * params + attention) * tokens
  step_fn = next(iter(trainer._compiled.values()))  # pylint: disable=protected-access
  cost = step_fn.lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost["flops"]) if cost and "flops" in cost else None
  peak = _peak_tflops(args.peak_tflops)
  results = {"step_seconds": step_s, "tokens_per_second": tokens / step_s,
             "model_tflops_per_step": model_flops / 1e12,
             "model_tflop_per_s": model_flops / step_s / 1e12,
             "xla_tflops_per_step": None if xla_flops is None else xla_flops / 1e12,
             "mfu": None if peak is None else model_flops / step_s / 1e12 / peak,
             "first_step_seconds": first_step_s}
  report = {"benchmark": "lm_mfu", "gin_file": args.gin_file, "gin_bindings": args.gin,
            "attention_implementation": config.attention_implementation,
            "parameters": int(params),
            "batch": args.batch,
            "length": args.length, "dtype": config.dtype, "scan_layers": config.scan_layers,
            "remat_policy": config.remat_policy, "peak_bf16_tflops": peak,
            "machine": machine.describe_jax(), "results": results,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  out = machine.save_result(report, "lm_mfu", args.out)
  for name, value in results.items():
    print(f"{name:24s} {value}")
  print(f"-> {out}")


if __name__ == "__main__":
  main()
