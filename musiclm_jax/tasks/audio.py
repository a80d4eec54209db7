"""SeqIO tasks of random audio crops, for the codec (SoundStream, 24 kHz) and w2v-BERT (16 kHz).

The data is an `audio_folder` TFDS dataset (data/audio_folder: clips of up to
`clip_seconds` at one rate, built once from any folder of audio). A task reads it with
`seqio.TfdsDataSource`, checks its rate, and cuts random crops of `crop_samples`. A run's
gin file registers and names the task in one line, since `register_audio_crop_task`
returns the name:

  train/DatasetConfig.mixture_or_task_name = @soundstream/register_audio_crop_task()
  soundstream/register_audio_crop_task.name = 'soundstream_crops_24khz'
  soundstream/register_audio_crop_task.tfds_name = 'audio_folder/24khz:1.0.0'
  soundstream/register_audio_crop_task.tfds_data_dir = '/data/tfds/my_music'
  soundstream/register_audio_crop_task.sample_rate = 24000
  soundstream/register_audio_crop_task.crop_samples = 24000
  train/DatasetConfig.task_feature_lengths = {'audio': 24000}
  train.feature_converter = @AudioFeatureConverter()

(likewise 'w2v_bert_crops_16khz' over 'audio_folder/16khz:1.0.0' at 16000).

Crops differ every epoch yet are reproducible: the crop step runs after seqio's repeat,
with per-example seeds from `seqio.map_over_dataset(num_seeds=1)`, which seqio derives from
the `seed` given to `get_dataset`.

Clips shorter than the crop are dropped by default (`short_clips='drop'`): zero padding
would show the codec's reconstruction and adversarial losses, and w2v-BERT's masked
prediction, music that ends in digital silence. `short_clips='pad'` zero-pads them instead
(for sets of one-shots, where most clips are short). How many clips that is per split comes
from the dataset's build report without reading the data (`AudioCropTask.short_clip_counts`)
and is logged whenever a pipeline is built.
"""

from __future__ import annotations

import functools
import os
from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from musiclm_jax.tasks import builders

FeatureSpec = seqio.FeatureConverter.FeatureSpec
SHORT_CLIP_POLICIES = ("drop", "pad")
_VERB = {"drop": "dropped", "pad": "zero-padded"}
# data/audio_folder, the builder of the datasets these tasks read (a source checkout).
AUDIO_FOLDER_DIR = builders.dataset_dir("audio_folder")

_REGISTERED: dict[str, dict] = {}  # task name -> the arguments it was registered with
_LOGGED: set = set()


# ---------------------------------------------------------------------------------------
# Building the dataset from Python (what `tfds build data/audio_folder` does).


def audio_folder_builder_cls():
  """The `audio_folder` Builder class (see `builders.builder_cls`)."""
  return builders.builder_cls("audio_folder")


def build_audio_folder(manual_dir: str, data_dir: str, config: str = "24khz"):
  """Builds audio_folder/<config> from the audio under manual_dir into data_dir.

  Equivalent to `tfds build data/audio_folder --config=CONFIG --manual_dir=... --data_dir=...`.
  Returns the builder; `builder.info.metadata['build_report']` holds the counts. A prepared
  dataset is reused.
  """
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"manual_dir {manual_dir} is not a folder")
  return builders.build("audio_folder", data_dir, config, manual_dir)


# ---------------------------------------------------------------------------------------
# Preprocessors.


def check_sample_rate(ds: tf.data.Dataset, sample_rate: int, dataset: str
                      ) -> tf.data.Dataset:
  """Fails on the first clip whose 'sample_rate' is not `sample_rate`."""

  def check(ex):
    with tf.control_dependencies([tf.debugging.assert_equal(
        ex["sample_rate"], tf.cast(sample_rate, ex["sample_rate"].dtype),
        message=f"{dataset} holds audio at another rate than the {sample_rate} Hz of the "
                "task (use the dataset config of that rate, e.g. audio_folder/16khz)")]):
      return {**ex, "audio": tf.identity(ex["audio"])}

  return ds.map(check, num_parallel_calls=tf.data.AUTOTUNE)


def tokenize_captions(ds: tf.data.Dataset, vocabulary, text_length: int) -> tf.data.Dataset:
  """Skips clips without a caption; 'caption' -> 'text_tokens' [CLS] ids [SEP] int32
  (at most text_length ids)."""
  ds = ds.filter(lambda ex: tf.strings.length(tf.strings.strip(ex["caption"])) > 0)

  def tokenize(ex):
    pieces = vocabulary.encode_tf(ex["caption"])
    return {**ex, "text_tokens": vocabulary.add_special_tokens_tf(pieces, text_length)}

  return ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


