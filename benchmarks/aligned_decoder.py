r"""What the aligned decoder gives and costs on real tokens: held-out clips rendered from
their own codec tokens by the codec's decoder and by the bundle's aligned one.

  python benchmarks/aligned_decoder.py --work_dir runs/long [--clips 240] [--out FILE]

A pipeline run with `Recipe.aligned_decoder_steps` renders its generation with a decoder
fine-tuned on the coarse stage's teacher-forced draws (`generation/aligned_decoder.py`).
Its gain is measured on generated clips (benchmarks/proof_of_learning.py); this measures
what it does to real tokens, where the real audio is known, at the coarse levels (what the
bundle decodes) and at all levels, by measures that fail differently: FAD (musicnn MTT, to
all the held-out clips: the distribution), and per clip against the real audio
(`evaluation.fidelity`): chroma cosine (pitch), onset F1 (rhythm), mel distance and SI-SDR
(the waveform; the codec's decoder is not phase-exact, so SI-SDR is strongly negative for
both). Writes benchmarks/results/aligned_decoder_<backend>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", required=True, help="a finished pipeline run with an "
                      "aligned decoder (Recipe.aligned_decoder_steps)")
  parser.add_argument("--clips", type=int, default=0,
                      help="held-out clips rendered (0: all of them)")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  if args.clips < 0:
    parser.error(f"--clips must be >= 0, got {args.clips}")

  import machine
  import proof_of_learning
  from musiclm_jax.audio import io as audio_io
  from musiclm_jax.evaluation import embedders, fad, fidelity
  from musiclm_jax.generation import bundle as bundle_lib
  from musiclm_jax.pipeline import recipe as recipe_lib
  from musiclm_jax.soundstream import codec as codec_lib
  start = time.time()
  try:
    recipe = recipe_lib.Recipe.load(args.work_dir)
  except (FileNotFoundError, ValueError) as e:
    parser.error(f"--work_dir: {e}")
  musiclm = bundle_lib.load_bundle(recipe.path("bundle"))
  aligned = musiclm.codec
  if "decoder_finetune" not in (aligned.provenance or {}):
    parser.error(f"--work_dir: {recipe.path('bundle')} renders with the codec's own decoder "
                 "(the run has no aligned decoder)")
  codec = codec_lib.Codec.load(recipe.path("codec"))
  rate = codec.config.sample_rate
  split = proof_of_learning._split  # pylint: disable=protected-access
  test_audio, test_rate = split(recipe, recipe.reference_split)[:2]
  real = np.stack([audio_io.resample(c, test_rate, rate) for c in test_audio])
  count = min(args.clips or len(real), len(real))
  tagger = embedders.get("musicnn_mtt").tagger
  musicnn = lambda audio: tagger.embed_clips(np.stack(
      [audio_io.resample(c, rate, 16000) for c in audio]), outputs=("penultimate",))[
          "penultimate"]
  reference = musicnn(real)
  renderings = {}
  for which, levels in (("coarse", musiclm.layout.coarse_levels),
                        ("all", codec.config.num_quantizers)):
    codes = np.concatenate([codec.encode(real[i:i + 32], levels)
                            for i in range(0, count, 32)])
    for name, decoder in (("codec_decoder", codec), ("aligned_decoder", aligned)):
      audio = np.concatenate([decoder.decode(codes[i:i + 32])
                              for i in range(0, count, 32)])[:, :real.shape[1]]
      renderings[f"{name}_{which}_levels"] = {
          "fad": fad.fad(musicnn(audio), reference, bootstrap=100),
          "fidelity": fidelity.mean_fidelity([
              fidelity.fidelity(r, np.clip(a, -1, 1), rate)
              for r, a in zip(real[:count], audio)])}
  report = {"benchmark": "aligned_decoder", "work_dir": args.work_dir,
            "recipe": {k: getattr(recipe, k) for k in ("size", "stage_steps",
                                                       "aligned_decoder_steps",
                                                       "aligned_decoder_clips")},
            "finetune": aligned.provenance["decoder_finetune"],
            "heldout_clips": count, "coarse_levels": musiclm.layout.coarse_levels,
            "renderings": renderings, "wall_seconds": time.time() - start,
            "machine": machine.describe_jax()}
  print(f"-> {machine.save_result(report, 'aligned_decoder', args.out)}")


if __name__ == "__main__":
  main()
