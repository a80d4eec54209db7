"""Shared start-up for the entry points (train, eval, infer): flags, gin, multi-process."""

from __future__ import annotations

import sys
from typing import Callable

import gin

from absl import app, flags, logging

from musiclm_jax import cli_utils, configurables, gin_config
from musiclm_jax.training import data, distributed, xla_flags

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, parsed in order (later ones win).")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings; '--gin.KEY=VALUE' also works.")
flags.DEFINE_list("gin_search_paths", [], "Extra folders in which to look up gin files.")
flags.DEFINE_string("coordinator_address", None, "Multi-process: 'host:port' of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's rank.")
flags.DEFINE_string("cpu_collectives", None, "CPU collectives for multi-process CPU: 'gloo'.")
flags.DEFINE_bool("multiprocess_auto", False,
                  "Call jax.distributed.initialize() with cluster auto-detection.")


def _help(main: Callable[[], None], full: bool) -> str:
  """--help: the command's purpose and its flags (--helpfull: absl's flags too)."""
  doc = sys.modules[main.__module__].__doc__ or ""
  prog = sys.argv[0] if sys.argv[0].startswith("musiclm-jax") else "musiclm-jax COMMAND"
  return "\n".join([
      f"usage: {prog} --gin_file=FILE ... [--gin.KEY=VALUE ...] [flags]", "",
      cli_utils.first_paragraph(doc), "",
      "Gin files are looked up in --gin_search_paths, the working directory and the "
      "project's configs; --gin.MODEL_DIR=\"'/path'\" sets the run folder.", "",
      "flags:", FLAGS.get_help() if full else FLAGS.module_help(__name__)])


def run(main: Callable[[], None]) -> None:
  """Parses flags (with --gin.KEY=VALUE), starts multi-process JAX, parses gin, runs main."""
  # absl's own --help lists the flags of the __main__ module (here, none) and exits 1.
  for arg in sys.argv[1:]:
    if arg in ("-h", "--help", "--helpshort", "--helpfull", "-?"):
      print(_help(main, full=arg == "--helpfull"))
      sys.exit(0)

  def _main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
      # Orbax and SeqIO log every file at INFO; keep the console to progress and results.
      logging.set_verbosity(logging.WARNING)
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           FLAGS.cpu_collectives, auto=FLAGS.multiprocess_auto)
    configurables.import_configurables()
    try:
      gin_config.parse_gin_flags(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
    except gin_config.GinConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    try:
      main()
    except ValueError as e:  # a value the gin files left unset: one line, not a traceback
      message = gin_config.unset_value_message(e)
      if message is None:
        raise
      print(f"error: {message}", file=sys.stderr)
      sys.exit(2)

  # Before absl starts (its start-up callbacks make TensorFlow probe its devices) and before
  # TF's first op: the GPUs are JAX's. The GPU throughput flags go in before JAX's backends.
  xla_flags.apply_gpu_flags()
  data.hide_gpus_from_tensorflow()
  app.run(_main, argv=gin_config.rewrite_gin_args(sys.argv))


def required_model_dir() -> str:
  """The MODEL_DIR gin macro, or a clear exit when it is not set."""
  try:
    return gin.query_parameter("%MODEL_DIR")
  except ValueError:
    print("error: set the run folder with --gin.MODEL_DIR=\"'/path'\"", file=sys.stderr)
    sys.exit(2)
