"""The machine a benchmark ran on, recorded beside every result.

Plain Python only (no jax import), so the reference benchmarks that run in other
virtualenvs (e.g. audiolm-pytorch's) describe their machine the same way.
"""

from __future__ import annotations

import os
import platform


def describe(**extra) -> dict:
  """CPU model, core count and platform, plus any `extra` fields (library versions...)."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), **extra}


def describe_jax(**extra) -> dict:
  """`describe()` plus the JAX version, backend and devices."""
  import jax  # pylint: disable=g-import-not-at-top
  return describe(jax=jax.__version__, backend=jax.default_backend(),
                  devices=[str(d) for d in jax.devices()], **extra)


def save_result(report: dict, name: str, out: str | None = None) -> str:
  """Writes `report` as JSON to `out`, default benchmarks/results/<name>_<backend>.json
  (backend from JAX), with today's date unless it has one, and returns the path."""
  import datetime  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  report.setdefault("date", datetime.date.today().isoformat())
  if out is None:
    import jax  # pylint: disable=g-import-not-at-top
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       f"{name}_{jax.default_backend()}.json")
  from musiclm_jax import atomic  # pylint: disable=g-import-not-at-top  (plain Python)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  # Whole or not at all: an interrupted run never leaves half a results file.
  atomic.atomic_write_text(out, json.dumps(report, indent=1, default=float))
  return out
