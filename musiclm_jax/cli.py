"""The `musiclm-jax` console script: one command over the entry points.

  musiclm-jax train --gin_file=... --gin.MODEL_DIR="'/tmp/run'"
  musiclm-jax eval  --gin_file=... ...
  musiclm-jax infer --gin_file=... ...
  musiclm-jax codec encode|decode|export ...   (argparse; see musiclm_jax/soundstream/cli.py)
  musiclm-jax build-data audio_folder --manual_dir=DIR --data_dir=OUT [--config=24khz]
  musiclm-jax semantic fit-kmeans|tokenize ...  (argparse; see musiclm_jax/w2v_bert/cli.py)
  musiclm-jax mulan embed|score|fit-rvq ...     (argparse; see musiclm_jax/mulan/cli.py)
  musiclm-jax tokenize --dataset ... --out ...  (argparse; see musiclm_jax/tasks/tokenize_job.py)
  musiclm-jax generate --bundle B --prompt ...  (argparse; see musiclm_jax/generation/cli.py)
  musiclm-jax export --out B --mulan_model_dir ...  (see musiclm_jax/generation/export.py)
  musiclm-jax align-decoder --out C --codec C0 ...  (see musiclm_jax/generation/aligned_decoder.py)
  musiclm-jax pipeline --gin_file=pipeline/tiny.gin ...  (see musiclm_jax/pipeline/cli.py)
  musiclm-jax evaluate --generated D --reference D ...  (see musiclm_jax/evaluation/evaluate.py)
  musiclm-jax listen --pairs DIR [--export wins.json]  (see musiclm_jax/evaluation/listening.py)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "train": ("musiclm_jax.train", "train a model (resumes from MODEL_DIR)"),
    "eval": ("musiclm_jax.eval", "evaluate a checkpoint on a split"),
    "infer": ("musiclm_jax.infer", "sample from a checkpoint"),
    "codec": ("musiclm_jax.soundstream.cli", "SoundStream: encode/decode audio, export"),
    "build-data": ("musiclm_jax.tasks.build_cli", "build a TFDS dataset from local files"),
    "semantic": ("musiclm_jax.w2v_bert.cli", "semantic tokens: fit k-means, tokenize audio"),
    "mulan": ("musiclm_jax.mulan.cli", "MuLan: embed text/audio, score, fit the RVQ"),
    "tokenize": ("musiclm_jax.tasks.tokenize_job", "token shards of a dataset for the stages"),
    "generate": ("musiclm_jax.generation.cli", "text to music (WAV) from an exported bundle"),
    "export": ("musiclm_jax.generation.export", "an inference bundle from the training runs"),
    "align-decoder": ("musiclm_jax.generation.aligned_decoder",
                      "the codec's decoder fine-tuned on the coarse stage's aligned tokens"),
    "pipeline": ("musiclm_jax.pipeline.cli", "the main job: every part, data to report"),
    "evaluate": ("musiclm_jax.evaluation.evaluate", "FAD, KLD, MCC of generated clips"),
    "listen": ("musiclm_jax.evaluation.listening", "pairwise listening test (web app), wins"),
}
# Commands with their own argparse interface (no gin): run as module.main(argv).
PLAIN_COMMANDS = ("codec", "build-data", "semantic", "mulan", "tokenize", "generate",
                  "export", "align-decoder", "pipeline", "evaluate", "listen")


def _usage() -> str:
  lines = ["usage: musiclm-jax COMMAND [--gin_file=F ...] [--gin.KEY=VALUE ...]", "",
           "commands:"]
  lines += [f"  {name:13s} {help_}" for name, (_, help_) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    raise SystemExit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    print(f"error: unknown command {command!r} (musiclm-jax --help lists the commands)",
          file=sys.stderr)
    raise SystemExit(2)
  module = importlib.import_module(COMMANDS[command][0])
  if command in PLAIN_COMMANDS:
    module.main(argv[2:])
    return
  sys.argv = [f"musiclm-jax {command}"] + argv[2:]
  from musiclm_jax import launch
  launch.run(module.main)


if __name__ == "__main__":
  main()
