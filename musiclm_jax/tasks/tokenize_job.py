"""The tokenize job: frozen MuLan, semantic and SoundStream tokenizers over a TFDS split,
written as the token shards the LM stages train on (`tasks.stages`).

  musiclm-jax tokenize --dataset music_captions/small_24khz --data_dir ~/tfds \
      --splits train,validation --num_shards 64 --out ~/tokens \
      --codec CODEC_BUNDLE --semantic_model_dir W2V_RUN --centroids CENTROIDS.npz \
      --mulan_model_dir MULAN_RUN --mulan_rvq RVQ.npz [--process_index I --process_count N]

Each split is cut into --num_shards equal parts (`tfds.even_splits`); part i becomes
`<split>-0000i-of-000NN.tfrecord`, written to a temporary name and renamed when complete,
then `<shard>.json` (its counts). Process p of N takes the parts i with i % N == p, so the
same command runs on one machine or on many (one process per accelerator, each with its
--process_index: docs/data.md). A shard with its .json is finished and skipped when the
job runs again; anything else (a temporary file of a killed run, a shard without its
.json) is redone. `layout.json` records the token vocabularies and rates (`TokenLayout`'s
fields), and `tokenizers.json`, like each shard's .json, a content fingerprint of each
tokenizer's weights: a later run with other tokenizers (a retrained codec, say) into the
same folder is refused, or with --replace_stale redoes every shard they did not make (each
replaced atomically, so an interrupted run still resumes). A folder holding shards of
another --num_shards is refused: the stages would read both.

Per clip (any rate; resampled with soxr): SoundStream codes at the codec's rate, semantic
tokens at 16 kHz, MuLan tokens of the clip's window-averaged audio embedding. Semantic and
acoustic streams are cut to the same duration (acoustic frames = semantic frames x
rate ratio). Empty, non-finite, silent or too-short clips are skipped and counted.
"""

from __future__ import annotations

import collections
import glob
import json
import os
from typing import Dict, Optional, Sequence

import numpy as np

from musiclm_jax import atomic, audio_tokenizers, cli_utils
from musiclm_jax.audio import io as audio_io
from musiclm_jax.tasks import stages



def shard_path(out_dir: str, split: str, index: int, count: int) -> str:
  return os.path.join(out_dir, f"{split}-{index:05d}-of-{count:05d}.tfrecord")


def _write_json(path: str, value) -> None:
  atomic.atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True))


TOKENIZERS_FILE = "tokenizers.json"


def _check_layout(out_dir: str, layout: Dict[str, int], fingerprints: Dict[str, str],
                  replace_stale: bool) -> bool:
  """Writes layout.json (the token layout: `TokenLayout`'s fields) and tokenizers.json (the
  tokenizers' fingerprints), or checks the ones there: another layout or other tokenizers
  are refused unless `replace_stale`. A folder written before fingerprints were recorded
  passes on its layout alone. Returns whether it is such a folder (its shards carry no
  fingerprints either)."""
  path = os.path.join(out_dir, stages.TOKENS_LAYOUT_FILE)
  prints_path = os.path.join(out_dir, TOKENIZERS_FILE)
  existing = stages.read_tokens_layout(out_dir)
  old_prints = None
  if os.path.exists(prints_path):
    with open(prints_path, encoding="utf-8") as f:
      try:
        old_prints = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{prints_path} is not valid JSON ({e}): delete it and pass "
                         "--replace_stale to tokenize into this folder again") from e
  legacy = old_prints is None and not replace_stale   # written before fingerprints
  if existing == layout and (old_prints == fingerprints or legacy):
    return legacy
  if existing is not None and not replace_stale:
    differing = ([f"layout {existing} vs {layout}"] if existing != layout else []) + [
        f"{part} weights" for part in sorted(fingerprints)
        if old_prints is not None and old_prints.get(part) != fingerprints[part]]
    raise ValueError(f"{path} records other tokenizers ({', '.join(differing)}). Write to "
                     "another folder, or pass --replace_stale to tokenize into this one "
                     "again.")
  _write_json(prints_path, fingerprints)
  _write_json(path, layout)
  return False


