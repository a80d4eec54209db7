"""`musiclm-jax export`: an inference bundle from the six training runs.

  musiclm-jax export --out BUNDLE [--bfloat16] \
      --mulan_model_dir MULAN_RUN --mulan_rvq RVQ.npz \
      --semantic_model_dir W2V_RUN --centroids CENTROIDS.npz \
      --codec CODEC_BUNDLE \
      --semantic_stage_dir S1_RUN --coarse_stage_dir S2_RUN --fine_stage_dir S3_RUN \
      [--mulan_token_data TOKENS_DIR [--mulan_bank_clips N]] [--no_fine_stage]

Each stage run's config.gin gives its DecoderConfig, its TokenLayout and its crop (the
generation window). The parts must agree: the stages' layouts with each other and with the
tokenizers' vocabularies (MuLan RVQ levels x codes, k-means clusters, codec levels x
codes); a mismatch is an error naming both sides. Parameters are the EMA ones where a run
saved them (--no_ema: the raw ones). --no_fine_stage makes the bundle's default
generation decode the coarse levels alone (its manifest records the default sampling; the
fine stage stays in the bundle, and `generate --fine_stage` runs it).
--mulan_token_data (the tokenize job's folder) gives the bundle the MuLan tokens of the
train split's clips: its text prompts then condition on the training tuple nearest their
MuLan text embedding (`mulan.audio_token_bank`) rather than on the text embedding's own
tokens; --mulan_bank_clips caps how many clips' tokens are read (a seeded sample of the
shards).
"""

from __future__ import annotations

from typing import Optional

from musiclm_jax import cli_utils

DEFAULT_CROPS = {"semantic": 30.0, "coarse": 10.0, "fine": 3.0}
# The audio token bank's sample of training clips: at pod scale (10^8 clips) the bank holds
# at most this many tuples (12 int32 each on disk, a 128-d float32 embedding in memory).
BANK_CLIPS = 200_000


def load_stage_run(stage: str, model_dir: str, step: Optional[int], use_ema: bool):
  """(StageLM, TokenLayout, crop seconds) of one stage's training run, at its newest
  checkpoint or `step`."""
  import gin  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from musiclm_jax.training import runs  # pylint: disable=g-import-not-at-top
  from musiclm_jax.generation import musiclm as musiclm_lib  # pylint: disable=g-import-not-at-top
  from musiclm_jax.lm import decoder_lm, models as lm_models  # pylint: disable=g-import-not-at-top
  from musiclm_jax.lm import token_layout  # pylint: disable=g-import-not-at-top
  # Registers register_stage_task, whose crop_seconds the run's config.gin sets.
  from musiclm_jax.tasks import stages  # noqa: F401  pylint: disable=g-import-not-at-top

  def make():
    try:
      crop = float(gin.query_parameter(f"{stage}/register_stage_task.crop_seconds"))
    except ValueError:
      crop = DEFAULT_CROPS[stage]
    return decoder_lm.DecoderConfig(), token_layout.TokenLayout(), crop

  gin.clear_config()  # one run's bindings must not leak into the next
  run = runs.load_run(model_dir, make, step, use_ema)
  gin.clear_config()
  config, layout, crop = run.config
  model = lm_models.DecoderOnlyLMModel(decoder_lm.DecoderOnlyLM(config), optax.identity())
  return musiclm_lib.StageLM(model, run.params), layout, crop


def _check(what: str, ours, theirs, source: str) -> None:
  if ours != theirs:
    raise ValueError(f"{what}: the stages were trained with {ours}, but {source} has "
                     f"{theirs}")


