r"""Where the acoustic half loses what the codec keeps: link by link, on held-out clips.

  python benchmarks/acoustic_half.py --work_dir runs/long [--train_clips 240] [--out FILE]

From a finished pipeline run (its bundle and dataset), every held-out clip is rendered
several ways, each judged against the real held-out clips by two measures that fail
differently:
- FAD of musicnn MTT's penultimate layer (the distribution: timbre, texture, artefacts);
- the tagger's named-instrument ROC AUCs against the clips' own captions
  (`evaluation.tag_adherence`: content), summarised as the mean AUC above 0.5 over the
  instruments the tagger hears on the real clips (AUC >= 0.75 at p < 0.01 there), as the
  proof of learning does.

Renderings:
- `real_train`: real clips of the train split (--train_clips, drawn at random): the FAD
  of independent real music of this set, the floor any generator could reach;
- `codec_train`: SoundStream's resynthesis of those clips: the codec's floor with
  independent clips (as generated ones are);
- `codec`: the codec's resynthesis of the held-out clips themselves;
- `acoustic`: the coarse and fine stages on the clips' real semantic tokens (and captions),
  the bundle's default sampling with the fine stage run (DEFAULT_SAMPLING's where the
  bundle skips it);
- `generated_coarse_real_fine`: the acoustic stages' coarse tokens with the clips' real
  fine tokens (what the coarse stage costs);
- `real_coarse_generated_fine`: the clips' real coarse tokens with the fine stage's
  (`MusicLM.generate_fine_tokens`: what the fine stage costs);
- `real_coarse_only`: the real coarse tokens decoded alone (what the fine levels are worth;
  the codec trains with quantizer dropout, so it decodes any first levels);
- `acoustic_coarse_only`: the coarse stage's tokens decoded alone (whether the fine stage
  helps the tokens it is really given);
- `codec_levels_<k>`: the real tokens' first k levels decoded, k = 1 .. levels - 1 (what a
  perfect stage modelling k levels would reach);
- `acoustic_coarse_only_t<T>`: as `acoustic_coarse_only`, the coarse stage sampled at
  temperature T (--coarse_temperatures; its guidance and top-k the bundle's).
Writes benchmarks/results/acoustic_half_<backend>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

BATCH = 48


def _validation_loss(run_dir: str, step: int):
  """The run's validation loss at `step` (its metrics_eval.jsonl), None where not logged."""
  from musiclm_jax.training import metrics  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(run_dir, "metrics_eval.jsonl")):
    return None
  return next((r["loss"] for r in metrics.read_metrics(run_dir, "eval")
               if r["step"] == step), None)


