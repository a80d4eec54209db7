"""Named arrays with scalar metadata in one `.npz` file: the format of the small fitted
states (the semantic tokenizer's k-means centroids, MuLan's RVQ codebooks).

Metadata (e.g. `layer=7`) is stored as 0-d arrays under `meta_<name>`. Files are written
atomically and read without pickle; a damaged or foreign file is an error naming it.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

from musiclm_jax import atomic

_META = "meta_"


def save_arrays(path: str, arrays: Mapping[str, Any], **metadata: Any) -> None:
  """Writes `arrays` and scalar `metadata` to the .npz `path`, atomically."""
  payload = {k: np.asarray(v) for k, v in arrays.items()}
  payload.update({f"{_META}{k}": np.asarray(v) for k, v in metadata.items()})
  with atomic.atomic_file(path, suffix=".npz") as tmp:
    np.savez(tmp, **payload)


def load_arrays(path: str, what: str, required: Sequence[str] = ()
                ) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """(arrays, metadata) of a file written by `save_arrays`. `what` names the kind of file in
  errors ("k-means state"); `required` arrays must be present."""
  try:
    with np.load(path, allow_pickle=False) as data:
      stored = {k: np.asarray(data[k]) for k in data.files}
  except FileNotFoundError:
    raise FileNotFoundError(f"{what} {path!r} does not exist") from None
  except Exception as e:  # zipfile / numpy raise several types on damaged files
    raise ValueError(f"{path}: unreadable {what} ({type(e).__name__}: {e})") from e
  arrays = {k: v for k, v in stored.items() if not k.startswith(_META)}
  metadata = {k[len(_META):]: v.item() for k, v in stored.items() if k.startswith(_META)}
  missing = [k for k in required if k not in arrays]
  if missing:
    raise ValueError(f"{path}: not a {what} (missing {missing})")
  return arrays, metadata
