r"""SoundStream reconstruction quality against Opus at 3, 6 and 12 kbps.

  python benchmarks/codec_quality.py [--size cpu|small|paper] [--train_minutes 20]
      [--eval_clips 12] [--batch N] [--crop_seconds S] [--gin 'BINDING' ...] [--out FILE]
  # train where there is no network or Opus (a GPU machine), evaluate here:
  python benchmarks/codec_quality.py --size small --train_minutes 6 --eval_clips 0 \
      --train_audio_dir .gpu/train_24k --bundle_out OUT/codec --bundle_dtype float16
  python benchmarks/codec_quality.py --bundle OUT/codec [--out FILE]

What it does:

1. Data. Fetches Debian's wesnoth-1.16-music (41 OGG tracks; `audio.debian_music`) and
   splits it by sorted file name: every 8th file (indices 0, 8, 16, ..., i.e. 6 tracks) is
   held out for evaluation, the other 35 train. The training tracks are decoded once into
   memory at 24 kHz mono (`audio.io.load_audio`), and each step takes a batch of random
   crops (track chosen in proportion to its length, offset uniform). No TFDS dataset: the
   whole set fits in memory, and this is the simplest path that cannot go stale.
2. Training. In-process GAN training with `training.trainer.Trainer` on one device, no
   checkpoints (as `tests/soundstream_fixtures.train`), for a wall-clock budget
   (--train_minutes, counted from the first step, its compilation included). The model
   comes from gin: `gin/soundstream/<size>.gin` (small, paper), or for `--size cpu`
   small.gin with narrower networks (C=8, D=32, tiny discriminators, learning rate 1e-3),
   so that a 2-core CPU runs a useful number of steps. Every size is 24 kHz, hop 480
   (50 frames/s), 12 levels x 1024 codes: 6 kbps at 12 levels, 3 kbps at 6 levels (the
   tiny size is 16 kHz with 4 x 32 codes and cannot be compared at these bitrates). The
   discriminators start after `SoundStreamModel.discriminator_warmup_steps` (2000 in
   small.gin): shorter runs train on the reconstruction loss alone. Parameters are the raw
   ones (no EMA). Extra `--gin` bindings override anything. Batches: 8 crops of 0.5 s for
   cpu, 16 of 1 s (as runs/soundstream.gin) for small and paper (--batch, --crop_seconds).
3. Evaluation. --eval_clips 10 s clips of the held-out tracks (clip j of k per track starts
   at (j + 1) / (k + 1) of the way through, so none is an intro or a fade-out), encoded with
   12 levels and decoded with 12 (6 kbps) and 6 (3 kbps). Opus gets the same clips at the
   same nominal bitrates: opus-tools' `opusenc --bitrate B --hard-cbr` / `opusdec`, taken
   from Debian with `apt-get download` + `dpkg-deb -x` when not installed (then ffmpeg's
   libopus, then libsndfile's Opus writer, whichever works first). Opus runs at 48 kHz, so
   clips are resampled 24 -> 48 kHz before encoding and back after decoding
   (`audio.io.resample`, soxr HQ). Its actual bitrate is reported next to the nominal one:
   the whole file (bytes * 8 / seconds, Ogg pages and headers included) and, where
   `opusinfo` reports it, the Opus payload alone.
4. Measures, per clip, on the decoded audio clipped to [-1, 1] and cut to the original's
   length (neither decoder is delay-compensated): `evaluation.fidelity` (chroma cosine with
   its flat, shuffled and static baselines, onset F1, SI-SDR, multi-resolution STFT
   distance, mel distance, lag), and the bandwidth below which 99.9% of the energy lies.
   The codec at full and half bitrate, Opus at 3, 6 and 12 kbps, and anchors (white noise
   at the clips' RMS, the originals low-passed at 2 and 4 kHz). The decoder must use its
   codes: each clip is also decoded from another clip's codes.
   `meets_target`: at full bitrate the codec beats Opus at 6 kbps on chroma and onsets with
   SI-SDR within 3 dB; at half bitrate it beats Opus at 6 kbps on two of chroma, onsets,
   SI-SDR and STFT distance. Mel distance is reported but not a target: a blur passes it.
   --eval_data tfds:NAME/CONFIG:SPLIT scores a bundle on a TFDS split instead (e.g. the
   demo's held-out renders at 16 kHz).

Writes benchmarks/results/codec_quality_<backend>.json (machine, config, training budget
and final losses, clips, per-clip and mean metrics, the Opus tool and version) and prints a
table.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import gin
import jax
import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # noqa: E402
from musiclm_jax import gin_config  # noqa: E402
from musiclm_jax.audio import debian_music, io as audio_io  # noqa: E402
from musiclm_jax.evaluation import fidelity  # noqa: E402
from musiclm_jax.soundstream import codec as codec_lib, model as model_lib  # noqa: E402,F401
from musiclm_jax.training import partitioning, train_loop, trainer as trainer_lib  # noqa: E402

SAMPLE_RATE = 24000
OPUS_RATE = 48000
PACKAGE = "wesnoth-1.16-music"
HOLDOUT_EVERY = 8
OPUS_KBPS = (3.0, 6.0, 12.0)
SI_SDR_MARGIN_DB = 3.0   # "SI-SDR within a few dB of Opus"
# The fidelity measures compared, and whether higher is better. The targets count the first
# four: mel distance is reported, but a blur passes it (docs/codec.md).
MEASURES = {"chroma_cosine": True, "onset_f1": True, "si_sdr_db": True,
            "stft_distance": False, "mel_distance": False}
TARGET_MEASURES = ("chroma_cosine", "onset_f1", "si_sdr_db", "stft_distance")
TOOLS_CACHE = os.path.join(debian_music.DEFAULT_CACHE, "tools")

# --size cpu: small.gin, narrowed until a 2-core CPU trains ~1 step/s (batch 8 x 0.5 s).
CPU_BINDINGS = (
    "SoundStreamConfig.channels = 8",
    "SoundStreamConfig.embedding_dim = 32",
    "SoundStreamConfig.stft_channels = 4",
    "SoundStreamConfig.wave_channels = 4",
    "SoundStreamConfig.wave_max_channels = 32",
    "CODEC_LEARNING_RATE = 1e-3",
)
SIZES = {"cpu": ("soundstream/small.gin", CPU_BINDINGS, 8, 0.5),
         "small": ("soundstream/small.gin", (), 16, 1.0),
         "paper": ("soundstream/paper.gin", (), 16, 1.0)}


# ---- model --------------------------------------------------------------------------------


@gin.configurable
def _benchmark_model(model=gin.REQUIRED):
  return model


def build_model(size: str, extra_bindings):
  """(SoundStreamModel, description) from the size's gin file and bindings."""
  gin_file, bindings, _, _ = SIZES[size]
  # The codec's configurables only: import_configurables() would import the SeqIO tasks,
  # and with them TensorFlow, which a GPU machine may not have.
  from musiclm_jax.training import optimizers  # noqa: F401  pylint: disable=g-import-not-at-top
  bindings = list(bindings) + list(extra_bindings) + ["_benchmark_model.model = %MODEL"]
  gin_config.parse_gin_flags([gin_file], bindings, finalize=False)
  model = _benchmark_model()
  info = {"size": size, "gin_file": gin_file, "gin_bindings": bindings[:-1],
          "learning_rate": gin.query_parameter("CODEC_LEARNING_RATE/macro.value"),
          "discriminator_warmup_steps": model.discriminator_warmup_steps}
  return model, info


