r"""Tokenize job throughput with tiny models: seconds of audio per second of wall.

  python benchmarks/tokenize_speed.py [--dataset tiny_16khz] [--data_dir DIR] [--out FILE]

The three tokenizers are the `tiny` gin sizes (gin/soundstream/tiny.gin, w2v_bert/tiny.gin,
mulan/tiny.gin), randomly initialised: the job's cost around the models (reading TFDS,
resampling to each tokenizer's rate, serialising, writing shards) plus tiny models' compute,
not a trained pipeline's. The job runs twice over the train split of
music_captions/<dataset> (built if missing) into fresh folders: the first pass includes
XLA compilation, the second is steady state. One process, 4 shards.
Writes benchmarks/results/tokenize_speed_<backend>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def tiny_tokenizers():
  import random_parts
  from musiclm_jax import audio_tokenizers
  from musiclm_jax.w2v_bert import model as w2v_model, tokenizer as semantic_tokenizer
  w2v_config = random_parts.gin_config(["w2v_bert/tiny.gin"], w2v_model.W2vBertConfig)
  samples = w2v_config.hop_length * 8
  w2v_params = random_parts.init(
      w2v_model.W2vBert(w2v_config), np.zeros((1, samples), np.float32),
      np.zeros((1, w2v_config.num_frames(samples)), bool))["params"]
  centroids = np.random.default_rng(0).normal(size=(16, w2v_config.emb_dim))
  semantic = semantic_tokenizer.SemanticTokenizer(w2v_config, w2v_params, 1,
                                                  centroids.astype(np.float32))
  return audio_tokenizers.Tokenizers(random_parts.codec("tiny"), semantic,
                                 random_parts.mulan("tiny", 4, 16))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="tiny_16khz")
  parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  import machine
  import tensorflow_datasets as tfds
  from musiclm_jax.tasks import builders, tokenize_job
  builders.build("music_captions", args.data_dir, args.dataset)
  dataset = f"music_captions/{args.dataset}"
  info = tfds.builder(dataset, data_dir=args.data_dir).info
  clips = info.splits["train"].num_examples
  seconds = clips * info.features["audio"].shape[0] / info.features["audio"].sample_rate
  tokenizers = tiny_tokenizers()
  passes = []
  for name in ("first (compiles)", "steady"):
    with tempfile.TemporaryDirectory() as out:
      start = time.time()
      summary = tokenize_job.run(tokenizers, dataset, args.data_dir, ["train"], out, 4,
                                 show_progress=False)
      wall = time.time() - start
    passes.append({"pass": name, "wall_seconds": wall, "clips": summary["examples"],
                   "audio_seconds_per_wall_second": seconds / wall})
    print(f"{name:18s} {summary['examples']} clips, {seconds:.0f} s of audio in {wall:.1f} s:"
          f" {seconds / wall:.1f} x real time")
  report = {"benchmark": "tokenize_speed", "machine": machine.describe_jax(),
            "dataset": dataset, "split": "train", "clips": clips, "audio_seconds": seconds,
            "tokenizers": "tiny gin sizes, random init", "passes": passes}
  print(f"-> {machine.save_result(report, 'tokenize_speed', args.out)}")


if __name__ == "__main__":
  main()