def _finished_shard(path: str, fingerprints: Dict[str, str], replace_stale: bool,
                    legacy_folder: bool) -> Optional[Dict[str, object]]:
  """The counts of a finished shard at `path`, or None when it is to be (re)done: missing,
  without its .json, or made by other tokenizers under `replace_stale` (without it, such a
  shard is an error). A shard without a fingerprint passes only in a `legacy_folder`."""
  if not (os.path.exists(path) and os.path.exists(path + ".json")):
    return None
  with open(path + ".json", encoding="utf-8") as f:
    try:
      counts = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}.json is not valid JSON ({e}): delete it and the shard is "
                       "redone") from e
  made_by = counts.get("tokenizers")
  if made_by == fingerprints or (made_by is None and legacy_folder):
    return counts
  if replace_stale:
    return None   # made by other tokenizers, or (no fingerprint) by an older version
  raise ValueError(f"{path} was made by other tokenizers ({made_by or 'not recorded'}, now "
                   f"{fingerprints}): pass --replace_stale to redo it")


def _check_shard_count(out_dir: str, split: str, num_shards: int) -> None:
  """Refuses a folder holding `split` shards of another count: the stages read
  `<split>-*.tfrecord`, so both sets would be trained on."""
  ours = f"-of-{num_shards:05d}.tfrecord"
  others = sorted(os.path.basename(f) for f in glob.glob(
      os.path.join(out_dir, f"{split}-*-of-*.tfrecord")) if not f.endswith(ours))
  if others:
    raise ValueError(f"{out_dir} holds {split} shards of another --num_shards ({others[0]}, "
                     f"now {num_shards}): the stages would read both. Use the same "
                     "--num_shards or another folder.")


def tokenize_shard(tokenizers: audio_tokenizers.Tokenizers, dataset: str,
                   data_dir: Optional[str], split, path: str, min_seconds: float,
                   progress=None, strict: bool = False) -> Dict[str, object]:
  """Tokenizes one part of a split into `path` (atomically); returns its counts. An unusable
  clip is skipped and counted, or with `strict` stops the job (AudioError naming it; the
  shard is not written)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  skipped = audio_io.SkipCounter()
  ds = tfds.load(dataset, split=split, data_dir=data_dir, shuffle_files=False)

  def examples():
    for ex in ds.as_numpy_iterator():
      id_ = ex["id"].decode() if "id" in ex else str(ex.get("file", b"?"))
      rate = int(ex["sample_rate"])
      wave = np.asarray(ex["audio"], np.float32)
      try:
        audio_io.check_audio(wave, rate, id_, min_seconds)
        mulan, semantic, acoustic = tokenizers.tokenize(wave, rate)
      except audio_io.AudioError as e:
        if strict:
          raise
        skipped.add(e)
        continue
      finally:
        if progress is not None:
          progress.update(1)
      caption = ex["caption"].decode() if "caption" in ex else ""
      yield stages.token_example(id_, mulan, semantic, acoustic, caption)

  written = stages.write_token_shard(path, examples())
  return {"examples": written, "skipped": dict(skipped.counts),
          "skipped_examples": dict(skipped.examples)}


def run(tokenizers: audio_tokenizers.Tokenizers, dataset: str, data_dir: Optional[str],
        splits: Sequence[str], out_dir: str, num_shards: int, process_index: int = 0,
        process_count: int = 1, min_seconds: float = 1.0, show_progress: bool = True,
        replace_stale: bool = False, strict: bool = False) -> Dict[str, object]:
  """Tokenizes this process's shards of every split; returns the job summary (over the
  shards this process owns, finished now or before). replace_stale: redo shards other
  tokenizers made (module docstring) instead of refusing the folder. strict: stop at the
  first unusable clip (`tokenize_shard`)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  os.makedirs(out_dir, exist_ok=True)
  fingerprints = tokenizers.fingerprints()
  legacy_folder = _check_layout(out_dir, tokenizers.layout(), fingerprints, replace_stale)
  builder = tfds.builder(dataset, data_dir=data_dir)
  summary = {"written_now": 0, "already_done": 0, "examples": 0,
             "skipped": collections.Counter()}
  for split in splits:
    if split not in builder.info.splits:
      raise ValueError(f"{dataset} has no split {split!r} (has {sorted(builder.info.splits)})")
    _check_shard_count(out_dir, split, num_shards)
    parts = tfds.even_splits(split, n=num_shards)
    mine = list(range(process_index, num_shards, process_count))
    total = builder.info.splits[split].num_examples * len(mine) // num_shards
    bar = tqdm(total=total, desc=f"tokenize {split}", disable=not show_progress,
               unit="clip")
    for i in mine:
      path = shard_path(out_dir, split, i, num_shards)
      counts = _finished_shard(path, fingerprints, replace_stale, legacy_folder)
      if counts is not None:
        summary["already_done"] += 1
        bar.update(counts["examples"] + sum(counts["skipped"].values()))
      else:
        name = os.path.basename(path)
        for stale in glob.glob(os.path.join(out_dir, f".tmp-{name}*")):
          os.remove(stale)  # a killed run's partial file for this shard
        counts = tokenize_shard(tokenizers, dataset, data_dir, parts[i], path, min_seconds,
                                bar, strict)
        counts["tokenizers"] = fingerprints
        _write_json(path + ".json", counts)
        summary["written_now"] += 1
      summary["examples"] += counts["examples"]
      summary["skipped"].update(counts["skipped"])
    bar.close()
  summary["skipped"] = dict(summary["skipped"])
  return summary