# ---- data ---------------------------------------------------------------------------------


def split_tracks(files):
  """(train, held out): every HOLDOUT_EVERY-th file by sorted name is held out."""
  files = sorted(files)
  held = files[::HOLDOUT_EVERY]
  return [f for f in files if f not in held], held


def load_tracks(paths, sample_rate: int = SAMPLE_RATE):
  """{path: [samples] at sample_rate}, unusable files (e.g. silence.ogg) skipped, counted."""
  tracks, skipped = {}, audio_io.SkipCounter()
  for path in paths:
    try:
      tracks[path] = audio_io.load_audio(path, sample_rate)
    except audio_io.AudioError as e:
      skipped.add(e)
  return tracks, skipped


def eval_clips(held_tracks, count: int, seconds: float, sample_rate: int = SAMPLE_RATE):
  """Up to `count` fixed clips: [(name, start_s, wave)], k = ceil(count / tracks) each."""
  n = int(seconds * sample_rate)
  per_track = math.ceil(count / len(held_tracks))
  clips = []
  for j in range(per_track):  # clip j of every track before clip j + 1 of any
    for path, wave in held_tracks.items():
      if wave.shape[0] < n:
        continue
      start = int((j + 1) / (per_track + 1) * (wave.shape[0] - n))
      clips.append((os.path.basename(path), start / sample_rate, wave[start:start + n]))
  return clips[:count]


