"""`musiclm-jax pipeline`: the main job, every part trained from data to a report.

  musiclm-jax pipeline --gin_file=pipeline/tiny.gin --gin.Recipe.work_dir="'runs/demo'"
  musiclm-jax pipeline --gin_file=pipeline/small.gin --gin.Recipe.work_dir="'/data/run'" \
      --gin.Recipe.dataset_config="'large_24khz'"        # same recipe, other size and data
  ... --list            the steps and which are done
  ... --only mulan,rvq  just these steps (the ones before them must be done)
  ... --redo generate   run a finished step again

Re-running the command skips finished steps (`<work_dir>/.done/`), so an interrupted job
continues where it stopped. A redone step makes the steps that read it stale, and they are
redone too: `--redo codec` (after raising Recipe.codec_steps) continues the codec's training,
then remakes its export, the tokens, the coarse and fine stages, the bundle, the clips and
the report, and leaves the semantic stage and the other tokenizers be. Training steps resume
from their checkpoints when redone on the same inputs; on new ones their runs/<part> folder
is kept aside as runs/<part>.stale-<time> and they train afresh.
"""

from __future__ import annotations

import argparse

from musiclm_jax import cli_utils, gin_config


def parser() -> argparse.ArgumentParser:
  p = cli_utils.ArgumentParser(prog="musiclm-jax pipeline",
                               description=cli_utils.first_paragraph(__doc__))
  p.add_argument("--gin_file", action="append", default=[], help="e.g. pipeline/tiny.gin")
  p.add_argument("--gin_bindings", action="append", default=[],
                 help="a binding; also written --gin.KEY=VALUE")
  p.add_argument("--list", action="store_true", help="list the steps and stop")
  p.add_argument("--only", default="", help="comma-separated steps to run")
  p.add_argument("--redo", default="", help="comma-separated steps to run again")

  def go(args):
    import gin  # pylint: disable=g-import-not-at-top
    from musiclm_jax.pipeline import recipe as recipe_lib, steps as steps_lib  # pylint: disable=g-import-not-at-top
    if not args.gin_file:
      raise ValueError("give --gin_file=pipeline/<size>.gin")
    gin_config.parse_gin_flags(args.gin_file, args.gin_bindings, finalize=False)
    recipe = recipe_lib.Recipe()
    gin.clear_config()
    steps = recipe_lib.build_steps(recipe, recipe_lib.size_settings(recipe.size,
                                                                   recipe.extra_bindings))
    split = lambda text: [s for s in text.split(",") if s]
    names = [step.name for step in steps]
    for flag, value in (("--only", args.only), ("--redo", args.redo)):
      unknown = [name for name in split(value) if name not in names]
      if unknown:  # before anything is written
        raise ValueError(f"{flag} {value}: no step {', '.join(unknown)} (the steps: "
                         f"{', '.join(names)})")
    if not args.list:
      for field, (old, new) in recipe.save().items():
        print(f"note: Recipe.{field} changed from {old!r} to {new!r}; finished steps keep "
              "the old value (--redo them to apply it)")
    if args.list:
      for i, step in enumerate(steps):
        done = ("stale" if steps_lib.changed_inputs(recipe.work_dir, step) else
                "done" if steps_lib.is_done(recipe.work_dir, step) else "to do")
        print(f"{i + 1:2d}. {step.name:14s} {done:6s} {step.description}")
      return
    try:
      timings = steps_lib.run_steps(steps, recipe.work_dir, split(args.only),
                                    split(args.redo))
    except steps_lib.StepFailed as e:
      print(f"error: {e}\n(fix it and run the same command again: finished steps are "
            "skipped)")
      raise SystemExit(1) from e
    ran = {k: v for k, v in timings.items() if v != "skipped"}
    print(f"finished: {len(ran)} step(s) run, {len(timings) - len(ran)} skipped; report: "
          f"{recipe.path('report', 'summary.md')}")

  p.set_defaults(run=go)
  return p


def main(argv=None) -> None:
  import sys  # pylint: disable=g-import-not-at-top
  argv = gin_config.rewrite_gin_args(sys.argv[1:] if argv is None else argv)
  cli_utils.run(parser(), argv)