def drop_or_pad_short_clips(ds: tf.data.Dataset, crop_samples: int, policy: str
                            ) -> tf.data.Dataset:
  """Clips shorter than crop_samples: dropped ('drop') or zero-padded at the end ('pad')."""
  if policy == "drop":
    return ds.filter(lambda ex: tf.shape(ex["audio"])[0] >= crop_samples)

  def pad(ex):
    missing = tf.maximum(crop_samples - tf.shape(ex["audio"])[0], 0)
    return {**ex, "audio": tf.pad(ex["audio"], [[0, missing]])}

  return ds.map(pad, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset(num_seeds=1)
def random_crops(ex, seed, crop_samples: int, crops_per_clip: int = 1, carry=()):
  """'audio' [time >= crop_samples] -> [crops_per_clip, crop_samples] at random offsets;
  the features named in `carry` are repeated per crop, the others dropped.

  `seed` ([2] int) comes from seqio, one per example: new offsets each epoch, the same ones
  for the same get_dataset seed.
  """
  audio = ex["audio"]
  offsets = tf.random.stateless_uniform(
      [crops_per_clip], seed=seed, minval=0,
      maxval=tf.shape(audio)[0] - crop_samples + 1, dtype=tf.int32)
  windows = offsets[:, None] + tf.range(crop_samples, dtype=tf.int32)[None, :]
  out = {"audio": tf.gather(audio, windows)}
  for key in carry:
    out[key] = tf.repeat(ex[key][None], crops_per_clip, axis=0)
  return out


def audio_crops(ds: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]] = None,
                *, task_name: str, crop_samples: int, short_clips: str, crops_per_clip: int,
                log_counts=None, carry=()) -> tf.data.Dataset:
  """Clips {'audio': [time], *carry} -> crops {'audio': [crop_samples], *carry},
  crops_per_clip per clip."""
  length = (sequence_length or {}).get("audio")
  if length is not None and length != crop_samples:
    raise ValueError(f"task {task_name!r} cuts crops of {crop_samples} samples, but "
                     f"task_feature_lengths['audio'] is {length}: make them equal")
  if log_counts is not None:
    log_counts()
  ds = drop_or_pad_short_clips(ds, crop_samples, short_clips)
  ds = random_crops(  # pylint: disable=no-value-for-parameter  (seqio passes `seed`)
      ds, crop_samples=crop_samples, crops_per_clip=crops_per_clip, carry=tuple(carry))
  return ds.unbatch()


# ---------------------------------------------------------------------------------------
# The task.