class CropSampler:
  """Random crops [batch, crop] of the training tracks, tracks weighted by length: a batch
  factory for `train_loop.BatchFactory` (`sampler(batch, rng)`)."""

  def __init__(self, tracks, crop: int):
    self.waves = [w for w in tracks.values() if w.shape[0] >= crop]
    if not self.waves:
      raise ValueError(f"no track is as long as one crop ({crop} samples)")
    lengths = np.array([w.shape[0] - crop + 1 for w in self.waves], np.float64)
    self.p = lengths / lengths.sum()
    self.crop = crop

  def __call__(self, batch: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((batch, self.crop), np.float32)
    for i, t in enumerate(rng.choice(len(self.waves), size=batch, p=self.p)):
      start = rng.integers(0, self.waves[t].shape[0] - self.crop + 1)
      out[i] = self.waves[t][start:start + self.crop]
    return out


# ---- training -----------------------------------------------------------------------------


def train(model, sampler, batch: int, minutes: float, seed: int, log_every: int):
  """Trains until the budget is spent (the library's train loop, batches from memory, no
  checkpoints); returns (state, report)."""
  partitioner = partitioning.Partitioner(devices=jax.devices()[:1])
  trainer = trainer_lib.Trainer(model, partitioner, seed=seed)
  state = trainer.create_state({"audio": (batch, sampler.crop)})
  batches = train_loop.BatchFactory(lambda rng: {"audio": sampler(batch, rng)}, seed)
  history, start = [], time.perf_counter()
  load_before = os.getloadavg()  # other work on a shared machine slows the steps

  def on_step(step, scalars):
    history.append(scalars)
    if step % log_every == 0:
      print(f"step {step:5d}  {time.perf_counter() - start:7.1f} s  "
            f"reconstruction {scalars.get('generator/reconstruction', float('nan')):8.2f}  "
            f"perplexity {scalars.get('generator/codebook_perplexity', float('nan')):7.1f}",
            flush=True)

  result = train_loop.run(trainer, state, 0, batches, total_steps=10**9,
                          max_seconds=minutes * 60.0, on_step=on_step)
  steps, wall = result.step, result.seconds
  last = history[-min(50, steps):]
  final = {k: float(np.mean([h[k] for h in last])) for k in last[0]}
  return result.state, {
      "budget_minutes": minutes, "wall_seconds": wall, "steps": steps,
      "first_step_seconds_incl_compile": result.first_step_seconds,
      "steps_per_second_after_first": (steps - 1) / max(wall - result.first_step_seconds,
                                                        1e-9),
      "load_average_1_5_15min_before": load_before,
      "load_average_1_5_15min_after": os.getloadavg(),
      "batch": batch, "crop_seconds": sampler.crop / SAMPLE_RATE,
      "audio_seconds_seen": steps * batch * sampler.crop / SAMPLE_RATE,
      "adversarial_started": steps > model.discriminator_warmup_steps,
      "final_train_metrics_mean_last_steps": len(last), "final_train_metrics": final,
      "first_step_metrics": history[0]}


# ---- metrics ------------------------------------------------------------------------------


def bandwidth_hz(wave: np.ndarray, sample_rate: int) -> float:
  """Frequency below which 99.9% of the clips' energy lies (a band-limit indicator)."""
  power = np.mean(np.abs(np.fft.rfft(wave, axis=-1)) ** 2, axis=0)
  cumulative = np.cumsum(power) / max(power.sum(), 1e-30)
  return float(np.searchsorted(cumulative, 0.999) * sample_rate / wave.shape[-1])


def rms_dbfs(wave: np.ndarray) -> float:
  return float(20 * np.log10(np.sqrt(np.mean(np.square(wave, dtype=np.float64))) + 1e-12))


def score(ref: np.ndarray, decoded: np.ndarray, sample_rate: int) -> dict:
  """Mean and per-clip `evaluation.fidelity` measures of decoded [clips, samples] (clipped
  to [-1, 1], cut to the reference's length) against ref [clips, samples]."""
  decoded = np.clip(decoded[:, :ref.shape[1]], -1.0, 1.0).astype(np.float32)
  if decoded.shape != ref.shape:
    raise ValueError(f"decoded {decoded.shape} vs reference {ref.shape}")
  per_clip = [fidelity.fidelity(r, d, sample_rate) for r, d in zip(ref, decoded)]
  mean = fidelity.mean_fidelity(per_clip)
  mean.pop("lag_samples")
  columns = {name: [clip[name] for clip in per_clip] for name in per_clip[0]}
  return {**mean, "bandwidth_99_9_hz": bandwidth_hz(decoded, sample_rate),
          "per_clip": {**columns, "rms_dbfs": [rms_dbfs(d) for d in decoded]}}


def beats(result: dict, anchor: dict) -> dict:
  """{measure: True where `result` is better than `anchor`} (higher or lower is better)."""
  return {name: bool(result[name] > anchor[name]) if higher else
          bool(result[name] < anchor[name]) for name, higher in MEASURES.items()}


def targets(results: dict, full: str, half: str) -> dict:
  """The codec against Opus at 6 kbps: at full bitrate better on chroma and onsets and
  SI-SDR within SI_SDR_MARGIN_DB; at half bitrate better on at least two TARGET_MEASURES."""
  opus6 = results["opus"]["6kbps"]
  at_full, at_half = results["codec"][full], results["codec"][half]
  better_half = beats(at_half, opus6)
  return {
      f"{full}_vs_opus_6kbps": beats(at_full, opus6),
      f"{full}_meets": bool(at_full["chroma_cosine"] > opus6["chroma_cosine"]
                            and at_full["onset_f1"] > opus6["onset_f1"]
                            and at_full["si_sdr_db"] > opus6["si_sdr_db"] - SI_SDR_MARGIN_DB),
      f"{half}_vs_opus_6kbps": better_half,
      f"{half}_meets": sum(better_half[m] for m in TARGET_MEASURES) >= 2}


def anchors(ref: np.ndarray, sample_rate: int, seed: int) -> dict:
  """Reference points for the measures on the same clips: what silence, noise and a
  band-limited copy of the original score (the chroma and onsets of noise are chance)."""
  spectrum = np.fft.rfft(ref, axis=-1)
  freqs = np.fft.rfftfreq(ref.shape[-1], 1 / sample_rate)
  lowpass = lambda hz: np.fft.irfft(np.where(freqs > hz, 0, spectrum), ref.shape[-1], axis=-1)
  noise = np.random.default_rng(seed).standard_normal(ref.shape) * ref.std(axis=1,
                                                                            keepdims=True)
  cases = {"white_noise_same_rms": noise, "original_lowpassed_2khz": lowpass(2000),
           "original_lowpassed_4khz": lowpass(4000)}
  return {name: {k: v for k, v in score(ref, wave, sample_rate).items() if k != "per_clip"}
          for name, wave in cases.items()}


# ---- Opus ---------------------------------------------------------------------------------


def _installed(package: str) -> bool:
  r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                     text=True)
  return r.returncode == 0 and "install ok installed" in r.stdout


