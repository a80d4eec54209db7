r"""Per-device memory of the paper-size parts under three mesh layouts, on simulated CPU
devices (nothing is run or allocated: shapes, shardings and XLA's compile-time analysis).

  python benchmarks/memory_layouts.py [--devices 8 64] [--compile_devices 8] [--out FILE]

Parts: the semantic, coarse and fine stages (gin/stages/paper/), SoundStream, w2v-BERT and
MuLan (their paper.gin), each with AdamW and a parameter EMA, as `Trainer` builds them.
Layouts over N devices: replicated (data=N), fsdp (fsdp=N), fsdp+model (fsdp=N/2 x
model=2). Per layout: the bytes one device holds of the parameters, the optimizer state
and the EMA, from each array's sharding (`sharding.shard_shape`).

On --compile_devices, the coarse stage's train step (batch x 2048 targets, the gin's
bfloat16, scanned layers) is also compiled under fsdp for each attention implementation
('einsum', 'xla': `jax.nn.dot_product_attention`), remat policy, loss and batch, and XLA's
`memory_analysis()` gives its per-device temporaries; the compiled program is searched
for an f32 [.., L, L] buffer (L = prefix + targets = 2310). The fused kernels compile only
on their chips, so the step with the Pallas kernel is lowered for TPU instead (StableHLO,
what XLA:TPU would be given) and searched for [.., L, L] tensors of any type, beside the
einsum step lowered the same way as the search's control. cuDNN's kernel cannot be traced
without a GPU (JAX checks the cuDNN version at trace time). Each device count runs in
its own process (XLA_FLAGS=--xla_force_host_platform_device_count=N).
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
# The compiled coarse-stage variants: (attention, remat policy, loss chunk, batch).
# Attention 'xla' is jax.nn.dot_product_attention; fused attention has no dropout.
VARIANTS = [
    ("einsum", "dots_no_batch", None, 16),
    ("xla", "dots_no_batch", None, 16),
    *[("xla", remat, 512, 16) for remat in ("dots_no_batch", "full", "dots",
                                             "save_qkv_proj", "save_dot_except_mlp")],
    *[("xla", remat, 512, batch) for remat in ("full", "dots_no_batch")
      for batch in (8, 32)],
]
# Lowered for TPU (not compiled: no TPU here) to read the program XLA:TPU would get: the
# einsum path (whose f32 [L, L] scores the search must find) against the Pallas kernel.
TPU_VARIANTS = [("einsum", "dots_no_batch", 512, 16), ("pallas", "dots_no_batch", 512, 16)]


def variant_bindings(attention: str, remat: str, loss_chunk) -> list:
  bindings = [f"DecoderConfig.attention_implementation = '{attention}'",
              f"DecoderConfig.remat_policy = '{remat}'"]
  if attention != "einsum":
    bindings.append("DecoderConfig.attention_dropout_rate = 0.0")
  if loss_chunk:
    bindings.append(f"DecoderOnlyLMModel.loss_chunk_length = {loss_chunk}")
  return bindings


def variant_name(attention: str, remat: str, loss_chunk, batch: int) -> str:
  chunk = f", chunked loss {loss_chunk}" if loss_chunk else ""
  return f"{attention} attention, remat {remat}{chunk}, batch {batch}"


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


def _coarse_step(devices: int, attention: str, remat: str, loss_chunk, batch: int,
                 platforms=None):
  """The coarse stage's train step at batch x 2048 targets under fsdp, lowered."""
  from musiclm_jax.training import partitioning, trainer as trainer_lib
  model, lengths = _model("coarse stage", variant_bindings(attention, remat, loss_chunk))
  lengths = dict(lengths, targets=2048)
  batch_shapes = input_shapes("coarse stage", model, lengths, batch)
  trainer = trainer_lib.Trainer(model, partitioning.Partitioner(fsdp_parallel=devices),
                                ema_decay=0.999)
  abstract, _ = trainer.abstract_state({k: v.shape for k, v in batch_shapes.items()})
  length = lengths["prefix_tokens"] + lengths["targets"]
  return trainer.lower_train_step(abstract, batch_shapes, platforms=platforms), length


def compiled_coarse(devices: int) -> list:
  """Per-device memory of the coarse stage's compiled train step under fsdp, per variant:
  XLA's `memory_analysis()` and the f32 [.., L, L] buffers in the compiled program."""
  rows = []
  for attention, remat, loss_chunk, batch in VARIANTS:
    lowered, length = _coarse_step(devices, attention, remat, loss_chunk, batch)
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    square = re.compile(rf"f32\[[0-9,]*{length},{length}\]")
    rows.append({"variant": variant_name(attention, remat, loss_chunk, batch),
                 "attention": attention, "remat": remat, "loss_chunk": loss_chunk,
                 "devices": devices, "batch": batch, "length": length,
                 "temp_bytes": int(memory.temp_size_in_bytes),
                 "argument_bytes": int(memory.argument_size_in_bytes),
                 "output_bytes": int(memory.output_size_in_bytes),
                 "f32_LxL_buffers": len(set(square.findall(compiled.as_text())))})
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  return rows


def lowered_for_tpu(devices: int) -> list:
  """The coarse step lowered for TPU: the distinct [.., L, L] tensor types (L the length,
  or the Pallas kernel's padded length) in its StableHLO, by element type."""
  from jax.experimental.pallas import tpu as pltpu
  from musiclm_jax.layers import attention as attention_lib
  rows = []
  for attention, remat, loss_chunk, batch in TPU_VARIANTS:
    # The real kernel, not the interpreter attention.py selects on a CPU host.
    with pltpu.force_tpu_interpret_mode(None):
      lowered, length = _coarse_step(devices, attention, remat, loss_chunk, batch,
                                     platforms=("tpu",))
      text = lowered.as_text()
    padded = -(-length // attention_lib.PALLAS_BLOCK) * attention_lib.PALLAS_BLOCK
    square = set()
    for dims, dtype in re.findall(r"tensor<((?:[0-9]+x)+)([a-z]+[0-9]*)>", text):
      dims = [int(d) for d in dims.rstrip("x").split("x")]
      if sum(d in (length, padded) for d in dims) >= 2:
        square.add((tuple("L" if d in (length, padded) else str(d) for d in dims), dtype))
    # Scores carry the batch (whole or per device) first; the shared T5 bias does not.
    batched = lambda dims: len(dims) >= 4 and dims[0] in (str(batch), str(batch // devices))
    rows.append({"variant": variant_name(attention, remat, loss_chunk, batch),
                 "attention": attention, "remat": remat, "loss_chunk": loss_chunk,
                 "devices": devices, "batch": batch, "length": length,
                 "lowered_for": "tpu",
                 "tpu_custom_calls": text.count("@tpu_custom_call"),
                 "LxL_tensors": sorted(f"{dtype}[{','.join(dims)}]" for dims, dtype in square),
                 "f32_LxL_tensors": sum(dtype == "f32" for _, dtype in square),
                 "f32_LxL_tensors_with_batch": sum(dtype == "f32" and batched(dims)
                                                   for dims, dtype in square)})
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
    result["coarse_stage_lowered_for_tpu"] = lowered_for_tpu(devices)
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