class AudioCropTask(seqio.Task):
  """A seqio.Task of random crops, which knows its crop and caches only what fits.

  seqio caches any source of under 10,000 examples in memory; 10,000 clips of 10 s at
  24 kHz are 9.6 GB, so the in-memory cache is used only when a split (per shard) has at
  most `max_in_memory_cache_bytes` (TFDS records each split's size).
  """

  def __init__(self, name: str, *, crop_samples: int, short_clips: str,
               max_in_memory_cache_bytes: int, **kwargs):
    super().__init__(name, **kwargs)
    self.crop_samples, self.short_clips = crop_samples, short_clips
    self.max_in_memory_cache_bytes = max_in_memory_cache_bytes

  def _fits_in_memory(self, split: str, shard_info: Optional[seqio.ShardInfo]) -> bool:
    num_bytes = self.source.tfds_dataset.info.splits[split].num_bytes
    return num_bytes / (shard_info.num_shards if shard_info else 1) <= (
        self.max_in_memory_cache_bytes)

  def get_dataset(self, sequence_length=None, split=tfds.Split.TRAIN, use_cached=False,
                  shuffle=True, shuffle_buffer_size=None, seed=None, shard_info=None,
                  num_epochs=1, trim_output_features=True, try_in_mem_cache=True):
    try_in_mem_cache = try_in_mem_cache and self._fits_in_memory(split, shard_info)
    return super().get_dataset(
        sequence_length, split=split, use_cached=use_cached, shuffle=shuffle,
        shuffle_buffer_size=shuffle_buffer_size, seed=seed, shard_info=shard_info,
        num_epochs=num_epochs, trim_output_features=trim_output_features,
        try_in_mem_cache=try_in_mem_cache)

  def short_clip_counts(self) -> Optional[dict]:
    """{split: {'clips': n, 'short': m, 'policy': 'drop'|'pad'}} from the build report.

    'short' counts the clips with fewer than crop_samples samples: the ones dropped or
    padded each epoch. From the audio_folder build report, or, for datasets of fixed-length
    clips (music_captions), from the audio feature's shape; None otherwise.
    """
    info = self.source.tfds_dataset.info
    report = info.metadata.get("build_report") if info.metadata else None
    fixed = info.features["audio"].shape[0] if "audio" in info.features else None
    if fixed is not None:
      return {split: {"clips": s.num_examples, "policy": self.short_clips,
                      "short": s.num_examples if self.crop_samples > fixed else 0}
              for split, s in info.splits.items()}
    if not report or "short_clip_samples" not in report:
      return None
    clip_samples = int(round(report["clip_seconds"] * report["sample_rate"]))
    out = {}
    for split, clips in report["clips"].items():
      short = report["short_clip_samples"].get(split, [])
      out[split] = {"clips": clips, "policy": self.short_clips,
                    "short": clips if self.crop_samples > clip_samples
                    else sum(n < self.crop_samples for n in short)}
    return out

  def log_short_clip_counts(self) -> None:
    """Logs short_clip_counts once per process (called when a pipeline is built)."""
    if self.name in _LOGGED:
      return
    _LOGGED.add(self.name)
    counts = self.short_clip_counts()
    if counts is None:
      logging.warning("task %s: no build report, so the clips shorter than %d samples "
                      "(%s) are not counted", self.name, self.crop_samples,
                      _VERB[self.short_clips])
      return
    text = ", ".join(f"{split} {c['short']}/{c['clips']}" for split, c in counts.items())
    logging.info("task %s: clips shorter than the %d-sample crop, %s per epoch: %s",
                 self.name, self.crop_samples, _VERB[self.short_clips], text)


@gin.configurable
def register_audio_crop_task(name: str, tfds_name: str, tfds_data_dir: Optional[str],
                             sample_rate: int, crop_samples: int, short_clips: str = "drop",
                             crops_per_clip: int = 1, shuffle_buffer_size: int = 1000,
                             max_in_memory_cache_bytes: int = 1 << 30,
                             captions: bool = False, text_folder: Optional[str] = None,
                             text_length: int = 64) -> str:
  """Registers a task of random crops of an audio_folder dataset; returns its name.

  Args:
    name: the task's name, e.g. 'soundstream_crops_24khz'.
    tfds_name: 'audio_folder/CONFIG:VERSION', e.g. 'audio_folder/24khz:1.0.0'.
    tfds_data_dir: the --data_dir it was built into (None: TFDS's default).
    sample_rate: the rate the model expects; clips at another rate fail the pipeline.
    crop_samples: samples per crop: the task's one feature is 'audio' float32
      [crop_samples] (task_feature_lengths['audio'] must equal it).
    short_clips: 'drop' or 'pad' the clips shorter than crop_samples (module docstring).
    crops_per_clip: random crops cut from each clip per epoch (more crops per decoded clip;
      seqio's shuffle buffer then mixes them).
    shuffle_buffer_size: crops in seqio's shuffle buffer.
    max_in_memory_cache_bytes: cache a split's clips in memory up to this size per shard.
    captions: also a feature 'text_tokens' int32 [<= text_length]: the clip's caption as
      [CLS] WordPiece ids [SEP] of the BERT tokenizer in `text_folder` (None: MiniLM-L6, see
      `mulan.pretrained_bert`), the same for every crop of a clip. Clips without a caption
      are skipped. For MuLan (`CaptionedAudioFeatureConverter`).
  Registering the same name with the same arguments again is a no-op (gin may call this
  once per DatasetConfig); with other arguments it replaces the task.
  """
  args = dict(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir, sample_rate=sample_rate,
              crop_samples=crop_samples, short_clips=short_clips,
              crops_per_clip=crops_per_clip, shuffle_buffer_size=shuffle_buffer_size,
              max_in_memory_cache_bytes=max_in_memory_cache_bytes, captions=captions,
              text_folder=text_folder, text_length=text_length)
  if short_clips not in SHORT_CLIP_POLICIES:
    raise ValueError(f"task {name!r}: short_clips={short_clips!r}, expected one of "
                     f"{SHORT_CLIP_POLICIES}")
  for key in ("sample_rate", "crop_samples", "crops_per_clip"):
    if int(args[key]) < 1:
      raise ValueError(f"task {name!r}: {key}={args[key]} must be >= 1")
  if name in seqio.TaskRegistry.names():
    if _REGISTERED.get(name) == args:
      return name
    if name not in _REGISTERED:
      raise ValueError(f"a task named {name!r} is already registered by another module")
    logging.info("task %s: re-registered with %s (was %s)", name, args, _REGISTERED[name])
    seqio.TaskRegistry.remove(name)

  source = seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir,
                                read_only=True)  # never tries to build or download
  preprocessors = [
      functools.partial(check_sample_rate, sample_rate=sample_rate, dataset=tfds_name)]
  output_features = {"audio": seqio.Feature(
      seqio.PassThroughVocabulary(1), add_eos=False, dtype=tf.float32, rank=1)}
  if captions:
    from musiclm_jax.mulan import pretrained_bert, text_vocabulary  # pylint: disable=g-import-not-at-top
    vocabulary = text_vocabulary.BertVocabulary(text_folder or pretrained_bert.minilm_l6_folder())
    preprocessors.append(functools.partial(tokenize_captions, vocabulary=vocabulary,
                                           text_length=text_length))
    output_features["text_tokens"] = seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)
  preprocessors.append(functools.partial(
      audio_crops, task_name=name, crop_samples=crop_samples, short_clips=short_clips,
      crops_per_clip=crops_per_clip, carry=("text_tokens",) if captions else (),
      log_counts=lambda: seqio.get_mixture_or_task(name).log_short_clip_counts()))
  task = AudioCropTask(
      name,
      source=source,
      preprocessors=preprocessors,
      output_features=output_features,
      shuffle_buffer_size=shuffle_buffer_size,
      crop_samples=crop_samples, short_clips=short_clips,
      max_in_memory_cache_bytes=max_in_memory_cache_bytes)
  seqio.TaskRegistry.add_provider(name, task)
  _REGISTERED[name] = args
  _LOGGED.discard(name)
  return name