def debian_tool(package: str) -> str:
  """Unpacks `package` and its missing dependencies (apt-get download, no root, no
  install) into TOOLS_CACHE/package once; returns that root."""
  root = os.path.join(TOOLS_CACHE, package)
  if os.path.isfile(os.path.join(root, ".complete")):
    return root
  deps = subprocess.run(
      ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
       "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", package],
      capture_output=True, text=True, check=True).stdout
  names = {package} | {l.strip() for l in deps.splitlines()
                       if l and not l[0].isspace() and not l.startswith("<")}
  missing = sorted(n for n in names if not _installed(n))
  os.makedirs(TOOLS_CACHE, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=TOOLS_CACHE) as tmp:
    subprocess.run(["apt-get", "download", *missing], cwd=tmp, capture_output=True,
                   check=True)
    unpacked = os.path.join(tmp, "root")
    for deb in glob.glob(os.path.join(tmp, "*.deb")):
      subprocess.run(["dpkg-deb", "-x", deb, unpacked], check=True)
    with open(os.path.join(unpacked, ".complete"), "w", encoding="utf-8") as f:
      f.write("\n".join(missing))
    if os.path.exists(root):
      shutil.rmtree(root)
    os.replace(unpacked, root)
  return root


class CommandLineOpus:
  """opus-tools or ffmpeg, from PATH or unpacked from Debian."""

  def __init__(self, kind: str):
    self.kind = kind
    names = {"opus-tools": ("opusenc", "opusdec", "opusinfo"), "ffmpeg": ("ffmpeg",)}[kind]
    self.env = dict(os.environ)
    if all(shutil.which(n) for n in names):
      self.bin, self.source = {n: shutil.which(n) for n in names}, "installed (PATH)"
    else:
      root = debian_tool(kind)
      libs = [os.path.dirname(p) for p in glob.glob(os.path.join(root, "usr", "lib", "**",
                                                                 "*.so*"), recursive=True)]
      self.env["LD_LIBRARY_PATH"] = ":".join(sorted(set(libs)) + [
          self.env.get("LD_LIBRARY_PATH", "")])
      self.bin = {n: os.path.join(root, "usr", "bin", n) for n in names}
      self.source = f"Debian package unpacked into {root} (apt-get download + dpkg-deb -x)"
    first = self.bin[names[0]]
    out = self._run([first, "--version" if kind == "opus-tools" else "-version"])
    self.version = out.splitlines()[0].strip()

  def _run(self, cmd) -> str:
    r = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
    if r.returncode != 0:
      raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()[-500:]}")
    return r.stdout + r.stderr

  def command(self, kbps: float) -> str:
    if self.kind == "opus-tools":
      return f"opusenc --bitrate {kbps:g} --hard-cbr; opusdec --rate 48000 --float"
    return f"ffmpeg -c:a libopus -b:a {kbps:g}k -vbr off -application audio"

  def roundtrip(self, wave48: np.ndarray, kbps: float, tmp: str):
    """(decoded at 48 kHz, Opus file bytes, payload kbps or None)."""
    src, enc, dec = (os.path.join(tmp, n) for n in ("in.wav", "out.opus", "dec.wav"))
    sf.write(src, wave48, OPUS_RATE, subtype="PCM_24")
    payload = None
    if self.kind == "opus-tools":
      self._run([self.bin["opusenc"], "--bitrate", f"{kbps:g}", "--hard-cbr", "--quiet",
                 src, enc])
      self._run([self.bin["opusdec"], "--rate", str(OPUS_RATE), "--float", "--quiet", enc,
                 dec])
      match = re.search(r"w/o overhead: ([\d.]+) kbit/s",
                        self._run([self.bin["opusinfo"], enc]))
      payload = float(match.group(1)) if match else None
    else:
      self._run([self.bin["ffmpeg"], "-y", "-v", "error", "-i", src, "-c:a", "libopus",
                 "-b:a", f"{kbps:g}k", "-vbr", "off", "-application", "audio", enc])
      self._run([self.bin["ffmpeg"], "-y", "-v", "error", "-i", enc, "-ar", str(OPUS_RATE),
                 "-c:a", "pcm_f32le", dec])
    decoded, _ = sf.read(dec, dtype="float32", always_2d=True)
    return decoded[:, 0], os.path.getsize(enc), payload


