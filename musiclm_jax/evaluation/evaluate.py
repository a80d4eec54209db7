"""`musiclm-jax evaluate`: FAD, KLD and MCC of generated clips against reference music.

  musiclm-jax evaluate --generated GEN_DIR --reference REF_DIR --prompts prompts.csv \
      [--mulan_model_dir MULAN_RUN] [--embedder musicnn_mtt --embedder musicnn_msd] \
      --out report.json
  musiclm-jax evaluate --generated GEN_DIR --reference tfds:music_captions/small_16khz:test \
      --data_dir DATA --prompts prompts.csv --out report.json

--generated: a folder of audio files; a clip's id is its path under the folder without
the extension. --reference: a folder (ids likewise) or 'tfds:NAME/CONFIG:SPLIT' (ids: the
dataset's 'id' feature). --prompts: a CSV with columns 'id' (a generated clip's id) and
'caption', and optionally 'reference' (the id of its reference clip; default: the same id).

  FAD   per embedder (default musicnn MTT's penultimate layer), generated vs all references,
        with a bootstrap interval;
  KLD   musicnn MTT tag posteriors of each generated clip vs its reference (pairs by id);
  MCC   MuLan text-audio cosine of each prompt and its clip (needs --mulan_model_dir).
A metric without its inputs (no pairs, no MuLan) is reported as null with the reason.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from musiclm_jax import atomic, cli_utils


# Shorter clips carry too little music for the embedders' windows (musicnn reads 3 s).
MIN_CLIP_SECONDS = 0.5


@dataclasses.dataclass
class ClipSet:
  """Mono clips by id (float32 [samples] each, at `sample_rate`); `skipped` lists the files
  that could not be used ({'file', 'reason', 'detail'})."""
  clips: Dict[str, np.ndarray]
  sample_rate: int
  source: str
  skipped: List[dict] = dataclasses.field(default_factory=list)

  def resampled(self, rate: int) -> Dict[str, np.ndarray]:
    from musiclm_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
    return {k: audio_io.resample(v, self.sample_rate, rate) for k, v in self.clips.items()}


def load_folder(path: str, sample_rate: int = 16000, strict: bool = False) -> ClipSet:
  """Every audio file under `path` (any format, rate, channels) at `sample_rate`.

  A file that is not usable audio (`audio.io.AudioError`: unreadable, silent, too short,
  ...) is skipped and listed in `ClipSet.skipped`, unless `strict`; a folder with no usable
  file is an error.
  """
  from musiclm_jax.audio import io as audio_io  # pylint: disable=g-import-not-at-top
  clips, skipped = {}, []
  for file in cli_utils.audio_paths([path]):
    clip_id = os.path.splitext(os.path.relpath(file, path))[0]
    if clip_id in clips:
      raise ValueError(f"{path}: two files make the clip id {clip_id!r} (ids drop the "
                       "extension)")
    try:
      clips[clip_id] = audio_io.load_audio(file, sample_rate, min_seconds=MIN_CLIP_SECONDS)
    except audio_io.AudioError as e:
      if strict:
        raise
      skipped.append({"file": file, "reason": e.reason, "detail": str(e)})
  if not clips:
    reasons = collections.Counter(s["reason"] for s in skipped)
    raise ValueError(f"{path}: no usable audio file ({len(skipped)} skipped: "
                     f"{dict(sorted(reasons.items()))})")
  return ClipSet(clips, sample_rate, path, skipped)


def load_tfds(spec: str, data_dir: Optional[str] = None, max_clips: Optional[int] = None
              ) -> ClipSet:
  """'NAME/CONFIG:SPLIT' of a TFDS dataset with 'audio', 'sample_rate' and 'id' features."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, _, split = spec.partition(":")
  if not split:
    raise ValueError(f"reference {spec!r}: give tfds:NAME/CONFIG:SPLIT")
  ds = tfds.load(name, split=split, data_dir=data_dir)
  clips, rate = {}, None
  for example in tfds.as_numpy(ds.take(max_clips) if max_clips else ds):
    rate = int(example["sample_rate"])
    clips[example["id"].decode()] = np.asarray(example["audio"], np.float32)
  if not clips:
    raise ValueError(f"reference {spec!r} has no examples")
  return ClipSet(clips, rate, f"tfds:{spec}")


