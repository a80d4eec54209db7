"""SeqIO mixtures from gin: several tasks with the same features, sampled by rate.

  mulan_mix/register_mixture.name = 'mulan_pairs_mix'
  mulan_mix/register_mixture.tasks = [@pairs_a/register_audio_crop_task(),
                                      @pairs_b/register_audio_crop_task()]
  mulan_mix/register_mixture.rates = [3.0, 1.0]
  train/DatasetConfig.mixture_or_task_name = @mulan_mix/register_mixture()

(e.g. a large unlabelled-caption corpus next to a small, well-captioned one). seqio samples
each example's task with probability rate / sum(rates), per host shard.
"""

from __future__ import annotations

from typing import Optional, Sequence

import gin
import seqio


@gin.configurable
def register_mixture(name: str, tasks: Sequence[str],
                     rates: Optional[Sequence[float]] = None) -> str:
  """Registers (or re-registers) a mixture of registered tasks; returns its name.

  rates: one positive rate per task (default: equal).
  """
  tasks = list(tasks)
  rates = [1.0] * len(tasks) if rates is None else [float(r) for r in rates]
  if not tasks:
    raise ValueError(f"mixture {name!r} has no tasks")
  if len(rates) != len(tasks) or min(rates) <= 0:
    raise ValueError(f"mixture {name!r}: need one positive rate per task, got {rates} for "
                     f"{tasks}")
  unknown = [t for t in tasks if t not in seqio.TaskRegistry.names()]
  if unknown:
    raise ValueError(f"mixture {name!r}: tasks {unknown} are not registered")
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, list(zip(tasks, rates)))
  return name
