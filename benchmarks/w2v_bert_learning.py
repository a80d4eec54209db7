r"""Does w2v-BERT learn? A wall-clock-budgeted training run that needs no TensorFlow.

  # on the accelerator (jax, flax, optax, gin-config, soundfile, soxr, safetensors only):
  python benchmarks/w2v_bert_learning.py train --audio_dir DIR --export_dir EXPORT \
      [--gin_file w2v_bert/small.gin] [--minutes 4] [--max_steps N] [--gin.NAME=VALUE ...]
  # the training audio it reads, prepared here (the GPU machine has no network):
  python benchmarks/w2v_bert_learning.py prepare --out .gpu/train_24k
  # back here: a standard training run (config.gin + Orbax checkpoint) for fit-kmeans and
  # benchmarks/semantic_quality.py
  python benchmarks/w2v_bert_learning.py import EXPORT --model_dir RUN

`train` runs the same model, optimizer, masking and losses as `musiclm_jax.train` with the
gin size file, on random crops (the size's W2V_BERT_CROP_SAMPLES, batch 16) drawn from the
audio files under --audio_dir, decoded once into memory: no SeqIO input pipeline, so it runs
where TensorFlow is not installed (a bare GPU image). It logs the learning curve (MLM
and contrastive accuracy against their chance levels, code perplexity) and exports the EMA
parameters in float16 safetensors shards (only what the tokenizer's layer needs: the MLM
layers above SEMANTIC_LAYER are left out, so the export fits the machine's return limit).
`import` turns an export (learning.json, which holds the run's config.gin, and the
shards) into a run directory that `musiclm-jax semantic fit-kmeans` and
`benchmarks/semantic_quality.py` read like any other; its optimizer state is a fresh one
(the export does not carry it), so it is for tokenizing, not for resuming training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import codec_quality  # noqa: E402  (its track loading and crop sampling, shared)

SHARD_BYTES = 15 * 2 ** 20
BATCH_SIZE = 16


def _load_tracks(audio_dir: str, sample_rate: int):
  """(paths loaded, {path: wave}); codec_quality's loaders, at w2v-BERT's rate."""
  tracks, skipped = codec_quality.load_tracks(codec_quality.audio_files_under(audio_dir),
                                              sample_rate)
  if skipped.total:  # e.g. wesnoth's silence.ogg: reported, not fatal
    print(skipped.summary(), flush=True)
  return list(tracks), tracks


def train(args) -> None:
  import gin
  import jax
  import machine
  from musiclm_jax import gin_config
  from musiclm_jax.training import partitioning, train_loop, trainer as trainer_lib
  import musiclm_jax.w2v_bert.model as model_lib  # registers the gin configurables too
  from musiclm_jax.training import optimizers  # noqa: F401  (gin configurables)

  gin.external_configurable(lambda model=gin.REQUIRED: model, "learning_run_model")
  gin_config.parse_gin_flags([args.gin_file], list(args.gin) + [
      "learning_run_model.model = %MODEL"], finalize=False)
  model = gin.get_configurable("learning_run_model")()
  config = model_lib.W2vBertConfig()
  crop = gin.query_parameter("%W2V_BERT_CROP_SAMPLES")
  layer = gin.query_parameter("%SEMANTIC_LAYER")

  paths, tracks = _load_tracks(args.audio_dir, config.sample_rate)
  sampler = codec_quality.CropSampler(tracks, crop)
  hours = sum(len(t) for t in tracks.values()) / config.sample_rate / 3600
  print(f"{len(paths)} tracks, {hours:.2f} h at {config.sample_rate} Hz; crops of {crop}",
        flush=True)

  partitioner = partitioning.Partitioner()
  trainer = trainer_lib.Trainer(model=model, partitioner=partitioner, ema_decay=0.999, seed=0)
  shapes, types = {"audio": (BATCH_SIZE, crop)}, {"audio": np.float32}
  state = trainer.create_state(shapes, types)
  params = sum(x.size for x in jax.tree.leaves(state.params))

  os.makedirs(args.export_dir, exist_ok=True)
  report = {"benchmark": "w2v_bert_learning", "gin_file": args.gin_file,
            "gin_bindings": list(args.gin), "parameters": int(params),
            "train_tracks": len(paths), "train_hours": hours, "batch": BATCH_SIZE,
            "crop_samples": crop, "semantic_layer": layer, "curve": [],
            "machine": machine.describe_jax(),
            "config_gin": gin.config_str()}  # the run's config, for `import`

  def write_report(**values):  # at every log step too: a killed run keeps its curve
    report.update(values, date=time.strftime("%Y-%m-%d %H:%M:%S"))
    with open(os.path.join(args.export_dir, "learning.json"), "w", encoding="utf-8") as f:
      json.dump(report, f, indent=1)

  def on_step(step, scalars):
    if step % args.log_every == 0:
      row = {"step": step, "seconds": round(time.perf_counter() - loop_start, 1),
             **{k: round(v, 4) for k, v in scalars.items()}}
      report["curve"].append(row)
      write_report(steps=step)
      print(json.dumps(row), flush=True)

  # The library's train loop, batches from memory, no checkpoints; the budget counts from
  # the end of the first (compiling) step.
  batches = train_loop.BatchFactory(lambda rng: {"audio": sampler(BATCH_SIZE, rng)}, seed=0)
  loop_start = time.perf_counter()
  try:
    result = train_loop.run(trainer, state, 0, batches, args.max_steps,
                            max_seconds=args.minutes * 60, on_step=on_step)
  except train_loop.NonFiniteLossError as e:
    write_report(stopped=str(e))
    raise SystemExit(f"{e}: stopping, nothing exported")
  step, state = result.step, result.state
  report["first_step_seconds"] = result.first_step_seconds
  train_s = result.seconds - result.first_step_seconds
  _export_params(jax.device_get(state.ema_params), jax.device_get(state.flax_mutables),
                 layer, args.export_dir)
  write_report(steps=step, train_seconds=train_s, steps_per_second=step / train_s,
               exported=True)
  print(f"{step} steps in {train_s:.0f} s ({step / train_s:.2f}/s) -> {args.export_dir}")


def _export_params(params, mutables, layer: int, export_dir: str) -> None:
  """float16 safetensors shards of the params (without MLM layers > `layer`) and the
  mutable collections, each shard under SHARD_BYTES."""
  from flax.traverse_util import flatten_dict
  from safetensors.numpy import save_file
  flat = {f"params/{k}": v for k, v in flatten_dict(params, sep="/").items()
          if not any(k.startswith(f"mlm_module/layers_{i}/") for i in range(layer, 64))}
  flat.update({f"mutables/{k}": v for k, v in flatten_dict(mutables, sep="/").items()})
  shards, current, size = [], {}, 0
  for name in sorted(flat):
    value = np.asarray(flat[name])
    value = value.astype(np.float16) if value.dtype == np.float32 else value
    if current and size + value.nbytes > SHARD_BYTES:
      shards.append(current)
      current, size = {}, 0
    current[name], size = value, size + value.nbytes
  shards.append(current)
  for i, shard in enumerate(shards):
    save_file(shard, os.path.join(export_dir, f"params-{i:02d}.safetensors"))


def prepare(args) -> None:
  """The wesnoth-1.16-music training tracks (codec_quality's split: its held-out tracks stay
  out) as mono Ogg Vorbis at --sample_rate: 115 minutes in about 40 MB at 24 kHz, small
  enough to travel, for the codec (24 kHz) and w2v-BERT (resampled to 16 kHz on loading).
  Vorbis at this quality keeps the band up to 12 kHz (8% RMS error on battle-epic.ogg)."""
  import soundfile as sf
  from musiclm_jax.audio import debian_music, io as audio_io
  train_files, _ = codec_quality.split_tracks(
      debian_music.audio_files(debian_music.fetch("wesnoth-1.16-music")))
  os.makedirs(args.out, exist_ok=True)
  for path in train_files:
    try:
      wave = audio_io.load_audio(path, args.sample_rate)
    except audio_io.AudioError as e:
      print(f"skipped: {e}")
      continue
    target = os.path.join(args.out, os.path.basename(path))
    # Written a second at a time: libsndfile's Vorbis encoder crashes on one large write.
    with sf.SoundFile(target, "w", args.sample_rate, 1, format="OGG", subtype="VORBIS",
                      compression_level=0.6) as f:
      for start in range(0, len(wave), args.sample_rate):
        f.write(wave[start:start + args.sample_rate])
  print(f"{len(os.listdir(args.out))} files -> {args.out}")


def import_export(args) -> None:
  """EXPORT -> MODEL_DIR with config.gin and a checkpoint at the export's step."""
  from flax.traverse_util import unflatten_dict
  from safetensors.numpy import load_file
  from musiclm_jax.training import checkpoints
  with open(os.path.join(args.export, "learning.json"), encoding="utf-8") as f:
    report = json.load(f)
  if not report.get("exported"):
    raise ValueError(f"{args.export}: the run stopped before exporting its parameters")
  flat = {}
  for name in sorted(os.listdir(args.export)):
    if name.endswith(".safetensors"):
      flat.update(load_file(os.path.join(args.export, name)))
  tree = unflatten_dict({k: v.astype(np.float32) if v.dtype == np.float16 else v
                        for k, v in flat.items()}, sep="/")
  params = tree["params"]
  os.makedirs(args.model_dir, exist_ok=True)
  with open(os.path.join(args.model_dir, "config.gin"), "w", encoding="utf-8") as f:
    f.write(report["config_gin"])
  step = report["steps"]
  state = {"step": np.int32(step), "params": params, "ema_params": params,
           "flax_mutables": tree.get("mutables", {})}
  manager = checkpoints.CheckpointManager(args.model_dir, async_save=False)
  manager.save(step, state, {}, force=True)
  manager.close()
  print(f"step {step}: {sum(v.size for v in flat.values())} values -> {args.model_dir}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  run = sub.add_parser("train")
  run.add_argument("--audio_dir", required=True)
  run.add_argument("--export_dir", required=True)
  run.add_argument("--gin_file", default="w2v_bert/small.gin")
  run.add_argument("--minutes", type=float, default=4.0, help="training time after compile")
  run.add_argument("--max_steps", type=int, default=10 ** 9)
  run.add_argument("--log_every", type=int, default=100)
  prep = sub.add_parser("prepare")
  prep.add_argument("--out", required=True)
  prep.add_argument("--sample_rate", type=int, default=24000)
  imp = sub.add_parser("import")
  imp.add_argument("export")
  imp.add_argument("--model_dir", required=True)
  args, unknown = parser.parse_known_args()
  if args.command == "train":
    # --gin.NAME=VALUE as in musiclm_jax.train
    args.gin = [u[len("--gin."):] .replace("=", " = ", 1) for u in unknown
                if u.startswith("--gin.")]
    if len(args.gin) != len(unknown):
      parser.error(f"unrecognized arguments: {unknown}")
    train(args)
  else:
    if unknown:
      parser.error(f"unrecognized arguments: {unknown}")
    prepare(args) if args.command == "prepare" else import_export(args)


if __name__ == "__main__":
  main()