def from_runs(mulan_model_dir: str, mulan_rvq: str, semantic_model_dir: str, centroids: str,
              codec_bundle: str, semantic_stage_dir: str, coarse_stage_dir: str,
              fine_stage_dir: str, use_ema: bool = True,
              default_sampling: Optional[dict] = None,
              mulan_token_data: Optional[str] = None, bank_clips: int = BANK_CLIPS):
  """A `musiclm_lib.MusicLM` assembled from training runs (checked for agreement), with
  `default_sampling` (see `MusicLM`) as its own and, given `mulan_token_data` (a tokens
  folder), the audio token bank of its train split's MuLan tokens (of at most `bank_clips`
  clips)."""
  import gin  # pylint: disable=g-import-not-at-top
  from musiclm_jax.generation import musiclm as musiclm_lib  # pylint: disable=g-import-not-at-top
  from musiclm_jax.mulan import tokenizer as mulan_tokenizer  # pylint: disable=g-import-not-at-top
  from musiclm_jax.soundstream import codec as codec_lib  # pylint: disable=g-import-not-at-top
  from musiclm_jax.w2v_bert import tokenizer as semantic_tokenizer  # pylint: disable=g-import-not-at-top
  runs = {name: load_stage_run(name, path, None, use_ema) for name, path in
          (("semantic", semantic_stage_dir), ("coarse", coarse_stage_dir),
           ("fine", fine_stage_dir))}
  layout = runs["coarse"][1]
  for name in ("semantic", "fine"):
    _check("token layout", layout, runs[name][1], f"the {name} stage's run")
  gin.clear_config()
  mulan = mulan_tokenizer.MuLanTokenizer.load(mulan_model_dir, mulan_rvq, use_ema=use_ema)
  gin.clear_config()
  semantic_tok = semantic_tokenizer.SemanticTokenizer.load(semantic_model_dir, centroids,
                                                           use_ema=use_ema)
  gin.clear_config()
  codec = codec_lib.Codec.load(codec_bundle)
  _check("MuLan levels x codes", (layout.mulan_levels, layout.mulan_codes),
         tuple(mulan.codebooks.shape[:2]), mulan_rvq)
  _check("semantic codes", layout.semantic_codes, semantic_tok.num_clusters, centroids)
  _check("acoustic levels x codes", (layout.acoustic_levels, layout.acoustic_codes),
         (codec.config.num_quantizers, codec.config.codebook_size), codec_bundle)
  windows = musiclm_lib.Windows(*(runs[name][2] for name in ("semantic", "coarse", "fine")))
  bank = None
  if mulan_token_data is not None:
    from musiclm_jax.mulan import audio_token_bank  # pylint: disable=g-import-not-at-top
    from musiclm_jax.tasks import stages  # pylint: disable=g-import-not-at-top
    stages.check_tokens_layout(mulan_token_data, layout)
    bank = audio_token_bank.AudioTokenBank(
        stages.read_mulan_tokens(mulan_token_data, max_clips=bank_clips), mulan.codebooks)
  return musiclm_lib.MusicLM(layout, mulan, runs["semantic"][0], runs["coarse"][0],
                             runs["fine"][0], codec, windows, semantic_tokenizer=semantic_tok,
                             default_sampling=default_sampling, audio_token_bank=bank)


def main(argv=None) -> None:
  parser = cli_utils.ArgumentParser(prog="musiclm-jax export",
                                    description=cli_utils.first_paragraph(__doc__))
  parser.add_argument("--out", type=cli_utils.output_path, required=True,
                      help="bundle folder to write")
  parser.add_argument("--bfloat16", action="store_true", help="parameters in bfloat16")
  parser.add_argument("--no_ema", action="store_true", help="raw params even if EMA saved")
  parser.add_argument("--no_fine_stage", action="store_true",
                      help="the bundle's default generation decodes the coarse levels alone "
                           "(for a fine stage measured to add noise, not detail)")
  parser.add_argument("--mulan_token_data", default=None,
                      help="the tokenize job's folder: text prompts condition on its train "
                           "clips' MuLan tokens nearest their text embedding")
  parser.add_argument("--mulan_bank_clips", type=cli_utils.positive_int, default=BANK_CLIPS,
                      help="read the MuLan tokens of at most this many train clips (a "
                           "seeded sample of the shards)")
  for flag, what in (("mulan_model_dir", "MuLan training run"),
                     ("mulan_rvq", "MuLan RVQ (.npz, mulan fit-rvq)"),
                     ("semantic_model_dir", "w2v-BERT training run"),
                     ("centroids", "k-means centroids (.npz)"),
                     ("codec", "SoundStream codec bundle (codec export)"),
                     ("semantic_stage_dir", "semantic stage run"),
                     ("coarse_stage_dir", "coarse stage run"),
                     ("fine_stage_dir", "fine stage run")):
    parser.add_argument(f"--{flag}", required=True, help=what)

  def go(args):
    from musiclm_jax.generation import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
    from musiclm_jax.generation import musiclm as musiclm_lib  # pylint: disable=g-import-not-at-top
    musiclm = from_runs(args.mulan_model_dir, args.mulan_rvq, args.semantic_model_dir,
                        args.centroids, args.codec, args.semantic_stage_dir,
                        args.coarse_stage_dir, args.fine_stage_dir, not args.no_ema,
                        {"fine": musiclm_lib.NO_FINE_STAGE} if args.no_fine_stage else None,
                        args.mulan_token_data, args.mulan_bank_clips)
    bundle_lib.save_bundle(musiclm, args.out, "bfloat16" if args.bfloat16 else "float32")
    print(f"bundle -> {args.out} (windows {musiclm.windows}, layout {musiclm.layout}"
          f"{', fine stage skipped by default' if args.no_fine_stage else ''})")

  parser.set_defaults(run=go)
  cli_utils.run(parser, argv)
