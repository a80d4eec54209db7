"""A decoder for generated tokens: the codec's decoder fine-tuned on the coarse stage's
ground-truth-aligned (GTA) tokens.

The codec's decoder learnt to render the tokens its own encoder makes. The coarse stage
samples tokens that differ from those everywhere a little (at each position it draws from a
distribution around what the music needs), and the decoder renders every slip as if it were
a real code: the generation lands further from real music than the codec's resynthesis does.
The vocoders of text-to-speech meet the same gap and close it the same way (Tacotron 2;
HiFi-GAN's fine-tuning on predicted features): train the vocoder on features the acoustic
model predicts with teacher forcing, which carry its mistakes yet stay aligned, frame by
frame, with the real audio. Here:

  1. `aligned_coarse_tokens`: the coarse stage reads each training clip's real tokens,
     window by window with the generation's windows and overlap, and each position is drawn
     as generation draws it (guidance, temperature, top-k/p) given the real tokens before
     it: tokens [frames, coarse_levels] with the stage's mistakes, aligned with the clip.
     The CLI's `--overlap 0 --no_guidance` draw at a quarter of the cost, a little unlike
     generation's draws: more clips in the same time, which is what the decoder gains from.
  2. `finetune_decoder`: the decoder alone learns to turn those tokens into the clip's real
     audio, with the codec's own reconstruction loss; the encoder and the codebooks stay
     as they are. A reconstruction loss on uncertain tokens hedges toward less energy, so
     the fine-tuned decoder plays the clips several dB quieter than the codec does; its
     output is then scaled (`level_gain`, folded into its last layer) to play the training
     clips' drawn tokens as loud as the codec plays the same clips' real ones.

The result is a codec bundle with the same encoder and codebooks: audio prompts tokenize as
before, the tokens the stages were trained on are unchanged, and only the rendering of the
coarse levels moves. It decodes any number of levels still, but is tuned for the coarse
levels alone (a bundle whose default skips the fine stage).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from musiclm_jax.generation import musiclm as musiclm_lib
from musiclm_jax.lm import decoding, token_layout
from musiclm_jax.soundstream import codec as codec_lib
from musiclm_jax.soundstream import losses
from musiclm_jax.soundstream import model as soundstream_model

# One training clip's tokens: MuLan int32 [mulan_levels], semantic [S], acoustic [F, levels]
# (level ids, no offsets), F >= S * acoustic_rate / semantic_rate.
ClipTokens = Tuple[np.ndarray, np.ndarray, np.ndarray]


def coarse_window_inputs(layout: token_layout.TokenLayout, clip: ClipTokens, start: int,
                         frames: int) -> Tuple[np.ndarray, np.ndarray]:
  """The coarse stage's (prefix [P], decoder input [T]) for semantic frames [start, start +
  frames) of a clip, as the stage was trained (tasks/stages.py): MuLan and semantic ids
  offset into the prefix vocabulary, coarse level q offset by q * acoustic_codes."""
  mulan, semantic, acoustic = clip
  ratio = layout.acoustic_rate // layout.semantic_rate
  qc = layout.coarse_levels
  prefix = np.concatenate([mulan + np.arange(layout.mulan_levels) * layout.mulan_codes,
                           semantic[start:start + frames]
                           + layout.mulan_levels * layout.mulan_codes])
  coarse = acoustic[start * ratio:(start + frames) * ratio, :qc]
  return prefix, (coarse + np.arange(qc) * layout.acoustic_codes).reshape(-1)


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def _draw(model, params, prefix, targets, rng, sampling: musiclm_lib.Sampling,
          bos_id: int, levels: Tuple[int, int]):
  """Teacher-forced draws [B, T] for targets [B, T] given prefix [B, P]."""
  inputs = jnp.concatenate([jnp.full((targets.shape[0], 1), bos_id, jnp.int32),
                            targets[:, :-1]], axis=1)
  logits = model.teacher_forced_logits(
      params, {"prefix_tokens": prefix, "decoder_input_tokens": inputs},
      sampling.guidance_scale)
  level_codes, levels_per_frame = levels
  ids = jnp.arange(logits.shape[-1])
  level = jnp.arange(targets.shape[1]) % levels_per_frame
  # Position i keeps to its level's ids, as `decoding.sample` does (a parallel-level model's
  # logits already do).
  logits = jnp.where(ids[None, None] // level_codes == level[None, :, None], logits,
                     decoding.NEG_INF)
  flat = logits.reshape(-1, logits.shape[-1])
  drawn = decoding.choose_tokens(rng, flat, sampling.temperature, sampling.top_k,
                                 sampling.top_p)
  return drawn.reshape(targets.shape)


def aligned_coarse_tokens(coarse: musiclm_lib.StageLM, layout: token_layout.TokenLayout,
                          clips: Sequence[ClipTokens], window_seconds: float,
                          overlap: float, sampling: musiclm_lib.Sampling, seed: int = 0,
                          batch_windows: int = 64) -> List[np.ndarray]:
  """The coarse stage's teacher-forced draws for each clip: int32 [S * ratio, coarse_levels]
  (level ids), aligned with the clip's real coarse tokens.

  Windows follow generation (`musiclm.window_starts` with the coarse window and overlap):
  each frame is drawn in the window that first reaches it, after the overlap's real frames,
  so every draw has the context it would have when generated. Clips shorter than a window
  are drawn in one window of their own length.
  """
  ratio = layout.acoustic_rate // layout.semantic_rate
  qc, codes = layout.coarse_levels, layout.acoustic_codes
  window = max(1, int(round(window_seconds * layout.semantic_rate)))
  out, jobs = [], []
  for clip in clips:
    frames = min(len(clip[1]), len(clip[2]) // ratio)
    if frames < 1:
      raise ValueError(f"a clip with {len(clip[1])} semantic and {len(clip[2])} acoustic "
                       "frames has no whole semantic frame")
    out.append(np.full((frames * ratio, qc), -1, np.int32))
    size = min(window, frames)
    done = 0
    for start in musiclm_lib.window_starts(frames, size, int(size * overlap)):
      jobs.append((len(out) - 1, start, size, done))
      done = start + size
  rng = jax.random.key(seed)
  model, cfg = coarse.model, coarse.model.config
  # Jobs of one window size share a compiled program; a clip shorter than the window adds
  # one more.
  jobs.sort(key=lambda job: job[2])
  for i in range(0, len(jobs), batch_windows):
    batch = jobs[i:i + batch_windows]
    for size in sorted({job[2] for job in batch}):
      group = [job for job in batch if job[2] == size]
      prefix, targets = map(np.stack, zip(*(coarse_window_inputs(layout, clips[c], start, size)
                                            for c, start, size, _ in group)))
      drawn = np.asarray(_draw(model, coarse.params, jnp.asarray(prefix, jnp.int32),
                               jnp.asarray(targets, jnp.int32),
                               jax.random.fold_in(rng, i + size), sampling, cfg.bos_id,
                               (codes, qc)))
      for (c, start, size, done), tokens in zip(group, drawn):
        tokens = tokens.reshape(size * ratio, qc) - np.arange(qc) * codes
        first = max(done - start, 0) * ratio
        out[c][start * ratio + first:(start + size) * ratio] = tokens[first:]
  return out


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """The decoder's fine-tuning (an Adam run on reconstruction alone, as the codec's warm-up
  trains: the codecs here have no adversarial phase).

  Attributes:
    steps: optimizer steps.
    batch_size: crops a step.
    crop_frames: codec frames a crop (its audio is crop_frames * hop samples).
    learning_rate: Adam's (b1 0.5, b2 0.9, as the codec's own training), constant.
    ema_decay: the exported parameters are this EMA of the steps'.
    clip_norm: global gradient-norm clip.
    seed: crops (and the level's clips) drawn from this seed.
    level_clips: the output level is matched to the codec's on this many clips (0: left
      as trained).
  """
  steps: int = 1500
  batch_size: int = 16
  crop_frames: int = 100
  learning_rate: float = 3e-4
  ema_decay: float = 0.998
  clip_norm: float = 10.0
  seed: int = 0
  level_clips: int = 64


def rms_db(wave: np.ndarray) -> np.ndarray:
  """Level in dB (20 log10 of the RMS) of each clip of [batch, samples]: [batch]."""
  power = np.mean(np.square(np.asarray(wave, np.float64)), axis=-1)
  return 10 * np.log10(np.maximum(power, 1e-20))


def level_gain(codec: codec_lib.Codec, tuned: codec_lib.Codec,
               pairs: Sequence[Tuple[np.ndarray, np.ndarray]]) -> float:
  """The factor that makes `tuned` play the (audio [samples], codes [frames, q]) pairs'
  codes as loud as `codec` plays the audio's own codes at all its levels (its
  resynthesis): the median over clips of the level difference, as an amplitude ratio."""
  gaps = []
  for wave, tokens in pairs:
    real = codec.encode(wave[None])
    gaps.append(rms_db(codec.decode(real))[0] - rms_db(tuned.decode(tokens[None]))[0])
  return float(10 ** (np.median(gaps) / 20))


def with_output_gain(codec: codec_lib.Codec, gain: float) -> codec_lib.Codec:
  """The codec with its decoder's output multiplied by `gain`, exactly: the decoder's
  last layer is linear (no tanh, seanet.py), so its weights and bias are scaled."""
  params = codec.variables["params"]
  project = dict(params["decoder"]["project"])
  weight = "scale" if "scale" in project else "kernel"   # weight-normalised or not
  for name in (weight, "bias"):
    project[name] = np.asarray(project[name]) * np.float32(gain)
  decoder = {**params["decoder"], "project": project}
  scaled = codec_lib.Codec(codec.config, {**codec.variables,
                                          "params": {**params, "decoder": decoder}})
  scaled.provenance = codec.provenance
  return scaled


def finetune_decoder(codec: codec_lib.Codec, audio: Sequence[np.ndarray],
                     codes: Sequence[np.ndarray], config: FinetuneConfig = FinetuneConfig(),
                     log: Optional[Callable[[str], None]] = print) -> Tuple[codec_lib.Codec,
                                                                            List[float]]:
  """The codec with its decoder fine-tuned to render `codes` as `audio`.

  Args:
    codec: the codec (its encoder and codebooks are kept).
    audio: per clip float32 [samples] at the codec's rate.
    codes: per clip int [frames, q] (level ids, q <= the codec's levels, the same q for
      every clip): what the decoder will be given for it (e.g. `aligned_coarse_tokens`).
      Clips may differ in length; each is used for as many whole frames as both its codes
      and its audio hold, and clips shorter than a crop are left out.
    config: the run's settings.
    log: called with a progress line every 100 steps (None: silent).
  Returns:
    (the fine-tuned codec, its provenance extended; the mean loss of every 100 steps).
  """
  hop, span = codec.config.hop_length, config.crop_frames
  if len(audio) != len(codes):
    raise ValueError(f"{len(audio)} clips of audio but {len(codes)} of codes")
  pairs = []
  for wave, tokens in zip(audio, codes):
    wave, tokens = np.asarray(wave, np.float32), np.asarray(tokens, np.int32)
    if wave.ndim != 1 or tokens.ndim != 2:
      raise ValueError(f"each clip's audio must be [samples] and codes [frames, levels], got "
                       f"{wave.shape} and {tokens.shape}")
    frames = min(len(tokens), len(wave) // hop)
    if frames >= span:
      pairs.append((wave[:frames * hop], tokens[:frames]))
  if not pairs:
    raise ValueError(f"no clip holds a crop of {span} frames ({span * hop} samples)")
  if len({tokens.shape[1] for _, tokens in pairs}) > 1:
    raise ValueError("every clip's codes must have the same number of levels")
  variables = codec.variables
  frozen = {k: v for k, v in variables["params"].items() if k != "decoder"}
  optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm),
                          optax.adam(config.learning_rate, b1=0.5, b2=0.9))

  def loss_fn(decoder, crop_codes, crop_audio):
    rendered = codec.module.apply(
        {**variables, "params": {**frozen, "decoder": decoder}}, crop_codes,
        method=soundstream_model.SoundStream.decode)
    return losses.multi_scale_spectral_loss(crop_audio, rendered, codec.config.sample_rate)

  @jax.jit
  def step(decoder, opt_state, ema, crop_codes, crop_audio):
    loss, grads = jax.value_and_grad(loss_fn)(decoder, crop_codes, crop_audio)
    updates, opt_state = optimizer.update(grads, opt_state, decoder)
    decoder = optax.apply_updates(decoder, updates)
    ema = jax.tree.map(lambda e, p: config.ema_decay * e + (1 - config.ema_decay) * p, ema,
                       decoder)
    return decoder, opt_state, ema, loss

  decoder = ema = variables["params"]["decoder"]
  opt_state = optimizer.init(decoder)
  rng = np.random.default_rng(config.seed)
  recent, curve, started = [], [], time.time()
  for i in range(1, config.steps + 1):
    crops = []
    for c in rng.integers(0, len(pairs), config.batch_size):
      wave, tokens = pairs[c]
      f = int(rng.integers(0, len(tokens) - span + 1))
      crops.append((tokens[f:f + span], wave[f * hop:(f + span) * hop]))
    crop_codes, crop_audio = map(np.stack, zip(*crops))
    decoder, opt_state, ema, loss = step(decoder, opt_state, ema, crop_codes, crop_audio)
    recent.append(float(loss))
    if i % 100 == 0 or i == config.steps:
      curve.append(float(np.mean(recent)))
      recent = []
      if log is not None:
        log(f"decoder step {i}/{config.steps}: reconstruction loss {curve[-1]:.1f} "
            f"({time.time() - started:.0f} s)")
  tuned = codec_lib.Codec(codec.config, {**variables,
                                         "params": {**frozen, "decoder": jax.device_get(ema)}})
  gain = 1.0
  if config.level_clips:
    chosen = rng.permutation(len(pairs))[:config.level_clips]
    gain = level_gain(codec, tuned, [pairs[c] for c in sorted(chosen)])
    tuned = with_output_gain(tuned, gain)
    if log is not None:
      log(f"decoder output scaled by {20 * np.log10(gain):+.2f} dB to the codec's level")
  tuned.provenance = {**(codec.provenance or {}),
                      "decoder_finetune": {**dataclasses.asdict(config),
                                           "clips": len(pairs),
                                           "levels": int(pairs[0][1].shape[1]),
                                           "loss_every_100_steps": curve,
                                           "output_gain_db": float(20 * np.log10(gain))}}
  return tuned, curve


def read_clips(tokens_dir: str, tfds_name: str, data_dir: str, split: str,
               max_clips: int, sample_rate: int, seed: int = 0
               ) -> Tuple[List[ClipTokens], List[np.ndarray]]:
  """Up to `max_clips` clips of a split (a seeded sample): their tokens from the tokenize
  job's shards and their audio from the TFDS set they were made from (resampled to
  `sample_rate`), matched by id. Clips missing from either side are left out."""
  import glob  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from musiclm_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
  from musiclm_jax.tasks import stages  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(os.path.join(tokens_dir, f"{split}-*.tfrecord")))
  if not files:
    raise FileNotFoundError(f"{tokens_dir}: no {split} token shards ({split}-*.tfrecord)")
  tokens = {ex["id"].decode(): ex for ex in
            tfds.as_numpy(stages.parse_tokens(tf.data.TFRecordDataset(files)))}
  keep = sorted(tokens)
  np.random.default_rng(seed).shuffle(keep)
  keep = set(keep[:max_clips])
  clips, audio = [], []
  for row in tfds.as_numpy(tfds.load(tfds_name, split=split, data_dir=data_dir)):
    ex = tokens.get(row["id"].decode())
    if ex is None or row["id"].decode() not in keep:
      continue
    clips.append((ex["mulan_tokens"], ex["semantic_tokens"], ex["acoustic_tokens"]))
    audio.append(audio_io.resample(np.asarray(row["audio"], np.float32),
                                   int(row["sample_rate"]), sample_rate))
  if not clips:
    raise ValueError(f"no clip of {tokens_dir} ({split}) is in {tfds_name} at {data_dir}")
  return clips, audio


def main(argv=None) -> None:
  """`musiclm-jax align-decoder`: a codec bundle whose decoder is fine-tuned on the coarse
  stage's ground-truth-aligned tokens (see the module docstring)."""
  from musiclm_jax import cli_utils  # pylint: disable=g-import-not-at-top
  from musiclm_jax.generation import export  # pylint: disable=g-import-not-at-top
  guided = musiclm_lib.DEFAULT_SAMPLING["coarse"]
  parser = cli_utils.ArgumentParser(prog="musiclm-jax align-decoder",
                                    description=cli_utils.first_paragraph(__doc__))
  parser.add_argument("--out", type=cli_utils.output_path, required=True,
                      help="codec bundle folder to write")
  parser.add_argument("--codec", required=True, help="the codec bundle the tokens were made "
                      "with (codec export, or pretrained:<name>)")
  parser.add_argument("--coarse_stage_dir", required=True, help="coarse stage training run")
  parser.add_argument("--tokens", required=True, help="the tokenize job's folder")
  parser.add_argument("--dataset", required=True, help="the TFDS set the tokens were made "
                      "from (name/config)")
  parser.add_argument("--data_dir", default=None, help="its TFDS data_dir")
  parser.add_argument("--split", default="train")
  parser.add_argument("--clips", type=cli_utils.positive_int, default=1000,
                      help="draw the tokens of at most this many clips (a seeded sample)")
  defaults = FinetuneConfig()
  parser.add_argument("--steps", type=cli_utils.positive_int, default=defaults.steps)
  parser.add_argument("--batch_size", type=cli_utils.positive_int,
                      default=defaults.batch_size)
  parser.add_argument("--learning_rate", type=float, default=defaults.learning_rate)
  parser.add_argument("--crop_frames", type=cli_utils.positive_int,
                      default=defaults.crop_frames, help="codec frames a training crop")
  parser.add_argument("--level_clips", type=int, default=defaults.level_clips,
                      help="match the output level to the codec's on this many clips "
                           "(0: leave it as trained)")
  parser.add_argument("--temperature", type=float, default=guided.temperature)
  parser.add_argument("--top_k", type=int, default=guided.top_k)
  guidance = parser.add_mutually_exclusive_group()
  guidance.add_argument("--guidance_scale", type=float, default=guided.guidance_scale)
  guidance.add_argument("--no_guidance", action="store_true",
                        help="draw unguided (one pass of the stage, not two: half the time)")
  parser.add_argument("--overlap", type=float, default=musiclm_lib.Windows().overlap,
                      help="the draw windows' overlap, a fraction in [0, 1) (default: "
                           "generation's; 0 puts them side by side: half the time)")
  parser.add_argument("--seed", type=int, default=0)

  def go(args):
    import gin  # pylint: disable=g-import-not-at-top
    if not 0.0 <= args.overlap < 1.0:
      raise ValueError(f"--overlap: {args.overlap} is not in [0, 1)")
    if args.level_clips < 0:
      raise ValueError(f"--level_clips: {args.level_clips} is negative")
    sampling = musiclm_lib.Sampling(
        temperature=args.temperature, top_k=args.top_k,
        guidance_scale=None if args.no_guidance else args.guidance_scale)
    config = dataclasses.replace(defaults, steps=args.steps, batch_size=args.batch_size,
                                 learning_rate=args.learning_rate,
                                 crop_frames=args.crop_frames, seed=args.seed,
                                 level_clips=args.level_clips)
    coarse, layout, crop = export.load_stage_run("coarse", args.coarse_stage_dir, None, True)
    gin.clear_config()
    codec = codec_lib.Codec.load(args.codec)
    if (layout.acoustic_levels, layout.acoustic_codes) != (codec.config.num_quantizers,
                                                           codec.config.codebook_size):
      raise ValueError(f"{args.codec}: {codec.config.num_quantizers} levels x "
                       f"{codec.config.codebook_size} codes, but the coarse stage was trained "
                       f"on {layout.acoustic_levels} x {layout.acoustic_codes}")
    from musiclm_jax.tasks import stages  # pylint: disable=g-import-not-at-top
    stages.check_tokens_layout(args.tokens, layout)
    started = time.time()
    clips, audio = read_clips(args.tokens, args.dataset, args.data_dir, args.split,
                              args.clips, codec.config.sample_rate, args.seed)
    drawn = aligned_coarse_tokens(coarse, layout, clips, crop, args.overlap, sampling,
                                  args.seed)
    agree = np.mean(np.concatenate([d == c[2][:len(d), :layout.coarse_levels]
                                    for d, c in zip(drawn, clips)]), axis=0)
    print(f"{len(clips)} clips: coarse tokens drawn teacher-forced in "
          f"{time.time() - started:.0f} s; they agree with the real ones at "
          f"{', '.join(f'{a:.2f}' for a in agree)} (levels 1..{layout.coarse_levels})")
    tuned, curve = finetune_decoder(codec, audio, drawn, config)
    tuned.provenance["decoder_finetune"].update(
        {"coarse_stage_dir": args.coarse_stage_dir, "tokens": args.tokens,
         "sampling": dataclasses.asdict(sampling), "window_overlap": args.overlap,
         "agreement_with_real_tokens": [float(a) for a in agree]})
    tuned.save(args.out)
    print(f"decoder fine-tuned {config.steps} steps (loss {curve[0]:.1f} -> {curve[-1]:.1f})"
          f" -> codec bundle {args.out}")

  parser.set_defaults(run=go)
  cli_utils.run(parser, argv)


if __name__ == "__main__":
  main()
