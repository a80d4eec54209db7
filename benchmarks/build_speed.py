r"""Dataset build throughput: audio hours per wall-hour and per core-hour, one process vs
Apache Beam's DirectRunner with 1 and 2 worker processes.

  python benchmarks/build_speed.py [--config 16khz] [--out FILE]

Each engine builds `audio_folder/<config>` from the wesnoth music (Debian's
wesnoth-1.16-music: 41 OGG tracks, 2.1 h) into a fresh data_dir (`tasks.builders.build`,
what `musiclm-jax build-data` runs), in its own process. Work per build: decode, resample,
check, cut into clips, serialise, shuffle and write the TFRecords. Core-hours are CPU time
(user + system) of the launching process (for Beam: the runner, which holds the shuffle in
memory) and of its worker processes, both recorded. The builds must give the same examples
(ids and audio checksums compared). Writes benchmarks/results/build_speed_cpu.json.
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


def _cpu_seconds(who) -> float:
  usage = resource.getrusage(who)
  return usage.ru_utime + usage.ru_stime


def build_child(music: str, data_dir: str, config: str, options: str) -> None:
  """The build in this process; prints {wall, own CPU, workers' CPU} as JSON."""
  import json
  from musiclm_jax import dataset_builds
  from musiclm_jax.tasks import builders
  if options:
    dataset_builds.quiet_beam_logs()
    options += ",default_sdk_harness_log_level=WARNING"
  start = time.time()
  builders.build("audio_folder", data_dir, config, music, options or None)
  print(json.dumps({"wall": time.time() - start,
                    "own_cpu": _cpu_seconds(resource.RUSAGE_SELF),
                    "workers_cpu": _cpu_seconds(resource.RUSAGE_CHILDREN)}))


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
  parser.add_argument("--child", nargs=3, metavar=("MUSIC", "DATA_DIR", "OPTIONS"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    build_child(*args.child[:2], args.config, args.child[2])
    return
  import json
  import machine
  import tensorflow_datasets as tfds
  from musiclm_jax.audio import debian_music
  music = os.path.join(debian_music.fetch("wesnoth-1.16-music"), "usr/share/games/wesnoth")
  name = f"audio_folder/{args.config}"
  runs, fingerprints = [], set()
  for engine, options in ENGINES.items():
    data_dir = tempfile.mkdtemp(prefix="build_speed-")
    run = subprocess.run([sys.executable, __file__, f"--config={args.config}", "--child",
                          music, data_dir, options or ""],
                         check=True, capture_output=True, text=True, cwd=REPO)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    wall = measured["wall"]
    cpu = measured["own_cpu"] + measured["workers_cpu"]
    report = tfds.builder(name, data_dir=data_dir).info.metadata["build_report"]
    hours = sum(report["seconds"].values()) / 3600
    count, digest = _fingerprint(data_dir, name)
    fingerprints.add(digest)
    shutil.rmtree(data_dir)
    runs.append({"engine": engine, "beam_pipeline_options": options,
                 "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
                 "launcher_cpu_seconds": round(measured["own_cpu"], 2),
                 "worker_processes_cpu_seconds": round(measured["workers_cpu"], 2),
                 "examples": count, "audio_hours": round(hours, 4),
                 "audio_hours_per_wall_hour": round(hours / (wall / 3600), 1),
                 "audio_hours_per_core_hour": round(hours / (cpu / 3600), 1)})
    print(f"{engine:30s} {count} clips, {hours:.2f} h of audio in {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU: {runs[-1]['audio_hours_per_wall_hour']} h/h wall, "
          f"{runs[-1]['audio_hours_per_core_hour']} h per core-hour (launcher "
          f"{measured['own_cpu']:.1f} s CPU, workers {measured['workers_cpu']:.1f} s)")
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
