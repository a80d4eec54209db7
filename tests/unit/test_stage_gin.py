"""The per-size stage gin files (gin/stages/<size>/<stage>.gin) agree with TokenLayout (crop
lengths, vocabularies) and with the tokenizer gin files of the same size (codec rate,
levels and codes; k-means clusters; MuLan RVQ), so a stage trains on exactly the tokens
that size's tokenizers write; so do a pipeline recipe's stages with its extra bindings.
Config parsing only: no training."""

import glob
import os

import gin
import pytest

from musiclm_jax import configurables, gin_config
from musiclm_jax.lm import decoder_lm
from musiclm_jax.pipeline import recipe as recipe_lib
from musiclm_jax.soundstream import model as soundstream_model
from musiclm_jax.tasks import stages
from musiclm_jax.w2v_bert import model as w2v_model

SIZES = ("tiny", "small", "paper")


RECIPES = sorted(os.path.basename(f) for f in glob.glob(
    os.path.join(gin_config.configs_dir(), "pipeline", "*.gin")))


def _parse(*files: str, bindings=()) -> None:
  gin.clear_config()
  configurables.import_configurables()
  gin_config.parse_gin_flags(files, ["TOKENS_DIR='/nowhere'", *bindings], finalize=False)


def _recipe(recipe_file: str) -> recipe_lib.Recipe:
  _parse(f"pipeline/{recipe_file}", bindings=["Recipe.work_dir='/nowhere'"])
  try:
    return recipe_lib.Recipe()
  finally:
    gin.clear_config()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stage", stages.STAGES)
def test_stage_file_lengths_and_vocabularies_follow_the_layout(size, stage):
  _check_stage(f"stages/{size}/{stage}.gin", stage)


@pytest.mark.parametrize("recipe_file", RECIPES)
def test_a_recipes_stages_agree_with_its_tokenizers(recipe_file):
  """A recipe's extra bindings (e.g. more k-means clusters) keep every stage's vocabulary
  and the token layout the stages share in step with the tokenizers it fits."""
  recipe = _recipe(recipe_file)
  settings = recipe_lib.size_settings(recipe.size, recipe.extra_bindings)
  layouts = []
  for stage in stages.STAGES:
    layouts.append(_check_stage(f"stages/{recipe.size}/{stage}.gin", stage,
                                recipe_lib.part_bindings(recipe.extra_bindings, stage)))
  assert layouts[0] == layouts[1] == layouts[2]   # export checks this too
  assert layouts[0].semantic_codes == settings["SEMANTIC_CLUSTERS"]
  assert (layouts[0].mulan_levels, layouts[0].mulan_codes) == (
      settings["MULAN_RVQ_LEVELS"], settings["MULAN_RVQ_CODES"])


def _check_stage(gin_file: str, stage: str, bindings=()) -> stages.TokenLayout:
  """Asserts a stage file's lengths and vocabularies follow its TokenLayout; returns it."""
  _parse(gin_file, bindings=bindings)
  try:
    layout = stages.TokenLayout()
    crop = gin.query_parameter(f"{stage}/register_stage_task.crop_seconds")
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    assert (lengths["prefix_tokens"], lengths["targets"]) == layout.lengths(stage, crop)
    assert (gin.query_parameter("%PREFIX_VOCAB_SIZE"),
            gin.query_parameter("%TARGET_VOCAB_SIZE")) == layout.vocab_sizes(stage)
    config = decoder_lm.DecoderConfig()
    assert config.max_length >= sum(layout.lengths(stage, crop))
    # A delay-pattern stage models its frames' levels in parallel: all of them.
    if config.parallel_levels:
      assert stage != "semantic"
      vocabulary, levels = layout.vocab_sizes(stage)[1], layout.acoustic_levels
      assert config.parallel_levels == (layout.coarse_levels if stage == "coarse"
                                        else levels - layout.coarse_levels)
      assert vocabulary == config.parallel_levels * layout.acoustic_codes
    # A crop of whole semantic frames: the generation window is exactly what was trained.
    assert abs(crop * layout.semantic_rate - round(crop * layout.semantic_rate)) < 1e-9
    return layout
  finally:
    gin.clear_config()


@pytest.mark.parametrize("size", SIZES)
def test_stage_layout_matches_the_tokenizers_of_its_size(size):
  try:
    _parse(f"stages/{size}/layout.gin")
    layout = stages.TokenLayout()
    _parse(f"soundstream/{size}.gin")
    codec = soundstream_model.SoundStreamConfig()
    assert (layout.acoustic_levels, layout.acoustic_codes) == (codec.num_quantizers,
                                                               codec.codebook_size)
    assert layout.acoustic_rate * codec.hop_length == codec.sample_rate
    _parse(f"w2v_bert/{size}.gin")
    assert layout.semantic_codes == gin.query_parameter("%SEMANTIC_CLUSTERS")
    assert layout.semantic_rate == w2v_model.W2vBertConfig().frame_rate
    _parse(f"mulan/{size}.gin")
    assert (layout.mulan_levels, layout.mulan_codes) == (
        gin.query_parameter("%MULAN_RVQ_LEVELS"), gin.query_parameter("%MULAN_RVQ_CODES"))
  finally:
    gin.clear_config()