def read_prompts(path: str) -> List[dict]:
  """Rows {'id', 'caption', 'reference'} of the prompts CSV; errors name the file/row."""
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = {"id", "caption"} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{path}: missing column(s) {sorted(missing)} (need id, caption, "
                       "optionally reference)")
    rows = []
    for line, row in enumerate(reader, start=2):
      if not (row["id"] or "").strip():
        raise ValueError(f"{path}, line {line}: empty id")
      rows.append({"id": row["id"].strip(), "caption": (row["caption"] or "").strip(),
                   "reference": (row.get("reference") or row["id"]).strip()})
  return rows


def embed_all(embed, clips: Dict[str, np.ndarray], ids: Sequence[str]) -> np.ndarray:
  """embed([N, samples]) over clips grouped by length (one compiled shape per length)."""
  by_length = collections.defaultdict(list)
  for i, clip_id in enumerate(ids):
    by_length[len(clips[clip_id])].append(i)
  out = [None] * len(ids)
  for indices in by_length.values():
    values = embed(np.stack([clips[ids[i]] for i in indices]))
    for i, value in zip(indices, values):
      out[i] = value
  return np.stack(out)


def evaluate(generated: ClipSet, reference: ClipSet, prompts: Optional[List[dict]] = None,
             embedder_names: Sequence[str] = ("musicnn_mtt",), mulan=None,
             bootstrap: int = 200, kld_mode: str = "softmax") -> dict:
  """The report: {'fad': {embedder: {...}}, 'kld': {...}, 'mcc': {...}, counts}."""
  from musiclm_jax.evaluation import embedders, fad, kld, mcc  # pylint: disable=g-import-not-at-top
  report = {"generated": generated.source, "reference": reference.source,
            "n_generated": len(generated.clips), "n_reference": len(reference.clips),
            "fad": {}}
  report["skipped"] = {"generated": generated.skipped, "reference": reference.skipped}
  gen_ids, ref_ids = sorted(generated.clips), sorted(reference.clips)
  # Prompts of skipped clips are left out (and counted); any other unknown id is an error.
  skipped_ids = {os.path.splitext(os.path.relpath(s["file"], generated.source))[0]
                 for s in generated.skipped}
  if prompts:
    report["prompts_of_skipped_clips"] = sum(row["id"] in skipped_ids for row in prompts)
    prompts = [row for row in prompts if row["id"] not in skipped_ids]
  unknown = [row["id"] for row in prompts or () if row["id"] not in generated.clips]
  if unknown:
    raise ValueError(f"the prompts name {len(unknown)} clip(s) not in {generated.source}, "
                     f"e.g. {unknown[:3]} (ids are file names without the extension)")
  musicnn_mtt = None
  for name in embedder_names:
    embedder = embedders.MuLanEmbedder(mulan) if name == "mulan" else embedders.get(name)
    if name == "musicnn_mtt":
      musicnn_mtt = embedder
    gen = embed_all(embedder.embed, generated.resampled(embedder.sample_rate), gen_ids)
    ref = embed_all(embedder.embed, reference.resampled(embedder.sample_rate), ref_ids)
    report["fad"][name] = fad.fad(gen, ref, bootstrap=bootstrap)

  pairs = [(row["id"], row["reference"]) for row in prompts or ()
           if row["reference"] in reference.clips]
  if not prompts:
    pairs = [(i, i) for i in gen_ids if i in reference.clips]
  if pairs:
    tagger = (musicnn_mtt or embedders.MusicnnEmbedder("MTT_musicnn")).tagger
    logits = lambda clips, ids: embed_all(
        lambda a: tagger.embed_clips(a, outputs=("logits",))["logits"], clips, ids)
    gen_logits = logits(generated.resampled(tagger.sample_rate), [g for g, _ in pairs])
    ref_logits = logits(reference.resampled(tagger.sample_rate), [r for _, r in pairs])
    report["kld"] = kld.kld(ref_logits, gen_logits, kld_mode)
    report["kld"]["clips_without_reference"] = len(gen_ids) - len(pairs)
  else:
    report["kld"] = {"kld": None, "reason": "no generated clip has a reference with its id "
                     "(or the prompts' 'reference' column)"}

  if mulan is not None and prompts:
    audio = generated.resampled(mulan.config.sample_rate)
    report["mcc"] = mcc.mcc(mulan, [row["caption"] for row in prompts],
                            pad_stack([audio[row["id"]] for row in prompts]))
  else:
    report["mcc"] = {"mcc": None, "reason": "needs --prompts and --mulan_model_dir"}
  return report


