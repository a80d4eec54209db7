"""The work behind the TFDS builders in data/: listing sources, turning each into examples,
and the build report, written once for both engines (one process, or Apache Beam).

The builders (installed as `musiclm_jax.datasets`) keep only what TFDS asks of them
(configs, features, splits); everything a Beam worker runs lives here, in modules a
worker can import by name however the builder itself was loaded (`tfds build data/NAME`
imports it under a name that exists only in the launching process).
"""

import logging


def beam_requested(download_config) -> bool:
  """Whether a TFDS build was asked to run on Beam (`--beam_pipeline_options`, or a
  DownloadConfig with beam_options / beam_runner)."""
  return download_config is not None and (download_config.beam_options is not None
                                          or download_config.beam_runner is not None)


def report_path(data_dir: str, split: str) -> str:
  """Where a Beam build's report of `split` waits for the builder (inside the dataset's
  folder under construction; removed once read)."""
  return f"{data_dir}/.build_report-{split}.pickle"


class _BeamStartupNotice(logging.Filter):
  """Drops apache_beam's notice that the Google Cloud clients are not installed (logged on
  the root logger at import; the builds use no GCP IO)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("apitools not found")


def quiet_beam_logs() -> None:
  """For the build-data CLI: no start-up notice, and no traceback for an element that
  fails the build (the CLI reports the failure in one line)."""
  logging.getLogger().addFilter(_BeamStartupNotice())
  logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
