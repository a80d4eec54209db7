"""The recipe's in-process steps: a split as WAV files, generation, and the report folder
(summary.md, the clips, spectrograms of the prompts side by side, the metrics table)."""

from __future__ import annotations

import csv
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


def generate(recipe) -> None:
  """One clip per prompt (the recipe's, then held-out captions), the best of
  `num_samples` by MuLan; writes generated/<id>.wav and generated/prompts.csv."""
  from musiclm_jax.generation import pipeline  # pylint: disable=g-import-not-at-top
  musiclm = pipeline.MusicLM.from_bundle(recipe.path("bundle"))
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
  fig.savefig(path, dpi=110)
  plt.close(fig)


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
  lines = [f"# MusicLM run: {recipe.tfds_name}, size {recipe.size}", "",
           f"Work folder `{recipe.work_dir}`; {len(rows)} clips of {recipe.seconds:g} s, the "
           f"best of {recipe.num_samples} by MuLan each.", "", "## Steps", "",
           "| step | what | minutes |", "|---|---|---|"]
  lines += [f"| {s.name} | {s.description} | "
            f"{seconds[s.name] / 60:.1f} |" if s.name in seconds else
            f"| {s.name} | {s.description} | (this step) |" for s in steps]
  lines += ["", f"Total: {sum(seconds.values()) / 60:.1f} minutes.", "", "## Metrics", "",
            "Against held-out music of the same set (`metrics.json`; see the README for what "
            "good and bad values look like):", "", "```", evaluate.format_table(metrics), "```",
            "", "## Clips", "", "![spectrograms](spectrograms.png)", "",
            "| clip | prompt | MuLan score |", "|---|---|---|"]
  lines += [f"| [{r['id']}](clips/{r['id']}.wav) | {r['caption']} | {r['mulan_score']} |"
            for r in rows]
  atomic.atomic_write_text(os.path.join(out, "summary.md"), "\n".join(lines) + "\n")
