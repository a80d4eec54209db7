r"""Per-device memory of the paper-size parts under three mesh layouts, on simulated CPU
devices (nothing is run or allocated: shapes, shardings and XLA's compile-time analysis).

  python benchmarks/memory_layouts.py [--devices 8 64] [--compile_devices 8] [--out FILE]

Parts: the semantic, coarse and fine stages (gin/stages/paper/), SoundStream, w2v-BERT and
MuLan (their paper.gin), each with AdamW and a parameter EMA, as `Trainer` builds them.
Layouts over N devices: replicated (data=N), fsdp (fsdp=N), fsdp+model (fsdp=N/2 x
model=2). Per layout: the bytes one device holds of the parameters, the optimizer state
and the EMA, from each array's sharding (`sharding.shard_shape`).

On --compile_devices, the coarse stage's train step (batch 16 x 2048 targets, the gin's
bfloat16, scanned layers) is also compiled under fsdp for each attention implementation
('einsum', 'xla': `jax.nn.dot_product_attention`), remat policy and loss, and XLA's
`memory_analysis()` gives its per-device temporaries; the compiled program is searched
for an f32 [.., L, L] buffer (L = prefix + targets = 2262). Each device count runs in its
own process (XLA_FLAGS=--xla_force_host_platform_device_count=N).
Writes benchmarks/results/memory_layouts_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

# part -> (gin files, extra bindings); the input shapes come from `input_shapes`.
PARTS = {
    "semantic stage": (["stages/paper/semantic.gin"], []),
    "coarse stage": (["stages/paper/coarse.gin"], []),
    "fine stage": (["stages/paper/fine.gin"], []),
    "soundstream": (["soundstream/paper.gin"], []),
    "w2v_bert": (["w2v_bert/paper.gin"], []),
    # The text tower's shapes without reading its pretrained weights.
    "mulan": (["mulan/paper.gin"], ["MuLanConfig.text_pretrained = False"]),
}
STAGES = ("semantic stage", "coarse stage", "fine stage")
# The compiled coarse-stage variants: (name, gin bindings).
VARIANTS = [
    ("einsum attention, remat dots_no_batch", []),
    ("xla attention, remat dots_no_batch",
     ["DecoderConfig.attention_implementation = 'xla'",
      "DecoderConfig.attention_dropout_rate = 0.0"]),
    ("xla attention, remat dots_no_batch, chunked loss 512",
     ["DecoderConfig.attention_implementation = 'xla'",
      "DecoderConfig.attention_dropout_rate = 0.0",
      "DecoderOnlyLMModel.loss_chunk_length = 512"]),
    ("xla attention, remat full, chunked loss 512",
     ["DecoderConfig.attention_implementation = 'xla'",
      "DecoderConfig.attention_dropout_rate = 0.0", "DecoderConfig.remat_policy = 'full'",
      "DecoderOnlyLMModel.loss_chunk_length = 512"]),
    ("xla attention, remat dots, chunked loss 512",
     ["DecoderConfig.attention_implementation = 'xla'",
      "DecoderConfig.attention_dropout_rate = 0.0", "DecoderConfig.remat_policy = 'dots'",
      "DecoderOnlyLMModel.loss_chunk_length = 512"]),
]


def layouts(devices: int) -> dict:
  return {"replicated": dict(data_parallel=devices),
          "fsdp": dict(fsdp_parallel=devices),
          "fsdp+model": dict(fsdp_parallel=devices // 2, num_partitions=2)}


def _model(part: str, bindings=()):
  import gin
  import random_parts
  files, extra = PARTS[part]
  try:
    gin.get_configurable("memory_layouts_model")
  except ValueError:
    gin.external_configurable(lambda model=gin.REQUIRED: model, "memory_layouts_model")
  return random_parts.gin_config(files, gin.get_configurable("memory_layouts_model"),
                                 ["memory_layouts_model.model = %MODEL", *extra,
                                  *bindings]), _gin_lengths(files, extra)


def _gin_lengths(files, extra):
  import gin
  import random_parts
  return random_parts.gin_config(files, lambda: gin.query_parameter(
      "%TASK_FEATURE_LENGTHS"), extra) if files[0].startswith("stages/") else None


def input_shapes(part: str, model, lengths, batch: int) -> dict:
  """The train batch's arrays as ShapeDtypeStructs."""
  import jax
  import numpy as np
  shape = lambda dims, dtype: jax.ShapeDtypeStruct(dims, dtype)
  if part in STAGES:
    targets = lengths["targets"]
    return {"prefix_tokens": shape((batch, lengths["prefix_tokens"]), np.int32),
            "decoder_input_tokens": shape((batch, targets), np.int32),
            "decoder_target_tokens": shape((batch, targets), np.int32),
            "decoder_loss_weights": shape((batch, targets), np.float32)}
  config = model.module.config
  if part == "mulan":
    return {"audio": shape((batch, config.window_samples), np.float32),
            "text_tokens": shape((batch, config.text_max_length), np.int32)}
  seconds = 2.0 if part == "soundstream" else 10.0   # their training crops (runs/*.gin)
  return {"audio": shape((batch, int(seconds * config.sample_rate)), np.float32)}


