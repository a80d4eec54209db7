"""SeqIO tasks of MusicLM's three LM stages, read from token shards.

A token shard is a TFRecord file of `tf.train.Example`s, one per clip, written by the
tokenize job (`write_token_shard`):

  id, caption        bytes
  mulan_tokens       int64 [mulan_levels]              (MuLan audio embedding, RVQ codes)
  semantic_tokens    int64 [semantic_frames]           (w2v-BERT k-means ids, 25 Hz)
  acoustic_tokens    int64 [acoustic_frames * levels]  (SoundStream codes, 50 Hz, frame-major)
  acoustic_levels    int64 [1]

Each stage crops the same stretch of time from every stream (semantic and acoustic frames
stay aligned) and maps it into the decoder-only LM's `prefix_tokens` / `targets`:

  semantic  prefix  M (level l's code + l * mulan_codes)             targets  S
  coarse    prefix  M, then S + mulan_levels * mulan_codes           targets  A[:, :Qc] flattened
  fine      prefix  A[:, :Qc] flattened                              targets  A[:, Qc:] flattened

Acoustic tokens of level q are offset by q * acoustic_codes (AudioLM's convention), so one
vocabulary covers every level and the model always knows which level it is predicting.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Iterable, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from musiclm_jax import atomic
from musiclm_jax.lm.token_layout import STAGES, TokenLayout

_FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.string),
    "caption": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "mulan_tokens": tf.io.VarLenFeature(tf.int64),
    "semantic_tokens": tf.io.VarLenFeature(tf.int64),
    "acoustic_tokens": tf.io.VarLenFeature(tf.int64),
    "acoustic_levels": tf.io.FixedLenFeature([1], tf.int64),
}


# ---- writing shards ---------------------------------------------------------------------


def _int_feature(values) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values).ravel()))


def _bytes_feature(value: str) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))


def token_example(id_: str, mulan: np.ndarray, semantic: np.ndarray, acoustic: np.ndarray,
                  caption: str = "") -> bytes:
  """One serialised example; acoustic is [frames, levels]."""
  acoustic = np.asarray(acoustic)
  if acoustic.ndim != 2:
    raise ValueError(f"{id_}: acoustic tokens must be [frames, levels], got {acoustic.shape}")
  features = {"id": _bytes_feature(id_), "caption": _bytes_feature(caption),
              "mulan_tokens": _int_feature(mulan), "semantic_tokens": _int_feature(semantic),
              "acoustic_tokens": _int_feature(acoustic),
              "acoustic_levels": _int_feature([acoustic.shape[1]])}
  # deterministic: map fields in a fixed order, so the same tokens give the same bytes in any
  # process (a restarted tokenize job rewrites a shard identically).
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(
      deterministic=True)


def write_token_shard(path: str, examples: Iterable[bytes]) -> int:
  """Writes serialised examples to `path` atomically (temporary name, then rename).

  A killed writer leaves no file under the final name, so a shard that exists is complete.
  Returns the number of examples.
  """
  count = 0
  # atomic_file names the temporary '.tmp-<final name>-...': a restarted job finds the
  # partial file of a killed writer by that prefix.
  with atomic.atomic_file(path) as tmp:
    with tf.io.TFRecordWriter(tmp) as writer:
      for example in examples:
        writer.write(example)
        count += 1
  return count


# ---- reading: preprocessors -------------------------------------------------------------


def parse_tokens(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Serialised examples -> dense int32 streams; acoustic as [frames, levels]."""
  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, _FEATURES)
    levels = tf.cast(ex["acoustic_levels"][0], tf.int32)
    acoustic = tf.cast(tf.sparse.to_dense(ex["acoustic_tokens"]), tf.int32)
    return {"id": ex["id"], "caption": ex["caption"],
            "mulan_tokens": tf.cast(tf.sparse.to_dense(ex["mulan_tokens"]), tf.int32),
            "semantic_tokens": tf.cast(tf.sparse.to_dense(ex["semantic_tokens"]), tf.int32),
            "acoustic_tokens": tf.reshape(acoustic, [-1, levels])}
  return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def aligned_crops(ds: tf.data.Dataset, layout: TokenLayout, crop_seconds: float,
                  random: bool = True) -> tf.data.Dataset:
  """Crops semantic and acoustic streams to the same `crop_seconds` (random start in
  training, the start otherwise); clips shorter than the crop are dropped."""
  semantic_len = layout.lengths("semantic", crop_seconds)[1]
  ratio = layout.acoustic_rate // layout.semantic_rate

  def long_enough(ex):
    return tf.logical_and(tf.shape(ex["semantic_tokens"])[0] >= semantic_len,
                          tf.shape(ex["acoustic_tokens"])[0] >= semantic_len * ratio)
  ds = ds.filter(long_enough)

  @seqio.map_over_dataset(num_seeds=1)
  def crop(ex, seed):
    frames = tf.minimum(tf.shape(ex["semantic_tokens"])[0],
                        tf.shape(ex["acoustic_tokens"])[0] // ratio)
    start = 0
    if random:
      start = tf.random.stateless_uniform([], seed, 0, frames - semantic_len + 1, tf.int32)
    out = dict(ex)
    out["semantic_tokens"] = ex["semantic_tokens"][start:start + semantic_len]
    out["acoustic_tokens"] = ex["acoustic_tokens"][start * ratio:(start + semantic_len) * ratio]
    return out
  return crop(ds)  # pylint: disable=no-value-for-parameter


def _level_offsets(tokens: tf.Tensor, codes: int, first_level: int = 0) -> tf.Tensor:
  """[frames, levels] -> frame-major flat ids with level q offset by q * codes."""
  levels = tf.shape(tokens)[1]
  offsets = (tf.range(levels) + first_level) * codes
  return tf.reshape(tokens + offsets[None, :], [-1])


def to_stage(ds: tf.data.Dataset, layout: TokenLayout, stage: str) -> tf.data.Dataset:
  """Cropped streams -> {'prefix_tokens', 'targets'} of one stage (see module docstring)."""
  if stage not in STAGES:
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
  qc = layout.coarse_levels

  def fmt(ex):
    mulan = ex["mulan_tokens"] + tf.range(layout.mulan_levels) * layout.mulan_codes
    coarse = _level_offsets(ex["acoustic_tokens"][:, :qc], layout.acoustic_codes)
    if stage == "semantic":
      prefix, targets = mulan, ex["semantic_tokens"]
    elif stage == "coarse":
      semantic = ex["semantic_tokens"] + layout.mulan_levels * layout.mulan_codes
      prefix, targets = tf.concat([mulan, semantic], axis=0), coarse
    else:
      prefix = coarse
      targets = _level_offsets(ex["acoustic_tokens"][:, qc:], layout.acoustic_codes)
    return {"prefix_tokens": prefix, "targets": targets}
  return ds.map(fmt, num_parallel_calls=tf.data.AUTOTUNE)


# ---- registration -----------------------------------------------------------------------


TOKENS_LAYOUT_FILE = "layout.json"


def read_tokens_layout(tokens_dir: str) -> Optional[dict]:
  """The layout fields the tokenize job recorded in `tokens_dir`/layout.json ({field:
  value}), or None when the folder has none. A corrupt file raises ValueError naming it."""
  path = os.path.join(tokens_dir, TOKENS_LAYOUT_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    try:
      recorded = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e}): re-run the tokenize job") from e
  if not isinstance(recorded, dict):
    raise ValueError(f"{path} should hold a JSON object of layout fields, got "
                     f"{type(recorded).__name__}")
  return recorded