def _inference_config(config):
  """A DecoderConfig without its training-only settings (dropout): what a rendering uses."""
  return dataclasses.replace(config, dropout_rate=0.0, attention_dropout_rate=None)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", required=True, help="a finished pipeline run")
  parser.add_argument("--train_clips", type=int, default=240)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--coarse_temperatures", default="",
                      help="comma-separated coarse-stage temperatures to render the coarse "
                           "levels alone at, besides the bundle's")
  parser.add_argument("--coarse_run", default=None,
                      help="a training run of the bundle's coarse stage (same config but for "
                           "dropout), for "
                           "--coarse_steps")
  parser.add_argument("--coarse_steps", default="",
                      help="comma-separated checkpoint steps of --coarse_run to render the "
                           "coarse levels alone with")
  parser.add_argument("--links", choices=("all", "coarse"), default="all",
                      help="'coarse': only the codec, real coarse levels and coarse-only rows")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  if args.train_clips < 2:
    parser.error(f"--train_clips must be at least 2, got {args.train_clips}")
  try:
    temperatures = [float(t) for t in args.coarse_temperatures.split(",") if t.strip()]
  except ValueError:
    parser.error(f"--coarse_temperatures {args.coarse_temperatures!r}: expected numbers")
  if any(not t >= 0 for t in temperatures):
    parser.error(f"--coarse_temperatures {args.coarse_temperatures!r}: must be >= 0")
  try:
    coarse_steps = [int(s) for s in args.coarse_steps.split(",") if s.strip()]
  except ValueError:
    parser.error(f"--coarse_steps {args.coarse_steps!r}: expected whole numbers")
  if bool(coarse_steps) != bool(args.coarse_run):
    parser.error("--coarse_run and --coarse_steps go together")
  if args.coarse_run and not os.path.isfile(os.path.join(args.coarse_run, "config.gin")):
    parser.error(f"--coarse_run {args.coarse_run!r}: not a training run (no config.gin)")
  missing = [s for s in coarse_steps
             if not os.path.isdir(os.path.join(args.coarse_run, "checkpoints", str(s)))]
  if missing:
    parser.error(f"--coarse_run {args.coarse_run!r} has no checkpoint at step(s) "
                 f"{', '.join(map(str, missing))}")

  import machine
  import proof_of_learning
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.evaluation import embedders, fad, tag_adherence
  from musiclm_jax.generation import bundle as bundle_lib
  from musiclm_jax.generation import export as export_lib
  from musiclm_jax.generation import musiclm as musiclm_lib
  from musiclm_jax.pipeline import recipe as recipe_lib
  start = time.time()
  try:
    recipe = recipe_lib.Recipe.load(args.work_dir)
  except (FileNotFoundError, ValueError) as e:
    parser.error(f"--work_dir: {e}")
  musiclm = bundle_lib.load_bundle(recipe.path("bundle"))
  codec, layout = musiclm.codec, musiclm.layout
  # The other run's checkpoints, checked against the bundle before anything is rendered.
  coarse_params = {}
  for step in coarse_steps:
    try:
      stage, stage_layout, _ = export_lib.load_stage_run("coarse", args.coarse_run, step,
                                                         use_ema=False)
    except (ValueError, OSError) as e:
      parser.error(f"--coarse_run {args.coarse_run!r}: {e}")
    if stage_layout != layout or (_inference_config(stage.model.config) !=
                                  _inference_config(musiclm.coarse.model.config)):
      parser.error(f"--coarse_run {args.coarse_run!r}: its coarse stage's layout or "
                   "config differs from the bundle's")
    coarse_params[step] = stage.params
  at = lambda x, r, to: np.stack([audio_io.resample(c, r, to) for c in x])
  train, rate, _, _, train_captions = proof_of_learning._split(recipe, "train")
  test, _, _, _, captions = proof_of_learning._split(recipe, recipe.reference_split)
  pick = np.random.default_rng(args.seed).choice(
      len(train), min(args.train_clips, len(train)), replace=False)
  train, train_captions = train[pick], [train_captions[i] for i in pick]
  tagger = embedders.get("musicnn_mtt").tagger
  read = lambda audio, r: tagger.embed_clips(at(audio, r, 16000),
                                             outputs=("penultimate", "tags"))
  reference = read(test, rate)
  visible = tag_adherence.visible_instruments(
      tag_adherence.tag_aucs(reference["tags"], captions),
      proof_of_learning.TAGGER_AUC_TARGET, proof_of_learning.TAGGER_P_TARGET)["visible"]
  in_batches = lambda fn, x: np.concatenate([fn(x[i:i + BATCH])
                                             for i in range(0, len(x), BATCH)])
  decode = lambda tokens: in_batches(codec.decode, tokens.astype(np.int32))
  codec_rate = codec.config.sample_rate
  renderings = {}

  def judge(name, audio, audio_rate, texts):
    clips = read(audio, audio_rate)
    aucs = tag_adherence.tag_aucs(clips["tags"], texts)
    renderings[name] = {
        "clips": len(audio),
        "fad": fad.fad(clips["penultimate"], reference["penultimate"], bootstrap=100),
        "tagger_auc": {t: r["auc"] for t, r in aucs.items()},
        "tagger_mean_excess": proof_of_learning._instrument_excess(aucs, visible)}
    print(f"{name:28s} FAD {renderings[name]['fad']['fad']:6.2f}  tagger excess "
          f"{renderings[name]['tagger_mean_excess']:.3f}  ({time.time() - start:.0f} s)",
          flush=True)

  everything = args.links == "all"
  if everything:
    judge("real_train", train, rate, train_captions)
    train_at_codec = at(train, rate, codec_rate)
    judge("codec_train", decode(in_batches(codec.encode, train_at_codec))
          [:, :train_at_codec.shape[1]], codec_rate, train_captions)
  held = at(test, rate, codec_rate)
  real = np.asarray(in_batches(codec.encode, held)).astype(np.int32)  # [N, T, levels]
  judge("codec", decode(real)[:, :held.shape[1]], codec_rate, captions)
  semantic = musiclm.semantic_tokenizer.tokenize(
      at(test, rate, musiclm.semantic_tokenizer.config.sample_rate))
  frames = real.shape[1] * layout.semantic_rate // layout.acoustic_rate
  semantic = semantic[:, :frames]
  qc = layout.coarse_levels
  length = real.shape[1]

  def coarse_only(sampling_coarse):
    """The coarse stage's tokens [N, T, qc] on the real semantic tokens."""
    sampling = {"coarse": sampling_coarse, "fine": musiclm_lib.NO_FINE_STAGE}
    return np.concatenate([musiclm.generate_acoustic_tokens(
        captions[i:i + BATCH], semantic[i:i + BATCH], seed=args.seed + i, sampling=sampling)
                           for i in range(0, len(test), BATCH)])[:, :length]

  if everything:
    # The fine stage run, also where the bundle skips it by default.
    both_stages = {"fine": musiclm_lib.fine_stage_sampling(musiclm.default_sampling)}
    generated = np.concatenate([musiclm.generate_acoustic_tokens(
        captions[i:i + BATCH], semantic[i:i + BATCH], seed=args.seed + i,
        sampling=both_stages) for i in range(0, len(test), BATCH)])
    length = min(generated.shape[1], real.shape[1])
    generated, real = generated[:, :length], real[:, :length]
    judge("acoustic", decode(generated), codec_rate, captions)
    judge("generated_coarse_real_fine",
          decode(np.concatenate([generated[..., :qc], real[..., qc:]], -1)), codec_rate,
          captions)
    fine = in_batches(lambda c: musiclm.generate_fine_tokens(c, seed=args.seed),
                      real[..., :qc])
    judge("real_coarse_generated_fine",
          decode(np.concatenate([real[..., :qc], fine], -1)), codec_rate, captions)
  judge("real_coarse_only", decode(real[..., :qc]), codec_rate, captions)
  coarse_default = musiclm.default_sampling["coarse"]
  # The same seeds as the acoustic row: its coarse levels are these tokens.
  judge("acoustic_coarse_only",
        decode(generated[..., :qc] if everything else coarse_only(coarse_default)),
        codec_rate, captions)
  if everything:
    for k in range(1, layout.acoustic_levels):
      judge(f"codec_levels_{k}", decode(real[..., :k]), codec_rate, captions)
  for temperature in temperatures:
    tokens = coarse_only(dataclasses.replace(coarse_default, temperature=temperature))
    judge(f"acoustic_coarse_only_t{temperature:g}", decode(tokens), codec_rate, captions)
  checkpoints = {}
  for step, params in coarse_params.items():
    bundled = musiclm.coarse
    musiclm.coarse = dataclasses.replace(bundled, params=params)
    judge(f"acoustic_coarse_only_step{step}", decode(coarse_only(coarse_default)),
          codec_rate, captions)
    musiclm.coarse = bundled
    checkpoints[step] = {"validation_loss": _validation_loss(args.coarse_run, step)}
  floor = renderings["codec"]
  ratios = {name: {"fad_vs_codec": r["fad"]["fad"] / floor["fad"]["fad"],
                   "tagger_vs_codec": r["tagger_mean_excess"] / floor["tagger_mean_excess"]}
            for name, r in renderings.items()}
  report = {"benchmark": "acoustic_half", "work_dir": args.work_dir,
            "recipe": {k: getattr(recipe, k) for k in ("size", "stage_steps",
                                                       "extra_bindings", "codec_bundle")},
            "heldout_clips": len(test), "train_clips": len(train),
            "coarse_levels": layout.coarse_levels,
            "default_sampling": {stage: None if v is None else dataclasses.asdict(v)
                                 for stage, v in musiclm.default_sampling.items()},
            "links": args.links,
            "coarse_run": None if not args.coarse_run else {
                "dir": args.coarse_run, "checkpoints": checkpoints,
                "bundle_validation_loss": _validation_loss(recipe.path("runs", "coarse"),
                                                           recipe.stage_steps[1])},
            "tagger_visible_instruments": visible, "renderings": renderings,
            "vs_codec": ratios, "wall_seconds": time.time() - start,
            "machine": machine.describe_jax()}
  print(f"-> {machine.save_result(report, 'acoustic_half', args.out)}")


if __name__ == "__main__":
  main()