def _bytes_on_device0(tree) -> int:
  import jax
  import numpy as np
  return int(sum(np.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                 for x in jax.tree.leaves(tree)))


def state_bytes(part: str, devices: int) -> dict:
  """{layout: {params, optimizer, ema, total (bytes on one device)}} for one part."""
  from musiclm_jax.training import partitioning, trainer as trainer_lib
  model, lengths = _model(part)
  shapes = {k: v.shape for k, v in input_shapes(part, model, lengths, devices).items()}
  out = {}
  for name, kw in layouts(devices).items():
    trainer = trainer_lib.Trainer(model, partitioning.Partitioner(**kw), ema_decay=0.999)
    abstract, _ = trainer.abstract_state(shapes)
    parts = {"params": _bytes_on_device0(abstract.params),
             "optimizer": _bytes_on_device0(abstract.opt_states),
             "ema": _bytes_on_device0(abstract.ema_params)}
    out[name] = {**parts, "total": sum(parts.values())}
  return out


def compiled_coarse(devices: int, batch: int = 16) -> list:
  """Per-device memory of the coarse stage's compiled train step under fsdp, per variant."""
  from musiclm_jax.training import partitioning, trainer as trainer_lib
  rows = []
  for name, bindings in VARIANTS:
    model, lengths = _model("coarse stage", bindings)
    lengths = dict(lengths, targets=2048)   # batch 16 x 2048 targets
    batch_shapes = input_shapes("coarse stage", model, lengths, batch)
    partitioner = partitioning.Partitioner(fsdp_parallel=devices)
    trainer = trainer_lib.Trainer(model, partitioner, ema_decay=0.999)
    abstract, _ = trainer.abstract_state({k: v.shape for k, v in batch_shapes.items()})
    compiled = trainer.lower_train_step(abstract, batch_shapes).compile()
    memory = compiled.memory_analysis()
    length = lengths["prefix_tokens"] + lengths["targets"]
    square = re.compile(rf"f32\[[0-9,]*{length},{length}\]")
    text = compiled.as_text()
    rows.append({"variant": name, "devices": devices, "batch": batch, "length": length,
                 "temp_bytes": int(memory.temp_size_in_bytes),
                 "argument_bytes": int(memory.argument_size_in_bytes),
                 "output_bytes": int(memory.output_size_in_bytes),
                 "f32_LxL_buffers": len(set(square.findall(text)))})
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  return rows


def child(devices: int, compile_coarse: bool) -> None:
  import jax
  assert jax.device_count() == devices, jax.devices()
  result = {"devices": devices, "parts": {}}
  for part in PARTS:
    result["parts"][part] = state_bytes(part, devices)
    print(f"{devices} devices, {part}: " + ", ".join(
        f"{k} {v['total'] / 2**20:.0f} MiB" for k, v in result["parts"][part].items()),
          file=sys.stderr, flush=True)
  if compile_coarse:
    result["coarse_stage_compiled"] = compiled_coarse(devices)
  print(json.dumps(result))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, nargs="+", default=[8, 64])
  parser.add_argument("--compile_devices", type=int, nargs="*", default=[8])
  parser.add_argument("--out", default=None)
  parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child, args.compile)
    return
  import machine
  runs = []
  for devices in args.devices:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    command = [sys.executable, __file__, "--child", str(devices)]
    if devices in args.compile_devices:
      command.append("--compile")
    run = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, cwd=REPO,
                         text=True)
    runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
  summary = {}
  for run in runs:
    for part, by_layout in run["parts"].items():
      summary[f"{part}, {run['devices']} devices"] = {
          "replicated_MiB": round(by_layout["replicated"]["total"] / 2**20, 1),
          "fsdp_MiB": round(by_layout["fsdp"]["total"] / 2**20, 1),
          "fsdp_model_MiB": round(by_layout["fsdp+model"]["total"] / 2**20, 1),
          "fsdp_reduction": round(by_layout["replicated"]["total"]
                                  / by_layout["fsdp"]["total"], 2)}
  at8 = [v["fsdp_reduction"] for k, v in summary.items() if k.endswith(", 8 devices")]
  report = {"benchmark": "memory_layouts", "machine": machine.describe(),
            "runs": runs, "state_per_device": summary,
            "target_fsdp8_reduction": 6.0,
            "meets_target": bool(at8) and min(at8) >= 6.0}
  for key, value in summary.items():
    print(f"{key:32s} {value}")
  print(f"-> {machine.save_result(report, 'memory_layouts', args.out)}")


if __name__ == "__main__":
  main()