def read_mulan_tokens(tokens_dir: str, split: str = "train",
                      max_clips: Optional[int] = None, seed: int = 0) -> np.ndarray:
  """The MuLan tokens int32 [clips, mulan_levels] of the clips in `tokens_dir`'s `split`
  shards: what the stages were conditioned on in training. With `max_clips`, the shards are
  read in a seeded random order until that many clips are read (at pod scale a sample of
  the clips, not a pass over every shard). No shards, or clips with differing numbers of
  levels, raise ValueError naming the folder."""
  pattern = os.path.join(tokens_dir, f"{split}-*.tfrecord")
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"no token shards match {pattern}")
  if max_clips is not None:
    if max_clips < 1:
      raise ValueError(f"max_clips must be >= 1, got {max_clips}")
    files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
  spec = {"mulan_tokens": _FEATURES["mulan_tokens"]}
  rows = []
  for record in tf.data.TFRecordDataset(files):
    rows.append(np.asarray(tf.sparse.to_dense(
        tf.io.parse_single_example(record, spec)["mulan_tokens"])))
    if max_clips is not None and len(rows) >= max_clips:
      break
  if not rows or len({len(r) for r in rows}) != 1:
    raise ValueError(f"{pattern}: the clips' MuLan tokens are empty or of differing "
                     f"lengths ({sorted({len(r) for r in rows})})")
  return np.stack(rows).astype(np.int32)


