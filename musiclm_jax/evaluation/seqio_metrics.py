"""FAD, KLD and MCC as SeqIO metric functions, `metric_fn(targets, predictions) -> dict`,
for a task's `metric_fns` (evaluated by `seqio.Evaluator` with a predict_fn that
generates audio):

    seqio.Task(..., metric_fns=[seqio_metrics.fad_metric(16000, 24000),
                                seqio_metrics.kld_metric(16000, 24000),
                                seqio_metrics.mcc_metric(mulan, 24000)])

targets: the reference clips (float [samples] each; for MCC the captions), predictions:
the generated clips (float [samples] each), in the same order.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np

from musiclm_jax.audio import io as audio_io
from musiclm_jax.evaluation import embedders, evaluate, fad, kld, mcc

MetricFn = Callable[[Sequence, Sequence], Dict[str, float]]


def _at(clips: Sequence[np.ndarray], rate: int, to_rate: int) -> Dict[str, np.ndarray]:
  return {str(i): audio_io.resample(np.asarray(c, np.float32), rate, to_rate)
          for i, c in enumerate(clips)}


def _embed(embed, clips: Sequence[np.ndarray], rate: int, to_rate: int) -> np.ndarray:
  """embed([N, samples] at to_rate) of clips at `rate` -> [len(clips), D], in order."""
  return evaluate.embed_all(embed, _at(clips, rate, to_rate),
                            [str(i) for i in range(len(clips))])


def fad_metric(targets_rate: int, predictions_rate: int, embedder: str = "musicnn_mtt"
               ) -> MetricFn:
  """{'fad_<embedder>': FAD of the predictions against the targets}."""
  model = embedders.get(embedder)

  def metric_fn(targets, predictions):
    value = fad.fad(_embed(model.embed, predictions, predictions_rate, model.sample_rate),
                    _embed(model.embed, targets, targets_rate, model.sample_rate),
                    bootstrap=0)["fad"]
    return {f"fad_{embedder}": value}
  return metric_fn


def kld_metric(targets_rate: int, predictions_rate: int, mode: str = "softmax") -> MetricFn:
  """{'kld': mean KL of musicnn MTT tag posteriors, target i vs prediction i}."""
  tagger = embedders.MusicnnEmbedder("MTT_musicnn").tagger
  logits = lambda clips, rate: _embed(
      lambda a: tagger.embed_clips(a, outputs=("logits",))["logits"], clips, rate,
      tagger.sample_rate)

  def metric_fn(targets, predictions):
    if len(targets) != len(predictions):
      raise ValueError(f"{len(targets)} targets for {len(predictions)} predictions")
    return {"kld": kld.kld(logits(targets, targets_rate),
                           logits(predictions, predictions_rate), mode)["kld"]}
  return metric_fn


def mcc_metric(mulan, predictions_rate: int) -> MetricFn:
  """{'mcc': MuLan cosine of caption i (target) and prediction i}; mulan: MuLanTokenizer."""
  def metric_fn(targets, predictions):
    rate = mulan.config.sample_rate
    audio = evaluate.pad_stack(list(_at(predictions, predictions_rate, rate).values()))
    captions = [t.decode() if isinstance(t, bytes) else str(t) for t in targets]
    return {"mcc": mcc.mcc(mulan, captions, audio)["mcc"]}
  return metric_fn
