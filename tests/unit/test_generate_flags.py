"""`musiclm-jax generate`'s sampling flags: the bundle's defaults unless a flag says else."""

import pytest

from musiclm_jax.generation import cli, musiclm


SKIPS_FINE = musiclm.DEFAULT_SAMPLING | {"fine": musiclm.NO_FINE_STAGE}   # the tiny recipes'


def sampling(*flags, defaults=None):
  return cli._sampling(cli.parser().parse_args(["--bundle", "b", "--out", "o.wav", *flags]),
                       defaults)


def test_no_flags_give_the_library_defaults():
  assert sampling() == musiclm.DEFAULT_SAMPLING


def test_flags_override_every_stage_or_one_and_guidance_stays_off_the_fine_stage():
  out = sampling("--temperature", "0.7", "--fine_temperature", "0.3", "--top_k", "50",
                 "--guidance_scale", "2.5")
  assert [out[s].temperature for s in ("semantic", "coarse", "fine")] == [0.7, 0.7, 0.3]
  assert {out[s].top_k for s in out} == {50}
  assert (out["semantic"].guidance_scale, out["coarse"].guidance_scale,
          out["fine"].guidance_scale) == (2.5, 2.5, None)
  assert {s.guidance_scale for s in sampling("--no_guidance").values()} == {None}


def test_no_fine_stage_leaves_the_other_stages_at_their_defaults():
  out = sampling("--no_fine_stage")
  assert out["fine"] is musiclm.NO_FINE_STAGE
  assert (out["semantic"], out["coarse"]) == (musiclm.DEFAULT_SAMPLING["semantic"],
                                              musiclm.DEFAULT_SAMPLING["coarse"])


def test_a_bundle_that_skips_the_fine_stage_skips_it_unless_a_flag_asks_for_it():
  assert sampling(defaults=SKIPS_FINE) == SKIPS_FINE
  assert sampling("--temperature", "0.9", defaults=SKIPS_FINE)["fine"] is musiclm.NO_FINE_STAGE
  assert sampling("--fine_stage", defaults=SKIPS_FINE) == musiclm.DEFAULT_SAMPLING
  out = sampling("--fine_temperature", "0.2", defaults=SKIPS_FINE)
  assert out["fine"] == musiclm.Sampling(temperature=0.2)
  assert out["coarse"] == musiclm.DEFAULT_SAMPLING["coarse"]


@pytest.mark.parametrize("flags, message", [
    (["--top_k", "-3"], "top_k must be >= 0"),
    (["--fine_temperature", "-1"], "temperature must be >= 0"),
    (["--guidance_scale", "-2"], "guidance_scale must be >= 0"),
    (["--no_fine_stage", "--fine_temperature", "0.3"],
     "--no_fine_stage skips the fine stage: --fine_temperature contradicts it"),
    (["--no_fine_stage", "--fine_stage"],
     "--no_fine_stage skips the fine stage: --fine_stage contradicts it")])
def test_bad_sampling_values_are_named(flags, message):
  with pytest.raises(ValueError, match=message):
    sampling(*flags)