class SoundfileOpus:
  """libsndfile's Ogg/Opus writer; its only rate control is `compression_level`, which
  is chosen per nominal bitrate (on the first clip) to land closest to it."""

  kind = "libsndfile"

  def __init__(self):
    self.version, self.source = sf.__libsndfile_version__, "soundfile (libsndfile)"
    self._level = {}

  def command(self, kbps: float) -> str:
    return f"soundfile OGG/OPUS compression_level={self._level.get(kbps)}"

  def _write(self, wave48, level, path):
    sf.write(path, wave48, OPUS_RATE, format="OGG", subtype="OPUS", compression_level=level)
    return os.path.getsize(path) * 8 / (wave48.shape[0] / OPUS_RATE) / 1000

  def roundtrip(self, wave48, kbps, tmp):
    path = os.path.join(tmp, "out.ogg")
    if kbps not in self._level:
      levels = np.linspace(0.0, 1.0, 21)
      rates = [self._write(wave48, float(l), path) for l in levels]
      self._level[kbps] = float(levels[int(np.argmin(np.abs(np.array(rates) - kbps)))])
    self._write(wave48, self._level[kbps], path)
    decoded, _ = sf.read(path, dtype="float32", always_2d=True)
    return decoded[:, 0], os.path.getsize(path), None


def find_opus():
  """The first Opus path that round-trips a test tone, and what failed before it."""
  failures = {}
  tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(OPUS_RATE) / OPUS_RATE)).astype(np.float32)
  for name, make in (("opus-tools", lambda: CommandLineOpus("opus-tools")),
                     ("ffmpeg", lambda: CommandLineOpus("ffmpeg")),
                     ("libsndfile", SoundfileOpus)):
    try:
      tool = make()
      with tempfile.TemporaryDirectory() as tmp:
        decoded, _, _ = tool.roundtrip(tone, 6.0, tmp)
      if decoded.shape[0] < OPUS_RATE // 2:
        raise RuntimeError(f"round trip returned {decoded.shape[0]} samples")
      return tool, failures
    except Exception as e:  # any failure: try the next tool
      failures[name] = f"{type(e).__name__}: {e}"[:500]
  raise RuntimeError(f"no Opus encoder works: {failures}")


def opus_eval(tool, ref: np.ndarray, sample_rate: int, kbps: float) -> dict:
  """Opus at `kbps` on ref [clips, samples] at sample_rate (through 48 kHz), scored."""
  decoded, sizes, payloads = [], [], []
  seconds = ref.shape[1] / sample_rate
  with tempfile.TemporaryDirectory() as tmp:
    for wave in ref:
      out48, size, payload = tool.roundtrip(
          audio_io.resample(wave, sample_rate, OPUS_RATE), kbps, tmp)
      out = audio_io.resample(out48, OPUS_RATE, sample_rate)
      out = np.pad(out, (0, max(0, ref.shape[1] - out.shape[0])))[:ref.shape[1]]
      decoded.append(out)
      sizes.append(size)
      payloads.append(payload)
  result = score(ref, np.stack(decoded), sample_rate)
  result["nominal_kbps"] = kbps
  result["actual_file_kbps"] = float(np.mean(sizes) * 8 / seconds / 1000)
  result["actual_payload_kbps"] = (float(np.mean(payloads)) if None not in payloads
                                   else None)
  result["per_clip"]["file_bytes"] = sizes
  result["command"] = tool.command(kbps)
  return result


