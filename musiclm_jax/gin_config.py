"""Gin configuration from the command line, as T5X: --gin_file=... --gin.KEY=VALUE.

`--gin.MODEL_DIR='/tmp/run'` is shorthand for `--gin_bindings="MODEL_DIR='/tmp/run'"`.
Files are looked up in --gin_search_paths, the working directory, then the project's configs
(`configs_dir()`: gin/ of a source checkout, musiclm_jax/configs of an installed wheel), so
`--gin_file=lm/tiny.gin` works from any directory. Errors name the file or binding at fault.

This module parses configuration only and imports no model: the modules that register the
configurables a file names are imported by the caller (`musiclm_jax.configurables` imports
them all for the entry points).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Optional, Sequence

import gin

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _GinSearchMisses(logging.Filter):
  """Drops gin's ERROR record for each search folder that lacks an included file: gin
  tries every folder in turn, so a file found in the last one logs an error per miss."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.msg == "Path not found: %s" and
                record.pathname.endswith(os.path.join("gin", "resource_reader.py")))


_SEARCH_MISSES = _GinSearchMisses()


class GinConfigError(ValueError):
  """A gin file or binding that cannot be used, with the reason."""


def configs_dir() -> str:
  """The folder of the project's gin files: musiclm_jax/configs in an installed wheel (setup.py
  installs gin/ there), else gin/ beside the package in a source checkout."""
  installed = os.path.join(_PACKAGE_DIR, "configs")
  return installed if os.path.isdir(installed) else os.path.join(
      os.path.dirname(_PACKAGE_DIR), "gin")


def rewrite_gin_args(args: Sequence[str]) -> list[str]:
  """Turns '--gin.KEY=VALUE' into '--gin_bindings=KEY = VALUE'."""
  out = []
  for arg in args:
    match = re.fullmatch(r"--gin\.([^=]+)=(.*)", arg, flags=re.DOTALL)
    out.append(f"--gin_bindings={match.group(1)} = {match.group(2)}" if match else arg)
  return out


def search_paths(extra: Optional[Sequence[str]] = None) -> list[str]:
  """Where gin files are looked up, in order: `extra`, the working directory, configs_dir()."""
  return [p for p in (extra or []) if p] + [os.getcwd(), configs_dir()]


def resolve(path: str, paths: Sequence[str]) -> str:
  """The first existing `path` (absolute, or relative to one of `paths`)."""
  if os.path.isabs(path):
    if os.path.exists(path):
      return path
  else:
    for root in paths:
      candidate = os.path.join(root, path)
      if os.path.exists(candidate):
        return candidate
  raise GinConfigError(f"gin file {path!r} not found (searched: {list(paths)})")


def parse_gin_flags(gin_files: Sequence[str], gin_bindings: Sequence[str] = (),
                    gin_search_paths: Optional[Sequence[str]] = None,
                    finalize: bool = True) -> None:
  """Parses files then bindings (later ones win). Raises GinConfigError with the culprit."""
  paths = search_paths(gin_search_paths)
  logging.getLogger().addFilter(_SEARCH_MISSES)   # once: a logger keeps a set of filters
  for root in paths:
    gin.add_config_file_search_path(root)
  resolved = [resolve(f, paths) for f in gin_files]
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
    try:
      gin.finalize()  # checks that every macro and reference has a value
    except ValueError as e:
      message = unset_value_message(e)
      if message is None:
        raise
      raise GinConfigError(message) from None


def unset_value_message(error: ValueError) -> Optional[str]:
  """For gin's 'No bindings specified' / 'Required bindings' errors, one line naming the
  macro or parameter left unset and how to set it; None for any other error."""
  match = re.match(r"(?:No bindings specified for|Required bindings for) '?([^'\s`]+)",
                   str(error))
  if not match:
    return None
  missing = match.group(1).replace("/gin.macro", "")
  return (f"the gin files leave {missing} unset (add the gin file that sets it, or "
          f"--gin.{missing}=VALUE)")