def main(argv=None) -> None:
  parser = cli_utils.ArgumentParser(prog="musiclm-jax tokenize",
                                    description=cli_utils.first_paragraph(__doc__))
  parser.add_argument("--dataset", required=True,
                      help="TFDS name, e.g. music_captions/small_24khz")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir holding it")
  parser.add_argument("--splits", default="train,validation")
  parser.add_argument("--out", type=cli_utils.output_path, required=True,
                      help="folder of token shards")
  parser.add_argument("--num_shards", type=int, default=16, help="shards per split")
  parser.add_argument("--codec", required=True, help="SoundStream codec bundle")
  parser.add_argument("--semantic_model_dir", required=True, help="w2v-BERT training run")
  parser.add_argument("--centroids", required=True, help="k-means centroids (.npz)")
  parser.add_argument("--mulan_model_dir", required=True, help="MuLan training run")
  parser.add_argument("--mulan_rvq", required=True, help="MuLan RVQ (.npz, mulan fit-rvq)")
  parser.add_argument("--process_index", type=int, default=0)
  parser.add_argument("--process_count", type=int, default=1)
  parser.add_argument("--min_seconds", type=float, default=1.0)
  parser.add_argument("--no_progress", action="store_true")
  parser.add_argument("--replace_stale", action="store_true",
                      help="redo the shards in --out that other tokenizers made (a retrained "
                           "codec, say) instead of refusing the folder")
  parser.add_argument("--strict", action="store_true",
                      help="stop at the first unusable clip (default: skip and count them; "
                           "each shard's .json names them)")

  def go(args):
    from musiclm_jax.training import data  # pylint: disable=g-import-not-at-top
    data.hide_gpus_from_tensorflow()  # TF reads the clips; the tokenizers are JAX's
    tokenizers = audio_tokenizers.Tokenizers.load(
        args.codec, args.semantic_model_dir, args.centroids, args.mulan_model_dir,
        args.mulan_rvq)
    summary = run(tokenizers, args.dataset, args.data_dir, args.splits.split(","), args.out,
                  args.num_shards, args.process_index, args.process_count,
                  args.min_seconds, not args.no_progress, args.replace_stale, args.strict)
    print(f"process {args.process_index}/{args.process_count}: {summary['examples']} clips in "
          f"{summary['written_now']} new + {summary['already_done']} finished shards; "
          f"skipped {summary['skipped'] or 'none'} -> {args.out}")

  parser.set_defaults(run=go)
  cli_utils.run(parser, argv)