# ---------------------------------------------------------------------------------------
# Feature converter.


@gin.configurable
class AudioFeatureConverter(seqio.FeatureConverter):
  """Task feature 'audio' [crop] float32 -> model feature 'audio' [crop] float32.

  Batched by `training.data.get_dataset` into [batch, crop]; the crop length is static in
  the batches (`task_feature_lengths['audio']`), which jit needs.
  """

  TASK_FEATURES = {"audio": FeatureSpec(dtype=tf.float32)}
  MODEL_FEATURES = {"audio": FeatureSpec(dtype=tf.float32)}
  PACKING_FEATURE_DTYPES = None

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise ValueError("AudioFeatureConverter cannot pack: crops have a fixed length")
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    return ds.map(lambda ex: self._convert_example(ex, task_feature_lengths),
                  num_parallel_calls=tf.data.AUTOTUNE)

  def _convert_example(self, ex, task_feature_lengths: Mapping[str, int]):
    length = task_feature_lengths["audio"]
    with tf.control_dependencies([tf.debugging.assert_equal(
        tf.shape(ex["audio"])[0], length,
        message=f"'audio' must have exactly task_feature_lengths['audio']={length} "
                "samples (the task's crop_samples)")]):
      return {"audio": tf.ensure_shape(ex["audio"], [length])}

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]):
    return {"audio": task_feature_lengths["audio"]}


@gin.configurable
class CaptionedAudioFeatureConverter(AudioFeatureConverter):
  """Task features 'audio' [crop] float32 and 'text_tokens' [<= L] int32 -> the same, with
  'text_tokens' zero-padded ([PAD] = 0) to task_feature_lengths['text_tokens']."""

  TASK_FEATURES = {"audio": FeatureSpec(dtype=tf.float32),
                   "text_tokens": FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {"audio": FeatureSpec(dtype=tf.float32),
                    "text_tokens": FeatureSpec(dtype=tf.int32)}

  def _convert_example(self, ex, task_feature_lengths: Mapping[str, int]):
    length = task_feature_lengths["text_tokens"]
    tokens = ex["text_tokens"][:length]
    tokens = tf.pad(tokens, [[0, length - tf.shape(tokens)[0]]])
    return {**super()._convert_example(ex, task_feature_lengths),
            "text_tokens": tf.ensure_shape(tokens, [length])}

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]):
    return {"audio": task_feature_lengths["audio"],
            "text_tokens": task_feature_lengths["text_tokens"]}
