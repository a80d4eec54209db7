"""The recipe's in-process steps: a split as WAV files, generation, and the report folder
(summary.md, the clips, spectrograms of the prompts side by side, the metrics table)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from typing import List, Sequence

import numpy as np

from musiclm_jax import atomic
from musiclm_jax.audio import io as audio_io


def export_split(tfds_name: str, data_dir: str, split: str, out_dir: str) -> None:
  """Writes every clip of a TFDS audio split as <id>.wav (atomically, as one folder)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load(tfds_name, split=split, data_dir=data_dir)
  with atomic.atomic_directory(out_dir) as tmp:
    for i, ex in enumerate(tfds.as_numpy(ds)):
      name = ex["id"].decode().replace("/", "_") if "id" in ex else f"{i:06d}"
      audio_io.save_audio(os.path.join(tmp, f"{name}.wav"), ex["audio"],
                          int(ex["sample_rate"]))


def reference_prompts(recipe, count: int) -> List[dict]:
  """The captions and ids of the first `count` clips of the reference split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if count <= 0:
    return []
  ds = tfds.load(recipe.tfds_name, split=recipe.reference_split, data_dir=recipe.tfds_dir)
  return [{"caption": ex["caption"].decode(), "reference": ex["id"].decode()}
          for ex in tfds.as_numpy(ds.take(count))]


# What the generate step records of how its clips were made (generated/settings.json).
SETTINGS_FILE = "settings.json"


def generate(recipe) -> None:
  """One clip per prompt (the recipe's, then held-out captions), the best of
  `num_samples` by MuLan; writes generated/<id>.wav, prompts.csv and settings.json."""
  from musiclm_jax.generation import bundle as bundle_lib  # pylint: disable=g-import-not-at-top
  musiclm = bundle_lib.load_bundle(recipe.path("bundle"))
  rows = [{"id": f"prompt_{i:02d}", "caption": p, "reference": ""}
          for i, p in enumerate(recipe.prompts)]
  rows += [{"id": f"heldout_{i:02d}", **r}
           for i, r in enumerate(reference_prompts(recipe, recipe.reference_prompts))]
  ranked, scores = musiclm.generate_ranked([r["caption"] for r in rows], recipe.seconds,
                                           recipe.num_samples, seed=recipe.seed,
                                           show_progress=True)
  out = recipe.path("generated")
  with atomic.atomic_directory(out) as tmp:
    for row, waves, score in zip(rows, ranked, scores):
      audio_io.save_audio(os.path.join(tmp, f"{row['id']}.wav"), waves[0],
                          musiclm.sample_rate)
      row["mulan_score"] = f"{score[0]:.4f}"
    with open(os.path.join(tmp, "prompts.csv"), "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, fieldnames=["id", "caption", "reference", "mulan_score"])
      writer.writeheader()
      writer.writerows(rows)
    with open(os.path.join(tmp, SETTINGS_FILE), "w", encoding="utf-8") as f:
      json.dump(generation_settings(musiclm), f, indent=1)


def generation_settings(musiclm) -> dict:
  """How `musiclm` turns prompts into clips by default: its text conditioning, each
  stage's sampling (None: the stage is skipped) and the decoder that renders the tokens
  ('aligned': fine-tuned on the coarse stage's draws, `generation.aligned_decoder`)."""
  provenance = getattr(musiclm.codec, "provenance", None) or {}
  return {"text_conditioning": musiclm.text_conditioning,
          "sampling": {stage: None if s is None else dataclasses.asdict(s)
                       for stage, s in musiclm.default_sampling.items()},
          "decoder": "aligned" if "decoder_finetune" in provenance else "codec"}


def describe_settings(settings: dict) -> str:
  """One sentence for the report: the text conditioning and the stages' sampling."""
  def stage(name, s):
    if s is None:
      return f"{name} skipped"
    parts = [f"temperature {s['temperature']:g}"]
    parts += [f"top-k {s['top_k']}"] if s["top_k"] else []
    parts += [f"top-p {s['top_p']:g}"] if s["top_p"] < 1 else []
    parts += ([f"guidance {s['guidance_scale']:g}"] if s["guidance_scale"] is not None
              else [])
    return f"{name} {', '.join(parts)}"
  decoder = {"aligned": " Rendered by the codec's decoder fine-tuned on the coarse stage's "
                        "aligned tokens.",
             "codec": " Rendered by the codec's decoder."}.get(settings.get("decoder"), "")
  return (f"Text conditioning: `{settings['text_conditioning']}`. Sampling: "
          + "; ".join(stage(n, s) for n, s in settings["sampling"].items()) + "." + decoder)


def spectrogram_figure(clips: Sequence[np.ndarray], titles: Sequence[str], sample_rate: int,
                       path: str) -> None:
  """Log-mel spectrograms of the clips side by side, one column each, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from musiclm_jax.audio import features  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(clips), figsize=(3.2 * len(clips), 3.4), squeeze=False)
  for ax, clip, title in zip(axes[0], clips, titles):
    mel = np.asarray(features.log_mel_spectrogram(clip[None], sample_rate, 1024, 256,
                                                  num_mels=80))[0]
    ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma",
              extent=(0, len(clip) / sample_rate, 0, 80))
    ax.set_title("\n".join(_wrap(title, 34)), fontsize=7)
    ax.set_xlabel("seconds", fontsize=7)
    ax.tick_params(labelsize=6)
  axes[0][0].set_ylabel("mel band", fontsize=7)
  fig.tight_layout()
  with atomic.atomic_file(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)


def codec_figure(originals: Sequence[np.ndarray], resyntheses: Sequence[np.ndarray],
                 titles: Sequence[str], sample_rate: int, path: str,
                 max_hz: float = 4000.0) -> None:
  """Each clip's linear-frequency log spectrogram (0 - max_hz, where notes and their
  harmonics show as lines) above its codec resynthesis's, one column per clip, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from musiclm_jax.audio import features  # pylint: disable=g-import-not-at-top
  n = len(originals)
  fig, axes = plt.subplots(2, n, figsize=(3.4 * n, 5.6), squeeze=False)
  bins = int(max_hz / (sample_rate / 2048)) + 1
  for col, (clip, resynthesis, title) in enumerate(zip(originals, resyntheses, titles)):
    for row, (wave, what) in enumerate(((clip, "original"), (resynthesis, "codec"))):
      spectrum = np.asarray(features.magnitude(features.stft(
          np.asarray(wave, np.float32)[None], 2048, 256, center=True)))[0, :, :bins]
      ax = axes[row][col]
      ax.imshow(20 * np.log10(spectrum.T + 1e-5), origin="lower", aspect="auto",
                cmap="magma", vmin=-80, vmax=20 * np.log10(spectrum.max() + 1e-5),
                extent=(0, len(wave) / sample_rate, 0, max_hz / 1000))
      ax.set_title(f"{what}: " + "\n".join(_wrap(title, 30)), fontsize=7)
      ax.tick_params(labelsize=6)
    axes[1][col].set_xlabel("seconds", fontsize=7)
  axes[0][0].set_ylabel("kHz", fontsize=7)
  axes[1][0].set_ylabel("kHz", fontsize=7)
  fig.tight_layout()
  with atomic.atomic_file(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=100)
  plt.close(fig)


def codec_fidelity(recipe, out_dir: str, count: int = 4) -> List[str]:
  """`codec_section` for the run's codec on the first `count` clips of its reference split."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from musiclm_jax.soundstream import codec as codec_lib  # pylint: disable=g-import-not-at-top
  codec = codec_lib.Codec.load(recipe.path("codec"))
  ds = tfds.load(recipe.tfds_name, split=recipe.reference_split, data_dir=recipe.tfds_dir)
  examples = list(tfds.as_numpy(ds.take(count)))
  rate = codec.config.sample_rate
  return codec_section(
      codec, [ex["id"].decode().replace("/", "_").replace(":", "_") for ex in examples],
      [ex["caption"].decode() for ex in examples],
      [audio_io.resample(ex["audio"], int(ex["sample_rate"]), rate) for ex in examples],
      out_dir)


def codec_section(codec, ids: Sequence[str], captions: Sequence[str],
                  originals: Sequence[np.ndarray], out_dir: str) -> List[str]:
  """The codec on held-out clips (mono, at its rate): writes codec/<id>_{original,codec}.wav
  and codec_spectrograms.png under out_dir; returns the summary's lines (per-clip fidelity
  measures beside their baselines)."""
  from musiclm_jax.evaluation import fidelity  # pylint: disable=g-import-not-at-top
  rate = codec.config.sample_rate
  resyntheses = [np.clip(codec.decode(codec.encode(w[None]))[0, :len(w)], -1, 1)
                 for w in originals]
  os.makedirs(os.path.join(out_dir, "codec"), exist_ok=True)
  for clip_id, original, resynthesis in zip(ids, originals, resyntheses):
    audio_io.save_audio(os.path.join(out_dir, "codec", f"{clip_id}_original.wav"), original,
                        rate)
    audio_io.save_audio(os.path.join(out_dir, "codec", f"{clip_id}_codec.wav"), resynthesis,
                        rate)
  codec_figure(originals, resyntheses, captions, rate,
               os.path.join(out_dir, "codec_spectrograms.png"))
  scores = [fidelity.fidelity(o, r, rate) for o, r in zip(originals, resyntheses)]
  row = lambda m: (f"{m['chroma_cosine']:.3f} | {m['chroma_flat']:.3f} | "
                   f"{m['chroma_static']:.3f} | {m['onset_f1']:.3f} | {m['si_sdr_db']:.1f} | "
                   f"{m['stft_distance']:.3f} |")
  lines = ["## The codec", "",
           f"Held-out clips and their resynthesis through the codec at "
           f"{codec.config.bitrate() / 1000:g} kbps (top: original; bottom: codec). A codec "
           "that keeps the notes scores a chroma cosine well above its baselines (a flat "
           "chroma; the original's time-averaged chroma, what a static drone scores); "
           "docs/codec.md says how to read the rest.", "",
           "![codec spectrograms](codec_spectrograms.png)", "",
           "| clip | chroma cosine | flat | static | onset F1 | SI-SDR dB | STFT distance |",
           "|---|---|---|---|---|---|---|"]
  lines += [f"| [{clip_id}](codec/{clip_id}_original.wav) / [codec](codec/{clip_id}_codec.wav)"
            f" | {row(m)}" for clip_id, m in zip(ids, scores)]
  lines += [f"| mean | {row(fidelity.mean_fidelity(scores))}", ""]
  return lines


def tagger_cells(clips: Sequence[np.ndarray], rate: int, captions: Sequence[str]
                 ) -> List[str]:
  """Per clip, what the independent tagger (musicnn MTT, `evaluation.tag_adherence`) hears:
  '<its top 3 tags> | <the tags the caption names, each with its probability and rank of
  50>' (markdown cells)."""
  from musiclm_jax.evaluation import musicnn, tag_adherence  # pylint: disable=g-import-not-at-top
  tagger = musicnn.MusicnnTagger.load()
  probabilities = np.concatenate([
      tagger.embed_clips(audio_io.resample(c, rate, musicnn.SAMPLE_RATE)[None],
                         outputs=("tags",))["tags"] for c in clips])
  cells = []
  for row, top, caption in zip(probabilities, tag_adherence.top_tags(probabilities),
                               captions):
    ranks = {musicnn.MTT_LABELS[j]: r + 1 for r, j in enumerate(np.argsort(-row))}
    named = sorted(tag_adherence.named_tags(caption), key=ranks.get)
    cells.append(", ".join(f"{t} {p:.2f}" for t, p in top) + " | " + (", ".join(
        f"{t} {row[musicnn.MTT_LABELS.index(t)]:.2f} (#{ranks[t]})" for t in named) or "-"))
  return cells


