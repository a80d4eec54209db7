"""Every gin configurable of the project, registered at once for the entry points.

A gin file names configurables from every part (models, tasks, the trainer), so the commands
that parse arbitrary gin files import all of them first. Only entry points and the pipeline
(the top layers) import this module; libraries import what they use.
"""

from __future__ import annotations

from typing import Sequence

import gin

from musiclm_jax import gin_config


def import_configurables() -> None:
  """Imports every module that registers gin configurables."""
  # pylint: disable=g-import-not-at-top,unused-import
  import musiclm_jax.lm  # noqa: F401
  import musiclm_jax.mulan.model  # noqa: F401
  import musiclm_jax.soundstream.model  # noqa: F401
  import musiclm_jax.tasks  # noqa: F401
  import musiclm_jax.w2v_bert.model  # noqa: F401
  from musiclm_jax.training import checkpoints, data, optimizers, partitioning, trainer  # noqa


def query_macros(gin_file: str, names: Sequence[str], bindings: Sequence[str] = ()) -> dict:
  """The values of macros (e.g. 'SEMANTIC_CLUSTERS') a gin file sets, `bindings` applied
  after it, read in a fresh gin config that is cleared again afterwards (callers' live
  bindings are lost: call this before building anything from gin, or in a process of its
  own)."""
  gin.clear_config()
  try:
    import_configurables()
    gin_config.parse_gin_flags([gin_file], bindings, finalize=False)
    return {name: gin.query_parameter(f"%{name}") for name in names}
  finally:
    gin.clear_config()