# ---- main ---------------------------------------------------------------------------------


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="small")
  parser.add_argument("--train_minutes", type=float, default=20.0)
  parser.add_argument("--batch", type=int, default=None, help="default: per size")
  parser.add_argument("--crop_seconds", type=float, default=None, help="default: per size")
  parser.add_argument("--eval_clips", type=int, default=12)
  parser.add_argument("--clip_seconds", type=float, default=10.0)
  parser.add_argument("--gin", action="append", default=[], help="extra gin binding")
  parser.add_argument("--max_train_tracks", type=int, default=None, help="smoke tests")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--log_every", type=int, default=50)
  parser.add_argument("--out", default=None)
  parser.add_argument("--train_audio_dir", default=None,
                      help="train on the audio files under this folder instead of the "
                           "package's training tracks (a machine without network)")
  parser.add_argument("--bundle_out", default=None,
                      help="save the trained codec bundle and training.json here")
  parser.add_argument("--bundle_dtype", choices=("float32", "float16"), default="float32",
                      help="float16 halves the bundle (evaluation upcasts it)")
  parser.add_argument("--bundle", default=None,
                      help="evaluate this saved bundle (or a pipeline run's codec/ folder) "
                           "instead of training")
  parser.add_argument("--eval_data", default="wesnoth",
                      help="'wesnoth' (the package's held-out tracks) or "
                           "tfds:NAME/CONFIG:SPLIT (e.g. a demo's held-out renders)")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir for --eval_data tfds:")
  args = parser.parse_args()
  if args.eval_clips < 1 and not args.bundle_out:
    parser.error("--eval_clips 0 (train only) needs --bundle_out")
  if args.eval_data != "wesnoth" and not re.fullmatch(r"tfds:[^:]+/[^:]+:[^:]+",
                                                       args.eval_data):
    parser.error(f"--eval_data {args.eval_data!r}: expected 'wesnoth' or "
                 f"tfds:NAME/CONFIG:SPLIT")
  if args.bundle and (args.bundle_out or args.train_audio_dir or args.eval_clips < 1):
    parser.error("--bundle evaluates a trained codec: no --bundle_out, --train_audio_dir "
                 "or --eval_clips 0")
  t0 = time.perf_counter()
  _, _, default_batch, default_crop = SIZES[args.size]
  batch = args.batch or default_batch
  crop = int(round((args.crop_seconds or default_crop) * SAMPLE_RATE))

  # Opus first: a missing encoder should fail before the training, not after.
  opus = opus_failures = None
  if args.eval_clips > 0:
    opus, opus_failures = find_opus()
    print(f"opus: {opus.kind} ({opus.version}), {opus.source}", flush=True)

  if args.bundle:
    evaluate_bundle(args, t0, opus, opus_failures)
    return
  model, model_info = build_model(args.size, args.gin)
  config = model.config
  if config.sample_rate != SAMPLE_RATE or config.bitrate(12) != 6000 or (
      config.num_quantizers != 12):
    raise ValueError(f"size {args.size} is not a 24 kHz 12-level 6 kbps codec: {config}")
  if crop % config.hop_length:
    raise ValueError(f"crop of {crop} samples is not a multiple of the hop "
                     f"{config.hop_length}")

  if args.train_audio_dir:
    train_files = audio_files_under(args.train_audio_dir)
  else:
    train_files, _ = split_tracks(debian_music.audio_files(debian_music.fetch(PACKAGE)))
  train_tracks, skipped = load_tracks(train_files[:args.max_train_tracks])
  print(f"{len(train_tracks)} training tracks "
        f"({sum(w.shape[0] for w in train_tracks.values()) / SAMPLE_RATE / 60:.1f} min, "
        f"{skipped.summary()}); loaded in {time.perf_counter() - t0:.0f} s", flush=True)

  state, training = train(model, CropSampler(train_tracks, crop), batch,
                          args.train_minutes, args.seed, args.log_every)
  print(f"trained {training['steps']} steps in {training['wall_seconds']:.0f} s", flush=True)
  codec = codec_lib.Codec.from_train_state(config, state.params, state.flax_mutables)
  n_params = sum(x.size for x in jax.tree.leaves(state.params["generator"]))
  trained = {
      "machine": machine.describe_jax(),
      "command": " ".join(["python", "benchmarks/codec_quality.py"] + sys.argv[1:]),
      "model": {**model_info, "config": dataclasses.asdict(config),
                "generator_parameters": int(n_params),
                "bitrates_bps": {n: config.bitrate(q)
                                 for n, q in codec_bitrates(config).items()}},
      "data": {"package": PACKAGE, "sample_rate": SAMPLE_RATE,
               "train_audio": args.train_audio_dir or (
                   f"the package's tracks but every {HOLDOUT_EVERY}th by sorted name "
                   f"(index % {HOLDOUT_EVERY} == 0)"),
               "train_tracks": len(train_tracks),
               "train_minutes_of_audio": sum(w.shape[0] for w in train_tracks.values())
                                         / SAMPLE_RATE / 60,
               "skipped": dict(skipped.counts)},
      "training": training}
  if args.bundle_out:
    save_bundle(codec, trained, args.bundle_out, args.bundle_dtype)
    print(f"-> {args.bundle_out}", flush=True)
  if args.eval_clips > 0:
    evaluate(codec, trained, args, t0, opus, opus_failures)