def _wrap(text: str, width: int) -> List[str]:
  lines, line = [], ""
  for word in text.split():
    if line and len(line) + 1 + len(word) > width:
      lines.append(line)
      line = word
    else:
      line = f"{line} {word}".strip()
  return lines + [line] if line else lines


def write_report(recipe, steps) -> None:
  """report/: summary.md, the generated WAVs, spectrograms.png, metrics (already there)."""
  from musiclm_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  from musiclm_jax.pipeline import steps as steps_lib  # pylint: disable=g-import-not-at-top
  out = recipe.path("report")
  os.makedirs(os.path.join(out, "clips"), exist_ok=True)
  with open(recipe.path("generated", "prompts.csv"), newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  clips = []
  for row in rows:
    source = recipe.path("generated", f"{row['id']}.wav")
    shutil.copyfile(source, os.path.join(out, "clips", f"{row['id']}.wav"))
    wave, rate = audio_io.read_audio(source)
    clips.append(audio_io.to_mono(wave))
  chosen = [i for i, row in enumerate(rows) if row["id"].startswith("prompt_")] or list(
      range(len(rows)))
  spectrogram_figure([clips[i] for i in chosen], [rows[i]["caption"] for i in chosen], rate,
                     os.path.join(out, "spectrograms.png"))
  with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  seconds = steps_lib.recorded_seconds(recipe.work_dir, steps)
  settings_path = recipe.path("generated", SETTINGS_FILE)
  settings = []
  if os.path.exists(settings_path):   # folders generated before the file was written lack it
    with open(settings_path, encoding="utf-8") as f:
      settings = [describe_settings(json.load(f)), ""]
  lines = [f"# MusicLM run: {recipe.tfds_name}, size {recipe.size}", "",
           f"Work folder `{recipe.work_dir}`; {len(rows)} clips of {recipe.seconds:g} s, the "
           f"best of {recipe.num_samples} by MuLan each.", "", *settings, "## Steps", "",
           "| step | what | minutes |", "|---|---|---|"]
  lines += [f"| {s.name} | {s.description} | "
            f"{seconds[s.name] / 60:.1f} |" if s.name in seconds else
            f"| {s.name} | {s.description} | (this step) |" for s in steps]
  lines += ["", f"Total: {sum(seconds.values()) / 60:.1f} minutes.", "", "## Metrics", "",
            "Against held-out music of the same set (`metrics.json`; see docs/evaluation.md "
            "for what good and bad values look like):", "", "```",
            evaluate.format_table(metrics), "```", "", *codec_fidelity(recipe, out),
            "## Clips", "", "![spectrograms](spectrograms.png)", "",
            "Beside each prompt: MuLan's text-audio score (trained in this run), and what an "
            "independent tagger hears (musicnn's MagnaTagATune tagger, trained on human tags "
            "of real recordings): its three most probable tags, and the probability and "
            "rank (of 50) of each tag the prompt names.", "",
            "| clip | prompt | MuLan score | tagger's top tags | tags the prompt names |",
            "|---|---|---|---|---|"]
  cells = tagger_cells(clips, rate, [r["caption"] for r in rows])
  lines += [f"| [{r['id']}](clips/{r['id']}.wav) | {r['caption']} | {r['mulan_score']} | "
            f"{cell} |" for r, cell in zip(rows, cells)]
  atomic.atomic_write_text(os.path.join(out, "summary.md"), "\n".join(lines) + "\n")
