"""The per-size stage gin files (gin/stages/<size>/<stage>.gin) agree with TokenLayout (crop
lengths, vocabularies) and with the tokenizer gin files of the same size (codec rate,
levels and codes; k-means clusters; MuLan RVQ), so a stage trains on exactly the tokens
that size's tokenizers write. Config parsing only: no training."""

import gin
import pytest

from musiclm_jax import configurables, gin_config
from musiclm_jax.lm import decoder_lm
from musiclm_jax.soundstream import model as soundstream_model
from musiclm_jax.tasks import stages
from musiclm_jax.w2v_bert import model as w2v_model

SIZES = ("tiny", "small", "paper")


def _parse(*files: str) -> None:
  gin.clear_config()
  configurables.import_configurables()
  gin_config.parse_gin_flags(files, ["TOKENS_DIR='/nowhere'"], finalize=False)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("stage", stages.STAGES)
def test_stage_file_lengths_and_vocabularies_follow_the_layout(size, stage):
  _parse(f"stages/{size}/{stage}.gin")
  try:
    layout = stages.TokenLayout()
    crop = gin.query_parameter(f"{stage}/register_stage_task.crop_seconds")
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    assert (lengths["prefix_tokens"], lengths["targets"]) == layout.lengths(stage, crop)
    assert (gin.query_parameter("%PREFIX_VOCAB_SIZE"),
            gin.query_parameter("%TARGET_VOCAB_SIZE")) == layout.vocab_sizes(stage)
    assert decoder_lm.DecoderConfig().max_length >= sum(layout.lengths(stage, crop))
    # A crop of whole semantic frames: the generation window is exactly what was trained.
    assert abs(crop * layout.semantic_rate - round(crop * layout.semantic_rate)) < 1e-9
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