def audio_files_under(folder: str):
  paths = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                 for name in names if name.lower().endswith((".ogg", ".flac", ".wav", ".mp3")))
  if not paths:
    raise FileNotFoundError(f"no audio files under {folder!r}")
  return paths


def save_bundle(codec, trained: dict, bundle_dir: str, dtype: str) -> None:
  """The codec bundle (variables cast to `dtype`) with training.json beside it."""
  if dtype == "float16":
    codec = codec_lib.Codec(codec.config, jax.tree.map(
        lambda x: np.asarray(x, np.float16) if np.asarray(x).dtype == np.float32
        else np.asarray(x), jax.device_get(codec.variables)))
  codec.save(bundle_dir)
  with open(os.path.join(bundle_dir, "training.json"), "w", encoding="utf-8") as f:
    json.dump({**trained, "bundle_dtype": dtype}, f, indent=1, default=float)


def evaluate_bundle(args, t0: float, opus, opus_failures) -> None:
  """Evaluates a saved codec bundle (--bundle_out here or on a GPU machine, or a pipeline
  run's codec/ folder); its training.json, where there is one, goes into the report."""
  codec = codec_lib.Codec.load(args.bundle)
  codec = codec_lib.Codec(codec.config, jax.tree.map(  # float16 bundles: compute in float32
      lambda x: np.asarray(x, np.float32) if np.asarray(x).dtype == np.float16
      else np.asarray(x), codec.variables))
  trained = {"model": {"size": os.path.basename(os.path.normpath(args.bundle)),
                       "config": dataclasses.asdict(codec.config)}, "data": {}}
  info = os.path.join(args.bundle, "training.json")
  if os.path.exists(info):
    with open(info, encoding="utf-8") as f:
      trained = json.load(f)
  trained["bundle"] = {"path": args.bundle, "dtype": trained.pop("bundle_dtype", None),
                       "evaluation_machine": machine.describe_jax(),
                       "evaluation_command": " ".join(
                           ["python", "benchmarks/codec_quality.py"] + sys.argv[1:])}
  evaluate(codec, trained, args, t0, opus, opus_failures)


def held_out_clips(args, sample_rate: int):
  """[(name, start_s, wave)] at sample_rate: the wesnoth held-out tracks' clips, or the
  first --eval_clips clips of a TFDS split (--eval_data tfds:NAME/CONFIG:SPLIT)."""
  if args.eval_data == "wesnoth":
    _, held_files = split_tracks(debian_music.audio_files(debian_music.fetch(PACKAGE)))
    held_tracks, _ = load_tracks(held_files, sample_rate)
    return eval_clips(held_tracks, args.eval_clips, args.clip_seconds, sample_rate), {
        "holdout": f"every {HOLDOUT_EVERY}th file by sorted name (index % {HOLDOUT_EVERY} "
                   f"== 0)", "held_out_tracks": [os.path.basename(p) for p in held_files]}
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, split = args.eval_data[len("tfds:"):].rsplit(":", 1)
  ds = tfds.load(name, split=split, data_dir=args.data_dir)
  clips = []
  for ex in tfds.as_numpy(ds.take(args.eval_clips)):
    wave = audio_io.resample(ex["audio"], int(ex["sample_rate"]), sample_rate)
    n = min(wave.shape[0], int(args.clip_seconds * sample_rate))
    clips.append((ex["id"].decode(), 0.0, wave[:n]))
  return clips, {"holdout": f"the first {len(clips)} clips of {args.eval_data}"}


