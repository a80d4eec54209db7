r"""Dataset build throughput: audio hours per wall-hour and per core-hour, one process vs
Apache Beam's DirectRunner with 1 and 2 worker processes.

  python benchmarks/build_speed.py [--config 16khz] [--out FILE]

Each engine builds `audio_folder/<config>` from the wesnoth music (Debian's
wesnoth-1.16-music: 41 OGG tracks, 2.1 h) into a fresh data_dir with `musiclm-jax
build-data`, in its own process. Work per build: decode, resample, check, cut into clips,
serialise, shuffle and write the TFRecords. Core-hours are the processes' CPU time (the
build and every worker: user + system). The builds must give the same examples (their
ids and audio checksums are compared). Writes benchmarks/results/build_speed_cpu.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

ENGINES = {
    "one process (thread pool)": None,
    "Beam DirectRunner, 1 worker": ("runner=DirectRunner,direct_num_workers=1,"
                                    "direct_running_mode=multi_processing"),
    "Beam DirectRunner, 2 workers": ("runner=DirectRunner,direct_num_workers=2,"
                                     "direct_running_mode=multi_processing"),
}


def _children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _fingerprint(data_dir: str, name: str) -> tuple[int, str]:
  """(examples, sha256 over the sorted (id, audio bytes)) of every split."""
  import tensorflow_datasets as tfds
  digest, count = hashlib.sha256(), 0
  builder = tfds.builder(name, data_dir=data_dir)
  rows = []
  for split in sorted(builder.info.splits):
    for ex in tfds.load(name, data_dir=data_dir, split=split).as_numpy_iterator():
      rows.append((split, ex["id"], hashlib.sha256(ex["audio"].tobytes()).hexdigest()))
  for row in sorted(rows):
    digest.update(repr(row).encode())
    count += 1
  return count, digest.hexdigest()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="16khz")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  import machine
  import tensorflow_datasets as tfds
  from musiclm_jax.audio import debian_music
  music = os.path.join(debian_music.fetch("wesnoth-1.16-music"), "usr/share/games/wesnoth")
  name = f"audio_folder/{args.config}"
  runs, fingerprints = [], set()
  for engine, options in ENGINES.items():
    data_dir = tempfile.mkdtemp(prefix="build_speed-")
    command = [sys.executable, "-m", "musiclm_jax.cli", "build-data", "audio_folder",
               f"--manual_dir={music}", f"--data_dir={data_dir}", f"--config={args.config}"]
    if options:
      command.append(f"--beam_pipeline_options={options}")
    cpu_before, start = _children_cpu_seconds(), time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    wall, cpu = time.time() - start, _children_cpu_seconds() - cpu_before
    report = tfds.builder(name, data_dir=data_dir).info.metadata["build_report"]
    hours = sum(report["seconds"].values()) / 3600
    count, digest = _fingerprint(data_dir, name)
    fingerprints.add(digest)
    shutil.rmtree(data_dir)
    runs.append({"engine": engine, "beam_pipeline_options": options,
                 "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                 "examples": count, "audio_hours": round(hours, 4),
                 "audio_hours_per_wall_hour": round(hours / (wall / 3600), 1),
                 "audio_hours_per_core_hour": round(hours / (cpu / 3600), 1)})
    print(f"{engine:30s} {count} clips, {hours:.2f} h of audio in {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU: {runs[-1]['audio_hours_per_wall_hour']} h/h wall, "
          f"{runs[-1]['audio_hours_per_core_hour']} h per core-hour")
  by_engine = {r["engine"]: r for r in runs}
  speedup = (by_engine["Beam DirectRunner, 2 workers"]["audio_hours_per_wall_hour"]
             / by_engine["Beam DirectRunner, 1 worker"]["audio_hours_per_wall_hour"])
  result = {"benchmark": "build_speed", "machine": machine.describe_jax(),
            "dataset": name, "source": "wesnoth-1.16-music (Debian), 41 OGG tracks",
            "runs": runs, "same_examples": len(fingerprints) == 1,
            "beam_2_vs_1_workers": round(speedup, 2), "target_beam_2_vs_1_workers": 1.7,
            "meets_target": speedup >= 1.7 and len(fingerprints) == 1}
  print(f"Beam 2 workers / 1 worker: {speedup:.2f}x (target 1.7x); same examples: "
        f"{result['same_examples']}")
  print(f"-> {machine.save_result(result, 'build_speed', args.out)}")


if __name__ == "__main__":
  main()
