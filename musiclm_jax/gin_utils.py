"""Gin configuration from the command line, as T5X: --gin_file=... --gin.KEY=VALUE.

`--gin.MODEL_DIR='/tmp/run'` is shorthand for `--gin_bindings="MODEL_DIR='/tmp/run'"`.
Files are looked up in --gin_search_paths, then in the repository's gin/ folder, so
`--gin_file=lm/tiny.gin` works from any directory. Errors name the file or binding at fault.
"""

from __future__ import annotations

import os
import re
import dataclasses
from typing import Any, Callable, Optional, Sequence

import gin

REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


class GinConfigError(ValueError):
  """A gin file or binding that cannot be used, with the reason."""


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Turns '--gin.KEY=VALUE' into '--gin_bindings=KEY = VALUE'."""
  out = []
  for arg in args:
    match = re.fullmatch(r"--gin\.([^=]+)=(.*)", arg, flags=re.DOTALL)
    out.append(f"--gin_bindings={match.group(1)} = {match.group(2)}" if match else arg)
  return out


def _resolve(path: str, search_paths: Sequence[str]) -> str:
  if os.path.isabs(path):
    if os.path.exists(path):
      return path
  else:
    for root in search_paths:
      candidate = os.path.join(root, path)
      if os.path.exists(candidate):
        return candidate
  raise GinConfigError(f"gin file {path!r} not found (searched: {list(search_paths)})")


def parse_gin_flags(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                    gin_search_paths: Optional[Sequence[str]] = None,
                    finalize: bool = True) -> None:
  """Parses files then bindings (later ones win). Raises GinConfigError with the culprit."""
  search_paths = [p for p in (gin_search_paths or []) if p] + [os.getcwd(), REPO_GIN_DIR]
  for root in search_paths:
    gin.add_config_file_search_path(root)
  resolved = [_resolve(f, search_paths) for f in gin_files]
  for path in resolved:
    try:
      gin.parse_config_file(path)
    except Exception as e:  # gin raises ValueError, KeyError, ImportError, ...
      raise GinConfigError(f"in gin file {path}: {type(e).__name__}: {e}") from e
  for binding in gin_bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise GinConfigError(f"in gin binding {binding!r}: {type(e).__name__}: {e}") from e
  if finalize:
    gin.finalize()


def import_configurables() -> None:
  """Imports every module that registers gin configurables."""
  # pylint: disable=g-import-not-at-top,unused-import
  import musiclm_jax.lm  # noqa: F401
  import musiclm_jax.mulan.model  # noqa: F401
  import musiclm_jax.soundstream.model  # noqa: F401
  import musiclm_jax.tasks  # noqa: F401
  import musiclm_jax.w2v_bert.model  # noqa: F401
  from musiclm_jax.training import checkpoints, data, optimizers, partitioning, trainer  # noqa


def query_macros(gin_file: str, names: Sequence[str]) -> dict:
  """The values of macros (e.g. 'SEMANTIC_CLUSTERS') a gin file sets, read in a fresh gin
  config that is cleared again afterwards (callers' live bindings are lost: call this
  before building anything from gin, or in a process of its own)."""
  gin.clear_config()
  try:
    import_configurables()
    parse_gin_flags([gin_file], finalize=False)
    return {name: gin.query_parameter(f"%{name}") for name in names}
  finally:
    gin.clear_config()


@dataclasses.dataclass
class TrainedRun:
  """What inference needs from a training run: its model config, step and variables."""
  config: Any
  step: int
  params: Any
  flax_mutables: Any


def load_run(model_dir: str, make_config: Callable[[], Any], step: Optional[int] = None,
             use_ema: bool = True) -> TrainedRun:
  """Reads MODEL_DIR/config.gin (the run's operative config) and its newest (or `step`)
  checkpoint as numpy. `make_config` builds the model config under that gin config (e.g.
  `SoundStreamConfig`); params are the EMA ones when saved and `use_ema`."""
  from musiclm_jax.training import checkpoints  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(model_dir, "config.gin")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: is {model_dir!r} a training run?")
  import_configurables()
  with gin.unlock_config():
    gin.parse_config_file(config_path, skip_unknown=True)
  config = make_config()
  restored_step, state = checkpoints.restore_numpy_state(model_dir, step)
  params = state["ema_params"] if (use_ema and state.get("ema_params")) else state["params"]
  return TrainedRun(config, restored_step, params, state.get("flax_mutables") or {})
