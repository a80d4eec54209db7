"""The main job as a recipe: data -> the three tokenizers -> tokens -> the three stages ->
a bundle -> generated clips -> metrics -> a report. Sizes, steps and data come from gin
(gin/pipeline/<size>.gin), so one recipe runs at tiny, small and paper sizes, on other
datasets too.

Each step is the command a user would run by hand (`python -m musiclm_jax.cli ...`, one
process per step: its own gin config and memory), with its outputs under `work_dir`:

  tfds/                 the captioned music set (TFDS)
  clips/train/          its train split as WAV files (k-means and RVQ fitting)
  runs/<part>/          training runs: codec, w2v_bert, mulan, semantic, coarse, fine
  codec/                the exported codec (or a copy of Recipe.codec_bundle); centroids.npz,
                        mulan_rvq.npz
  aligned_codec/        (Recipe.aligned_decoder_steps) the codec with its decoder fine-tuned
                        on the coarse stage's ground-truth-aligned tokens: the bundle's
                        renderer
  tokens/               token shards of train and validation
  bundle/               the exported MusicLM
  generated/            one WAV per prompt; prompts.csv
  report/               summary.md, metrics.json, WAVs, spectrograms
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
from typing import List, Optional, Sequence, Tuple

import gin

from musiclm_jax.pipeline import steps as steps_lib

STAGES = ("semantic", "coarse", "fine")
# The steps whose tokens each stage reads (the tokenize step must be done before it; the
# tokens are a deterministic function of these): a new codec leaves the semantic stage be.
STAGE_INPUTS = {"semantic": ["kmeans", "rvq"],
                "coarse": ["kmeans", "rvq", "codec_export"],
                "fine": ["codec_export"]}


@gin.configurable
@dataclasses.dataclass
class Recipe:
  """What the job trains and generates (gin: `Recipe.<field>`).

  The *_size fields name gin size files (soundstream/<size>.gin, ...); the parts must
  agree on rates and vocabularies, which gin/stages/<size>/layout.gin states for each
  size. Steps are optimizer steps; batches are global.
  """
  work_dir: str = gin.REQUIRED
  dataset: str = "music_captions"
  dataset_config: str = "small_16khz"
  data_dir: Optional[str] = None            # default <work_dir>/tfds
  size: str = "tiny"                        # the size of every part
  codec_steps: int = 1000
  codec_batch: int = 16
  # A codec bundle to use instead of training one: a folder or 'pretrained:<name>' (shipped
  # in the package, see soundstream/pretrained/). None: the job trains its own (codec_*).
  codec_bundle: Optional[str] = None
  w2v_bert_steps: int = 1000
  w2v_bert_batch: int = 16
  kmeans_steps: int = 200
  kmeans_crop_seconds: float = 4.0
  mulan_steps: int = 1000
  mulan_batch: int = 32
  rvq_steps: int = 200
  stage_steps: Tuple[int, int, int] = (1000, 1000, 1000)   # semantic, coarse, fine
  stage_batch: int = 16
  extra_bindings: Tuple[str, ...] = ()     # 'part:binding' for a part's training run
  # The bundle's default generation decodes the coarse levels alone (export --no_fine_stage):
  # for a fine stage measured to add noise rather than detail (benchmarks/acoustic_half.py).
  skip_fine_stage: bool = False
  # Fine-tune the codec's decoder this many steps on the coarse stage's teacher-forced draws
  # from `aligned_decoder_clips` training clips, and render the bundle's audio with it
  # (generation/aligned_decoder.py). 0: the codec's own decoder renders.
  aligned_decoder_steps: int = 0
  aligned_decoder_clips: int = 1000
  # More `align-decoder` flags, e.g. ('--overlap=0', '--no_guidance', '--crop_frames=50'):
  # draws at a quarter of the cost, for more clips in the same time.
  aligned_decoder_flags: Tuple[str, ...] = ()
  prompts: Tuple[str, ...] = (
      "A solo piano plays a slow baroque chorale.",
      "A fast fiddle tune played by a solo violin with a steady drum beat.",
      "A string quartet plays a moderate Italian madrigal.",
      "A brass ensemble plays a slow chorale by Johann Sebastian Bach.",
  )
  seconds: float = 8.0
  num_samples: int = 2                      # per prompt, best by MuLan kept (rerank)
  seed: int = 0
  reference_split: str = "test"
  # Also generate from the captions of this many held-out clips (MusicCaps-style: KLD then
  # compares each generated clip with the music its caption describes).
  reference_prompts: int = 8

  @property
  def tfds_dir(self) -> str:
    return self.data_dir or os.path.join(self.work_dir, "tfds")

  @property
  def tfds_name(self) -> str:
    return f"{self.dataset}/{self.dataset_config}"

  def path(self, *parts: str) -> str:
    return os.path.join(self.work_dir, *parts)

  def save(self) -> dict:
    """Writes <work_dir>/recipe.json; returns the fields that differ from the one already
    there ({field: (old, new)}: finished steps were made with the old values). A moved
    folder (work_dir alone differs) is not a change."""
    from musiclm_jax import atomic  # pylint: disable=g-import-not-at-top
    path = self.path("recipe.json")
    fields = json.loads(json.dumps(dataclasses.asdict(self)))   # tuples as lists
    changed = {}
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        old = json.load(f)
      changed = {k: (old.get(k), v) for k, v in fields.items()
                 if old.get(k) != v and k != "work_dir"}
    atomic.atomic_write_text(path, json.dumps(fields, indent=1))
    return changed

  @classmethod
  def load(cls, work_dir: str) -> "Recipe":
    """The recipe a pipeline run was made with (its recipe.json), its paths under
    `work_dir` wherever the run was made: a run folder can be moved or copied."""
    path = os.path.join(work_dir, "recipe.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: is {work_dir!r} a pipeline run?")
    with open(path, encoding="utf-8") as f:
      fields = json.load(f)
    fields["work_dir"] = work_dir
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _cli(*args) -> List[str]:
  return [sys.executable, "-m", "musiclm_jax.cli", *map(str, args)]


def _train_step(recipe: Recipe, part: str, what: str, gin_files: Sequence[str], steps: int,
                bindings: Sequence[str], inputs: Sequence[str]) -> steps_lib.Step:
  """A training run of `part` into runs/<part> (with the recipe's extra bindings for it),
  reading the outputs of the steps named in `inputs`."""
  extra = part_bindings(recipe.extra_bindings, part)
  model_dir = recipe.path("runs", part)
  flags = [f"--gin_file={f}" for f in gin_files]
  flags += [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}"]
  flags += [f"--gin.{b}" for b in list(bindings) + extra]
  # config.gin is written when the run starts: the step's marker says it finished.
  return steps_lib.Step(part, f"train {what} ({recipe.size}, {steps} steps)",
                        _cli("train", *flags), [os.path.join(model_dir, "config.gin")],
                        inputs=inputs, run_dir=model_dir)


def part_bindings(extra_bindings: Sequence[str], part: str) -> List[str]:
  """The bindings a recipe's 'part:binding' entries give `part` (e.g. 'coarse')."""
  return [b.split(":", 1)[1] for b in extra_bindings if b.split(":", 1)[0] == part]


def size_settings(size: str, extra_bindings: Sequence[str] = ()) -> dict:
  """The tokenizer settings a size's gin files fix (k-means layer and clusters, MuLan RVQ
  levels and codes), with a recipe's `extra_bindings` for w2v_bert and mulan applied (e.g.
  'w2v_bert:SEMANTIC_CLUSTERS=64'). Clears gin: call before anything else is configured."""
  from musiclm_jax import configurables  # pylint: disable=g-import-not-at-top
  return {**configurables.query_macros(f"w2v_bert/{size}.gin",
                                       ["SEMANTIC_LAYER", "SEMANTIC_CLUSTERS"],
                                       part_bindings(extra_bindings, "w2v_bert")),
          **configurables.query_macros(f"mulan/{size}.gin",
                                       ["MULAN_RVQ_LEVELS", "MULAN_RVQ_CODES"],
                                       part_bindings(extra_bindings, "mulan"))}


def copy_codec(bundle: str, codec_dir: str) -> None:
  """Checks a codec bundle (it loads) and copies its files into codec_dir, atomically."""
  from musiclm_jax import atomic  # pylint: disable=g-import-not-at-top
  from musiclm_jax.soundstream import codec as codec_lib  # pylint: disable=g-import-not-at-top
  source = codec_lib.bundle_path(bundle)
  codec_lib.Codec.load(source)
  with atomic.atomic_directory(codec_dir) as tmp:
    for name in sorted(os.listdir(source)):
      if os.path.isfile(os.path.join(source, name)):
        shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))


