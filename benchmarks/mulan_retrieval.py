r"""MuLan retrieval on held-out captioned music.

  python benchmarks/mulan_retrieval.py [--size small] [--steps 1500] [--dataset small_16khz]
      [--data_dir DIR] [--model_dir DIR] [--batch 32] [--gin 'BINDING' ...] [--out FILE]

1. Data: `music_captions/<dataset>` (built here if missing: music21 corpus pieces rendered
   with a GM SoundFont, captions written from the rendering; splits by piece, so every test
   caption describes a piece never heard in training).
2. Training: `python -m musiclm_jax.train --gin_file=mulan/<size>.gin
   --gin_file=runs/mulan.gin` on its train split for --steps (a subprocess: re-running the
   command resumes the run in --model_dir; no steps are taken when it has reached them).
3. Evaluation on the test split, from the last checkpoint through `MuLanTokenizer` (clips
   are one 10 s window; captions as written):
   - text->music and music->text recall@1/@5 over all N test pairs, and MCC (the mean
     cosine of each caption with its own clip, MusicLM's MuLan cycle consistency);
   - the same with the captions shuffled (a fixed permutation): the baseline a model that
     ignores the text gets; chance recall@k is k / N;
   - zero-shot attribute accuracy: for each test clip, the prompt among "music played by
     {ensemble}" (resp. "{tempo} music", "a {style}") with the highest cosine, against the
     clip's true attribute; chance is the majority class's share.
Writes benchmarks/results/mulan_retrieval_<backend>.json with the machine and the training
record (steps, final train/eval losses, wall time).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def _train(args, data_dir: str) -> dict:
  cmd = [sys.executable, "-m", "musiclm_jax.train", f"--gin_file=mulan/{args.size}.gin",
         "--gin_file=runs/mulan.gin", f"--gin.MODEL_DIR='{args.model_dir}'",
         f"--gin.TRAIN_STEPS={args.steps}", f"--gin.AUDIO_DATA_DIR='{data_dir}'",
         f"--gin.AUDIO_DATASET='music_captions/{args.dataset}:1.0.0'",
         f"--gin.BATCH_SIZE={args.batch}", "--gin.train.eval_period=250",
         "--gin.CheckpointManager.save_interval_steps=250"]
  cmd += [f"--gin.{b}" for b in args.gin]
  start = time.time()
  subprocess.run(cmd, cwd=REPO, check=True)
  from musiclm_jax.training import metrics
  train = metrics.read_metrics(args.model_dir, "train")
  evals = metrics.read_metrics(args.model_dir, "eval")
  return {"command": " ".join(cmd[1:]), "wall_seconds_this_call": time.time() - start,
          "steps": train[-1]["step"] if train else 0,
          "final_train": train[-1] if train else None, "final_eval": evals[-1] if evals else None,
          "first_train_loss": train[0]["loss"] if train else None}


def _recall(sim: np.ndarray, k: int) -> float:
  """sim [queries, items], query i matches item i: share whose match ranks in the top k."""
  rank = np.sum(sim > np.diagonal(sim)[:, None], axis=1)
  return float(np.mean(rank < k))


def _retrieval(text: np.ndarray, audio: np.ndarray) -> dict:
  sim = text @ audio.T
  return {"text_to_music_recall@1": _recall(sim, 1), "text_to_music_recall@5": _recall(sim, 5),
          "music_to_text_recall@1": _recall(sim.T, 1), "music_to_text_recall@5": _recall(sim.T, 5),
          "mcc": float(np.mean(np.sum(text * audio, axis=1)))}


def _zero_shot(tok, audio_emb: np.ndarray, labels: list, template: str) -> dict:
  classes = sorted(set(labels))
  prompts = tok.embed_text([template.format(c) for c in classes])
  predicted = [classes[i] for i in np.argmax(audio_emb @ prompts.T, axis=1)]
  counts = [labels.count(c) for c in classes]
  return {"accuracy": float(np.mean([p == t for p, t in zip(predicted, labels)])),
          "chance_majority": max(counts) / len(labels), "classes": len(classes),
          "template": template}


def _evaluate(args, data_dir: str) -> dict:
  import tensorflow_datasets as tfds
  from musiclm_jax.mulan import tokenizer as tokenizer_lib
  tok = tokenizer_lib.MuLanTokenizer.load(args.model_dir)
  ds = tfds.load(f"music_captions/{args.dataset}", split="test", data_dir=data_dir)
  examples = list(ds.as_numpy_iterator())
  captions = [ex["caption"].decode() for ex in examples]
  audio = np.stack([ex["audio"] for ex in examples])
  audio_emb = np.concatenate([tok.embed_audio(audio[i:i + 16])
                              for i in range(0, len(audio), 16)])
  text_emb = tok.embed_text(captions)
  shuffled = np.random.default_rng(0).permutation(len(captions))
  attr = lambda key: [ex[key].decode() for ex in examples]
  return {
      "test_pairs": len(examples),
      "chance_recall@1": 1 / len(examples), "chance_recall@5": min(5, len(examples)) / len(examples),
      "model": _retrieval(text_emb, audio_emb),
      "shuffled_captions": _retrieval(text_emb[shuffled], audio_emb),
      "zero_shot": {
          "ensemble": _zero_shot(tok, audio_emb, attr("ensemble"), "music played by {}"),
          "tempo": _zero_shot(tok, audio_emb, attr("tempo"), "{} music"),
          "style": _zero_shot(tok, audio_emb, attr("style"), "a {}"),
      },
      "example_captions": captions[:3],
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="small")
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--dataset", default="small_16khz")
  parser.add_argument("--data_dir", default=os.path.expanduser("~/tensorflow_datasets"))
  parser.add_argument("--model_dir", default="/tmp/musiclm_jax_bench/mulan_small")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--gin", action="append", default=[])
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  import machine
  from musiclm_jax.tasks import builders
  start = time.time()
  builders.build("music_captions", args.data_dir, args.dataset)
  build_seconds = time.time() - start
  training = _train(args, args.data_dir)
  results = _evaluate(args, args.data_dir)
  report = {"benchmark": "mulan_retrieval", "machine": machine.describe_jax(),
            "size": args.size, "dataset": f"music_captions/{args.dataset}",
            "build_or_reuse_seconds": build_seconds, "training": training, **results}
  out = machine.save_result(report, "mulan_retrieval", args.out)
  m, s = results["model"], results["shuffled_captions"]
  print(f"{results['test_pairs']} held-out pairs; chance recall@1 {results['chance_recall@1']:.3f}")
  for key in m:
    print(f"  {key:24s} model {m[key]:.3f}   shuffled captions {s[key]:.3f}")
  for name, z in results["zero_shot"].items():
    print(f"  zero-shot {name:8s} accuracy {z['accuracy']:.3f} (majority {z['chance_majority']:.3f},"
          f" {z['classes']} classes)")
  print(f"-> {out}")


if __name__ == "__main__":
  main()
