r"""Tokenize job throughput: seconds of audio per second of wall, per device.

  python benchmarks/tokenize_speed.py [--size tiny|paper] [--dataset tiny_16khz]
      [--split train] [--data_dir DIR] [--out FILE]

The three tokenizers are at the gin sizes of --size (soundstream/, w2v_bert/ and mulan/
<size>.gin; paper: the 600M w2v-BERT clustered at MLM layer 7 into 1024 tokens, 12 x 1024
MuLan tokens), randomly initialised: speed does not depend on training. The job runs twice
over a split of music_captions/<dataset> (built if missing) into fresh folders: the first pass includes XLA compilation, the second is steady state.
One process, 4 shards. Reports the real-time factor per device (audio seconds per wall
second / devices) and the token bytes per audio second, from which docs/data.md derives
the cost of tokenizing a corpus. Writes benchmarks/results/tokenize_speed[_paper]_<backend>.json.
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


# Per size: the semantic MLM layer and k-means codes, MuLan's RVQ levels and codes.
SIZES = {"tiny": dict(layer=1, semantic_codes=16, mulan_levels=4, mulan_codes=16),
         "paper": dict(layer=7, semantic_codes=1024, mulan_levels=12, mulan_codes=1024)}


def tokenizers(size: str):
  """Random-init Tokenizers at the gin sizes of `size`."""
  import random_parts
  from musiclm_jax import audio_tokenizers
  from musiclm_jax.w2v_bert import model as w2v_model, tokenizer as semantic_tokenizer
  shape = SIZES[size]
  w2v_config = random_parts.gin_config([f"w2v_bert/{size}.gin"], w2v_model.W2vBertConfig)
  samples = w2v_config.hop_length * 8
  w2v_params = random_parts.init(
      w2v_model.W2vBert(w2v_config), np.zeros((1, samples), np.float32),
      np.zeros((1, w2v_config.num_frames(samples)), bool))["params"]
  centroids = np.random.default_rng(0).normal(size=(shape["semantic_codes"],
                                                    w2v_config.emb_dim))
  semantic = semantic_tokenizer.SemanticTokenizer(w2v_config, w2v_params, shape["layer"],
                                                  centroids.astype(np.float32))
  return audio_tokenizers.Tokenizers(
      random_parts.codec(size), semantic,
      random_parts.mulan(size, shape["mulan_levels"], shape["mulan_codes"]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
  parser.add_argument("--dataset", default="tiny_16khz")
  parser.add_argument("--split", default="train")
  parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  import glob
  import jax
  import machine
  import tensorflow_datasets as tfds
  from musiclm_jax.tasks import builders, tokenize_job
  builders.build("music_captions", args.data_dir, args.dataset)
  dataset = f"music_captions/{args.dataset}"
  info = tfds.builder(dataset, data_dir=args.data_dir).info
  split = args.split
  clips = info.splits[split].num_examples
  seconds = clips * info.features["audio"].shape[0] / info.features["audio"].sample_rate
  built = tokenizers(args.size)
  devices = jax.local_device_count()
  passes = []
  for name in ("first (compiles)", "steady"):
    with tempfile.TemporaryDirectory() as out:
      start = time.time()
      summary = tokenize_job.run(built, dataset, args.data_dir, [split], out, 4,
                                 show_progress=False)
      wall = time.time() - start
      shard_bytes = sum(os.path.getsize(f) for f in glob.glob(os.path.join(out, "*.tfrecord")))
    passes.append({"pass": name, "wall_seconds": wall, "clips": summary["examples"],
                   "audio_seconds_per_wall_second": seconds / wall,
                   "real_time_factor_per_device": seconds / wall / devices,
                   "token_shard_bytes": shard_bytes,
                   "token_bytes_per_audio_second": shard_bytes / seconds})
    print(f"{name:18s} {summary['examples']} clips, {seconds:.0f} s of audio in {wall:.1f} s:"
          f" {seconds / wall:.1f} x real time on {devices} device(s); "
          f"{shard_bytes / seconds:.0f} token bytes per audio second")
  layout = built.layout()
  report = {"benchmark": "tokenize_speed", "machine": machine.describe_jax(),
            "dataset": dataset, "split": split, "clips": clips, "audio_seconds": seconds,
            "size": args.size, "tokenizers": f"{args.size} gin sizes, random init",
            "layout": layout, "devices": devices, "passes": passes}
  name = "tokenize_speed" if args.size == "tiny" else f"tokenize_speed_{args.size}"
  print(f"-> {machine.save_result(report, name, args.out)}")


if __name__ == "__main__":
  main()