def check_tokens_layout(tokens_dir: str, layout: TokenLayout) -> None:
  """Raises ValueError if the tokenize job's layout.json in `tokens_dir` records other
  rates or vocabularies than `layout`: crops cut with the wrong rate would train on
  misaligned tokens without any other error. A folder without layout.json is not checked."""
  recorded = read_tokens_layout(tokens_dir) or {}
  differing = {k: (v, getattr(layout, k)) for k, v in recorded.items()
               if hasattr(layout, k) and getattr(layout, k) != v}
  if differing:
    path = os.path.join(tokens_dir, TOKENS_LAYOUT_FILE)
    raise ValueError(f"{path} records tokens made with other settings than this stage's "
                     "TokenLayout: " + ", ".join(f"{k}={v[0]} (layout: {v[1]})"
                                                 for k, v in sorted(differing.items())))


@gin.configurable
def register_stage_task(name: str = gin.REQUIRED, stage: str = gin.REQUIRED,
                        split_patterns: Optional[Mapping[str, str]] = None,
                        crop_seconds: float = gin.REQUIRED,
                        layout: Optional[TokenLayout] = None,
                        tokens_dir: Optional[str] = None,
                        splits: Sequence[str] = ("train", "validation")) -> str:
  """Registers the SeqIO task of one stage over token shards; returns its name.

  Args:
    name: task name.
    stage: 'semantic', 'coarse' or 'fine'.
    split_patterns: split -> file pattern of token shards, e.g.
      {'train': '/tokens/train-*.tfrecord', 'validation': '/tokens/validation-*.tfrecord'}.
    crop_seconds: length of the training crops (paper: 30 s semantic, 10 s acoustic).
    layout: token rates and vocabularies (default: the paper's).
    tokens_dir: instead of split_patterns: the tokenize job's output folder, read as
      '<tokens_dir>/<split>-*.tfrecord' for each of `splits`.
  """
  layout = layout or TokenLayout()
  if (split_patterns is None) == (tokens_dir is None):
    raise ValueError(f"register_stage_task({name!r}): give split_patterns or tokens_dir")
  if tokens_dir is not None:
    check_tokens_layout(tokens_dir, layout)
    split_patterns = {s: os.path.join(tokens_dir, f"{s}-*.tfrecord") for s in splits}
  if stage not in STAGES:
    raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  prefix_vocab, target_vocab = layout.vocab_sizes(stage)
  seqio.TaskRegistry.add(
      name,
      source=seqio.FileDataSource(read_file_fn=tf.data.TFRecordDataset,
                                  split_to_filepattern=dict(split_patterns)),
      preprocessors=stage_preprocessors(layout, stage, crop_seconds),
      output_features={
          "prefix_tokens": seqio.Feature(seqio.PassThroughVocabulary(prefix_vocab),
                                         add_eos=False, dtype=tf.int32),
          "targets": seqio.Feature(seqio.PassThroughVocabulary(target_vocab), add_eos=False,
                                   dtype=tf.int32)})
  return name


def stage_preprocessors(layout: TokenLayout, stage: str, crop_seconds: float) -> Sequence:
  """parse -> aligned random crops -> the stage's prefix/targets."""
  return [parse_tokens,
          functools.partial(aligned_crops, layout=layout, crop_seconds=crop_seconds),
          functools.partial(to_stage, layout=layout, stage=stage)]