def pad_stack(clips: Sequence[np.ndarray]) -> np.ndarray:
  """Clips of unequal length -> [N, longest], zero-padded (MuLan averages its windows)."""
  longest = max(len(c) for c in clips)
  return np.stack([np.pad(c, (0, longest - len(c))) for c in clips])


def format_table(report: dict) -> str:
  """The report as an aligned text table."""
  lines = [f"{'metric':28s} {'value':>10s}  details"]
  for name, r in report["fad"].items():
    ci = (f"95% CI [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if r.get("ci_low") is not None
          else "")
    lines.append(f"{'FAD ' + name:28s} {r['fad']:10.4f}  n={r['n_generated']} vs "
                 f"{r['n_reference']}, {ci}")
  for key in ("kld", "mcc"):
    r = report[key]
    value = r[key]
    details = r.get("reason") or ", ".join(f"{k}={v}" for k, v in r.items() if k != key)
    lines.append(f"{key.upper():28s} {('%.4f' % value) if value is not None else 'n/a':>10s}"
                 f"  {details}")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = cli_utils.ArgumentParser(prog="musiclm-jax evaluate",
                                    description=cli_utils.first_paragraph(__doc__))
  parser.add_argument("--generated", required=True, help="folder of generated clips")
  parser.add_argument("--reference", required=True,
                      help="folder of reference clips, or tfds:NAME/CONFIG:SPLIT")
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir for a tfds reference")
  parser.add_argument("--max_reference", type=int, default=None,
                      help="use at most this many tfds reference clips")
  parser.add_argument("--prompts", default=None, help="CSV: id, caption[, reference]")
  parser.add_argument("--mulan_model_dir", default=None, help="MuLan run (for MCC)")
  parser.add_argument("--embedder", action="append", default=None,
                      help="FAD embedder: musicnn_mtt (default), musicnn_msd, mulan, or "
                           "savedmodel:PATH[@RATE]; repeat for several")
  parser.add_argument("--kld_mode", default="softmax", choices=("softmax", "bernoulli"))
  parser.add_argument("--bootstrap", type=int, default=200)
  parser.add_argument("--out", type=cli_utils.output_path, required=True,
                      help="report JSON")

  parser.add_argument("--strict", action="store_true",
                      help="stop at the first unusable audio file (default: skip and list "
                           "them all in the report)")

  def go(args):
    generated = load_folder(args.generated, strict=args.strict)
    reference = (load_tfds(args.reference[len("tfds:"):], args.data_dir, args.max_reference)
                 if args.reference.startswith("tfds:")
                 else load_folder(args.reference, strict=args.strict))
    for clips in (generated, reference):
      for s in clips.skipped:
        print(f"skipped: {s['detail']}")
    prompts = read_prompts(args.prompts) if args.prompts else None
    mulan = None
    if args.mulan_model_dir:
      from musiclm_jax.mulan import tokenizer  # pylint: disable=g-import-not-at-top
      mulan = tokenizer.MuLanTokenizer.load(args.mulan_model_dir)
    names = args.embedder or ["musicnn_mtt"]
    if "mulan" in names and mulan is None:
      raise ValueError("--embedder mulan needs --mulan_model_dir")
    report = evaluate(generated, reference, prompts, names, mulan, args.bootstrap,
                      args.kld_mode)
    atomic.atomic_write_text(args.out, json.dumps(report, indent=2))
    print(format_table(report))
    print(f"report -> {args.out}")

  parser.set_defaults(run=go)
  cli_utils.run(parser, argv)