def _codec_steps(r: Recipe, dataset: str, data_dir: str, codec_dir: str
                 ) -> List[steps_lib.Step]:
  """Train and export the codec, or (Recipe.codec_bundle) copy a trained one."""
  if r.codec_bundle:
    return [steps_lib.Step("codec_export", f"copy the codec {r.codec_bundle}",
                           functools.partial(copy_codec, r.codec_bundle, codec_dir),
                           [codec_dir], identified_by_content=True)]
  return [
      _train_step(r, "codec", "SoundStream", [f"soundstream/{r.size}.gin",
                                              "runs/soundstream.gin"],
                  r.codec_steps, [dataset, data_dir, f"BATCH_SIZE={r.codec_batch}"], ["data"]),
      steps_lib.Step("codec_export", "export the codec",
                     _cli("codec", "export", codec_dir, "--model_dir", r.path("runs", "codec")),
                     [codec_dir], inputs=["codec"], identified_by_content=True)]


def build_steps(recipe: Recipe, sizes: dict) -> List[steps_lib.Step]:
  """The job's steps in order; sizes: `size_settings(recipe.size, recipe.extra_bindings)`."""
  from musiclm_jax.pipeline import report  # pylint: disable=g-import-not-at-top
  r, size = recipe, recipe.size
  dataset = f"AUDIO_DATASET='{r.tfds_name}:1.0.0'"
  data_dir = f"AUDIO_DATA_DIR='{r.tfds_dir}'"
  train_clips = r.path("clips", "train")
  codec_dir, centroids, rvq = r.path("codec"), r.path("centroids.npz"), r.path("mulan_rvq.npz")
  tokens, bundle = r.path("tokens"), r.path("bundle")
  renderer, renderer_step = codec_dir, []
  if r.aligned_decoder_steps:
    renderer = r.path("aligned_codec")
    renderer_step = [steps_lib.Step(
        "aligned_decoder", f"fine-tune the decoder on the coarse stage's aligned tokens "
        f"({r.aligned_decoder_clips} clips, {r.aligned_decoder_steps} steps)",
        _cli("align-decoder", "--out", renderer, "--codec", codec_dir, "--coarse_stage_dir",
             r.path("runs", "coarse"), "--tokens", tokens, "--dataset", r.tfds_name,
             "--data_dir", r.tfds_dir, "--clips", r.aligned_decoder_clips, "--steps",
             r.aligned_decoder_steps, *r.aligned_decoder_flags),
        [renderer], inputs=["data", "codec_export", "tokenize", "coarse"],
        identified_by_content=True)]
  steps = [
      steps_lib.Step("data", f"build {r.tfds_name}",
                     _cli("build-data", r.dataset, "--data_dir", r.tfds_dir, "--config",
                          r.dataset_config),
                     [os.path.join(r.tfds_dir, r.dataset, r.dataset_config)]),
      steps_lib.Step("clips", "write the train split as WAV files",
                     lambda: report.export_split(r.tfds_name, r.tfds_dir, "train", train_clips),
                     [train_clips], inputs=["data"]),
      *_codec_steps(r, dataset, data_dir, codec_dir),
      _train_step(r, "w2v_bert", "w2v-BERT", [f"w2v_bert/{size}.gin", "runs/w2v_bert.gin"],
                  r.w2v_bert_steps, [dataset, data_dir, f"BATCH_SIZE={r.w2v_bert_batch}"],
                  ["data"]),
      steps_lib.Step("kmeans", "fit k-means on w2v-BERT embeddings (semantic tokens)",
                     _cli("semantic", "fit-kmeans", "--output", centroids, "--layer",
                          sizes["SEMANTIC_LAYER"], "--clusters", sizes["SEMANTIC_CLUSTERS"],
                          "--steps", r.kmeans_steps, "--crop_seconds", r.kmeans_crop_seconds,
                          "--model_dir", r.path("runs", "w2v_bert"), train_clips),
                     [centroids], inputs=["clips", "w2v_bert"], identified_by_content=True),
      _train_step(r, "mulan", "MuLan", [f"mulan/{size}.gin", "runs/mulan.gin"],
                  r.mulan_steps, [dataset, data_dir, f"BATCH_SIZE={r.mulan_batch}"], ["data"]),
      steps_lib.Step("rvq", "fit MuLan's residual quantizer (MuLan tokens)",
                     _cli("mulan", "fit-rvq", "--model_dir", r.path("runs", "mulan"), "--output",
                          rvq, "--levels", sizes["MULAN_RVQ_LEVELS"], "--codes",
                          sizes["MULAN_RVQ_CODES"], "--steps", r.rvq_steps, train_clips),
                     [rvq], inputs=["clips", "mulan"], identified_by_content=True),
      steps_lib.Step("tokenize", "tokenize train and validation for the stages",
                     _cli("tokenize", "--dataset", r.tfds_name, "--data_dir", r.tfds_dir,
                          "--splits", "train,validation", "--out", tokens, "--codec", codec_dir,
                          "--semantic_model_dir", r.path("runs", "w2v_bert"), "--centroids",
                          centroids, "--mulan_model_dir", r.path("runs", "mulan"),
                          # redone after a tokenizer changed: its shards are remade
                          "--mulan_rvq", rvq, "--replace_stale"),
                     [os.path.join(tokens, "layout.json")],
                     inputs=["data", "codec_export", "w2v_bert", "kmeans", "mulan", "rvq"]),
  ]
  steps += [_train_step(r, stage, f"the {stage} stage",
                        [f"stages/{size}/{stage}.gin", "runs/pretrain.gin"], count,
                        [f"TOKENS_DIR='{tokens}'", f"BATCH_SIZE={r.stage_batch}"],
                        STAGE_INPUTS[stage])
            for stage, count in zip(STAGES, r.stage_steps)]
  steps += renderer_step + [
      steps_lib.Step("export", "export the MusicLM bundle",
                     _cli("export", "--out", bundle, "--mulan_model_dir", r.path("runs", "mulan"),
                          "--mulan_rvq", rvq, "--semantic_model_dir", r.path("runs", "w2v_bert"),
                          "--centroids", centroids, "--codec", renderer,
                          *[a for s in STAGES for a in (f"--{s}_stage_dir", r.path("runs", s))],
                          "--mulan_token_data", tokens,
                          *(["--no_fine_stage"] if r.skip_fine_stage else [])),
                     [os.path.join(bundle, "manifest.json")],
                     inputs=["codec_export", "w2v_bert", "kmeans", "mulan", "rvq", "tokenize",
                             *STAGES, *[step.name for step in renderer_step]]),
      steps_lib.Step("generate", f"generate {len(r.prompts)} prompts and "
                     f"{r.reference_prompts} held-out captions, {r.seconds:g} s each",
                     lambda: report.generate(r), [r.path("generated", "prompts.csv")],
                     inputs=["data", "export"]),
      steps_lib.Step("evaluate", "FAD, KLD, MCC against held-out music",
                     _cli("evaluate", "--generated", r.path("generated"), "--reference",
                          f"tfds:{r.tfds_name}:{r.reference_split}", "--data_dir", r.tfds_dir,
                          "--prompts", r.path("generated", "prompts.csv"),
                          "--mulan_model_dir", r.path("runs", "mulan"), "--bootstrap", "100",
                          "--out", r.path("report", "metrics.json")),
                     [r.path("report", "metrics.json")], inputs=["data", "mulan", "generate"]),
      steps_lib.Step("report", "write the report folder",
                     lambda: report.write_report(r, steps), [r.path("report", "summary.md")],
                     inputs=["generate", "evaluate"]),
  ]
  return steps