def codec_bitrates(config) -> dict:
  """{'<kbps>kbps': levels} for every level and half of them (the codec's two rates)."""
  levels = (config.num_quantizers, config.num_quantizers // 2)
  return {f"{config.bitrate(q) / 1000:g}kbps": q for q in levels if q > 0}


def evaluate(codec, trained: dict, args, t0: float, opus, opus_failures) -> None:
  """Scores the codec and Opus on the held-out clips; writes and prints the report."""
  config = codec.config
  rate = config.sample_rate
  clips, holdout = held_out_clips(args, rate)
  n = min(w.shape[0] for _, _, w in clips) // config.hop_length * config.hop_length
  ref = np.stack([w[:n] for _, _, w in clips])
  codes = np.concatenate([codec.encode(ref[i:i + 4]) for i in range(0, len(ref), 4)])
  bitrates = codec_bitrates(config)
  results = {"reference_bandwidth_99_9_hz": bandwidth_hz(ref, rate), "codec": {}, "opus": {}}
  decoded_at = {}
  for name, levels in bitrates.items():
    decoded = decoded_at[name] = np.concatenate([codec.decode(codes[i:i + 4, :, :levels])
                                                 for i in range(0, len(ref), 4)])
    results["codec"][name] = {**score(ref, decoded, rate), "levels": levels,
                              "nominal_kbps": config.bitrate(levels) / 1000}
  for kbps in OPUS_KBPS:
    results["opus"][f"{kbps:g}kbps"] = opus_eval(opus, ref, rate, kbps)
  full, half = bitrates
  results["targets"] = targets(results, full, half)
  # The decoder must use its codes: each clip's codes decode closer to it than to another.
  swapped = np.concatenate([codec.decode(np.roll(codes, 1, axis=0)[i:i + 4])
                            for i in range(0, len(ref), 4)])
  results["codes_matter"] = {
      "chroma_cosine_own_codes": results["codec"][full]["chroma_cosine"],
      "chroma_cosine_other_clips_codes": score(ref, swapped, rate)["chroma_cosine"]}
  # A residual VQ whose upper levels learnt nothing decodes the same at every bitrate.
  results["codec_codes"] = {
      "distinct_codes_per_level": [int(len(np.unique(codes[..., i])))
                                   for i in range(codes.shape[-1])],
      f"max_abs_difference_{full}_vs_{half}": float(np.max(np.abs(
          decoded_at[full] - decoded_at[half])))}
  report = {
      "benchmark": "codec_quality", **trained,
      "evaluation_machine": machine.describe_jax(),
      "data": {**trained.get("data", {}), **holdout, "eval_data": args.eval_data,
               "sample_rate": rate},
      "eval_clips": [{"clip": t, "start_seconds": round(s, 3), "seconds": n / rate,
                      "rms_dbfs": rms_dbfs(w)} for t, s, w in clips],
      "opus": {"tool": opus.kind, "version": opus.version, "source": opus.source,
               "resampling": f"{rate // 1000} kHz -> 48 kHz (soxr HQ) -> Opus -> 48 kHz -> "
                             f"{rate // 1000} kHz",
               "tools_that_failed_first": opus_failures},
      "measures": {"module": "musiclm_jax.evaluation.fidelity",
                   "higher_is_better": MEASURES},
      "results": results,
      "meets_target": bool(results["targets"][f"{full}_meets"]
                           and results["targets"][f"{half}_meets"]),
      "anchors": anchors(ref, rate, args.seed),
      "total_wall_seconds": time.perf_counter() - t0,
      "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  out = machine.save_result(report, "codec_quality", args.out)
  print_table(report, full, half)
  print(f"-> {out}")


def print_table(report: dict, full: str, half: str) -> None:
  results = report["results"]
  training = report.get("training", {})
  print(f"\n{len(report['eval_clips'])} clips x {report['eval_clips'][0]['seconds']:g} s; "
        f"codec {report['model']['size']}"
        + (f" after {training['steps']} steps ({training['budget_minutes']:g} min)"
           if training else ""))
  header = f"{'system':18s} {'kbps':>6s}" + "".join(f" {m[:13]:>13s}" for m in MEASURES)
  print(header)
  rows = [(f"codec {name}", r["nominal_kbps"], r) for name, r in results["codec"].items()]
  rows += [(f"opus {name}", r["actual_file_kbps"], r) for name, r in results["opus"].items()]
  rows += [(f"anchor {name[:11]}", float("nan"), r) for name, r in report["anchors"].items()]
  for label, kbps, r in rows:
    print(f"{label:18s} {kbps:6.2f}" + "".join(f" {r[m]:13.3f}" for m in MEASURES))
  first = next(iter(results["codec"].values()))
  print(f"chroma baselines: flat {first['chroma_flat']:.3f}, the input shuffled in time "
        f"{first['chroma_shuffled']:.3f}, its time average {first['chroma_static']:.3f}")
  print(f"codes matter: {results['codes_matter']}")
  print(f"targets: {results['targets']}")
  print(f"codec: distinct codes per level {results['codec_codes']['distinct_codes_per_level']}")


if __name__ == "__main__":
  main()
