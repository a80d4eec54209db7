r"""Input pipeline speed: seconds of 24 kHz audio delivered per second of wall time.

Builds audio_folder/24khz (10 s clips) from a Debian music package into a temporary data
dir (timing the build too), then times batches of 1 s crops through
`training.data.get_dataset` with `AudioFeatureConverter`: the path a SoundStream run reads.
Each setting runs for --seconds after a warm-up (the first batches, which include opening
files and filling the shuffle buffer, are timed separately as time to first batch).

  python benchmarks/input_pipeline_speed.py [--package wesnoth-1.16-music] [--batch 32]
      [--seconds 15] [--out FILE]

Settings: crops_per_clip 1 and 4; the split cached in memory by seqio (what a dataset of
this size gets by default) or read from the TFRecords every epoch (what a dataset larger
than `max_in_memory_cache_bytes` gets). Writes
benchmarks/results/input_pipeline_speed_cpu.json with the machine description.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # noqa: E402

from musiclm_jax.audio import debian_music  # noqa: E402
from musiclm_jax.tasks import audio as audio_tasks  # noqa: E402
from musiclm_jax.training import data as data_lib  # noqa: E402

RATE, CROP = 24000, 24000  # 1 s crops at 24 kHz
SETTINGS = (  # (name, crops_per_clip, cache the split in memory)
    ("crops_per_clip=1, in-memory cache", 1, True),
    ("crops_per_clip=1, from disk", 1, False),
    ("crops_per_clip=4, from disk", 4, False),
)


def build(package: str, data_dir: str) -> dict:
  root = debian_music.fetch(package)
  start = time.perf_counter()
  builder = audio_tasks.build_audio_folder(root, data_dir, "24khz")
  wall = time.perf_counter() - start
  report = builder.info.metadata["build_report"]
  seconds = sum(report["seconds"].values())
  return {"package": package, "wall_s": wall, "audio_s": seconds,
          "audio_s_per_s": seconds / wall, "files_found": report["files_found"],
          "files_used": report["files_used"], "files_skipped": report["files_skipped"],
          "files_skipped_examples": report["files_skipped_examples"],
          "clips": report["clips"], "clips_dropped": report["clips_dropped"],
          "bytes": sum(s.num_bytes for s in builder.info.splits.values())}


def time_setting(data_dir: str, name: str, crops_per_clip: int, cache: bool, batch: int,
                 seconds: float) -> dict:
  task = audio_tasks.register_audio_crop_task(
      f"bench_crops_{crops_per_clip}_{int(cache)}", "audio_folder/24khz:1.0.0", data_dir,
      RATE, CROP, crops_per_clip=crops_per_clip,
      max_in_memory_cache_bytes=(1 << 40) if cache else 0)
  config = data_lib.DatasetConfig(
      mixture_or_task_name=task, task_feature_lengths={"audio": CROP}, split="train",
      batch_size=batch, shuffle=True, seed=0, num_epochs=None)
  start = time.perf_counter()
  ds = data_lib.get_dataset(config, audio_tasks.AudioFeatureConverter(), 0, 1)
  iterator = iter(ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator())
  first = next(iterator)
  assert first["audio"].shape == (batch, CROP), first["audio"].shape
  first_batch_s = time.perf_counter() - start
  for _ in range(5):  # warm-up
    next(iterator)
  batches, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(iterator)
    batches += 1
  wall = time.perf_counter() - start
  audio_s = batches * batch * CROP / RATE
  return {"setting": name, "crops_per_clip": crops_per_clip, "in_memory_cache": cache,
          "batches": batches, "wall_s": wall, "first_batch_s": first_batch_s,
          "audio_s_per_s": audio_s / wall, "batches_per_s": batches / wall}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--package", default="wesnoth-1.16-music")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seconds", type=float, default=15.0)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()

  with tempfile.TemporaryDirectory(prefix="input_pipeline_speed_") as data_dir:
    built = build(args.package, data_dir)
    print(f"build: {built['audio_s']:.0f} s of audio in {built['wall_s']:.1f} s "
          f"({built['audio_s_per_s']:.0f}x real time)", flush=True)
    results = []
    for name, crops_per_clip, cache in SETTINGS:
      results.append(time_setting(data_dir, name, crops_per_clip, cache, args.batch,
                                  args.seconds))
      r = results[-1]
      print(f"{name}: {r['audio_s_per_s']:.0f} s of audio per s ({r['batches_per_s']:.1f} "
            f"batches of {args.batch} x 1 s per s; first batch after "
            f"{r['first_batch_s']:.1f} s)", flush=True)

  report = {"benchmark": "input_pipeline_speed", "machine": machine.describe(tensorflow=tf.__version__,
                                                      tensorflow_datasets=tfds.__version__),
            "dataset": f"audio_folder/24khz from Debian {args.package}",
            "crop": {"sample_rate": RATE, "samples": CROP}, "batch": args.batch,
            "build": built, "read": results,
            "note": "CPU shared with other work; wall-clock numbers, one run each"}
  out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                 "input_pipeline_speed_cpu.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
