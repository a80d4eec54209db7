"""The dataset builds on Apache Beam: each split a PTransform that TFDS runs and writes.

TFDS builds a split on Beam when `_split_generators` returns a `beam.PTransform` for it
(`tfds build ... --beam_pipeline_options=...`); its writer then shuffles and shards the
(key, example) pairs across workers. Per split here:

  list sources  on the workers (audio_folder: one element per listing unit, or files.txt
                read in byte ranges), so no machine holds the whole listing
  Reshuffle     spreads the sources over the workers (a runner splits work at shuffles)
  process       the builder's per-source function (the one-process build's, unchanged):
                examples out, one outcome per source into Beam counters and a report
  report        the outcomes combined (`CombineGlobally` of the builder's report type) and
                pickled to `report_path`; the builder reads it once the pipeline is done

A worker that dies or raises mid-bundle is retried by the runner, and Beam commits a
bundle's outputs (and counters) only when it succeeds: the per-source function has no side
effects, so a retried file gives its examples exactly once. The report is built from those
committed outputs and is exact; counters are progress telemetry, and some runners (the
local BundleBasedDirectRunner) keep a failed attempt's increments in them too.

Only the builds import this module (it imports apache_beam, the `[beam]` extra).
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
from typing import Callable, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from etils import epath

from musiclm_jax.dataset_builds import audio_folder as af
from musiclm_jax.dataset_builds import musiccaps as mcaps

OUTCOMES = "outcomes"


def write_pickle(value, path: str) -> None:
  """Writes `value` to path (local or a cloud path, as the data_dir) whole."""
  tmp = epath.Path(f"{path}.tmp-{os.getpid()}")
  tmp.write_bytes(pickle.dumps(value))
  tmp.rename(path)


def read_pickle(path: str):
  return pickle.loads(epath.Path(path).read_bytes())


class _Process(beam.DoFn):
  """source -> (key, features) on the main output, its outcome on OUTCOMES; the outcome's
  counters() are added to the Beam counters of `namespace`."""

  def __init__(self, process: Callable, namespace: str):
    super().__init__()
    self._process, self._namespace = process, namespace

  def process(self, source, **side_inputs):
    for item in self._process(source, **side_inputs):
      if isinstance(item, tuple):
        yield item
      else:
        for name, value in item.counters().items():
          Metrics.counter(self._namespace, name).inc(value)
        yield beam.pvalue.TaggedOutput(OUTCOMES, item)


class _Report(beam.CombineFn):
  """Outcomes -> one report (`new_report()`, `.add(outcome)`, `.merge(report)`)."""

  def __init__(self, new_report: Callable):
    super().__init__()
    self._new_report = new_report

  def create_accumulator(self):
    return self._new_report()

  def add_input(self, report, outcome):
    return report.add(outcome)

  def merge_accumulators(self, reports):
    reports = iter(reports)
    merged = next(reports)
    for report in reports:
      merged = merged.merge(report)
    return merged

  def extract_output(self, report):
    return report


class SourcesToExamples(beam.PTransform):
  """PCollection[source] -> PCollection[(key, features)], with the report pickled to
  report_path and the counters of `namespace`. process(source, **side_inputs) yields
  (key, features) tuples and one outcome (any object with counters() -> {name: n})."""

  def __init__(self, process: Callable, new_report: Callable, report_path: str,
               namespace: str, side_inputs: Optional[dict] = None):
    super().__init__()
    self._process, self._new_report = process, new_report
    self._report_path, self._namespace = report_path, namespace
    self._side_inputs = side_inputs or {}

  def expand(self, sources):
    results = (sources
               | "Spread" >> beam.Reshuffle()
               | "Process" >> beam.ParDo(_Process(self._process, self._namespace),
                                         **self._side_inputs)
               .with_outputs(OUTCOMES, main="examples"))
    _ = (results[OUTCOMES]
         | "Report" >> beam.CombineGlobally(_Report(self._new_report))
         | "WriteReport" >> beam.Map(write_pickle, self._report_path))
    return results.examples


def counters(result, namespace: str) -> dict[str, int]:
  """The committed counters of `namespace` in a finished pipeline, summed over the steps
  that report them (attempted where the runner does not commit)."""
  query = result.metrics().query(MetricsFilter().with_namespace(namespace))
  totals = collections.Counter()
  for c in query["counters"]:
    totals[c.key.metric.name] += c.committed if c.committed is not None else c.attempted
  return dict(sorted(totals.items()))


# audio_folder ----------------------------------------------------------------------------

def _audio_file(rel: str, root: str, spec: af.ClipSpec, from_csv: dict):
  caption, source = af.caption_for(root, rel, from_csv)
  return af.process_file(root, rel, spec.split_of(rel), spec, caption, source)


def _file_list_entries(line: str):
  entry = af.file_list_entry(line)
  return [] if entry is None else [entry]


@beam.ptransform_fn
def AudioFolderSplit(  # pylint: disable=invalid-name  (a PTransform, named as one)
    pbegin, root: str, spec: af.ClipSpec, split: str, report_path: str):
  """The (key, example) pairs of one split of audio_folder; the report goes to
  report_path and the csv rows of this split naming no file to report_path + '.unmatched'."""
  list_path = os.path.join(root, af.FILE_LIST)
  if os.path.isfile(list_path):
    files = (pbegin | "ReadFileList" >> beam.io.ReadFromText(list_path)
             | "Entries" >> beam.FlatMap(_file_list_entries)
             | "Distinct" >> beam.Distinct())
  else:
    files = (pbegin | "Units" >> beam.Create(af.listing_units(root))
             | "ListUnit" >> beam.FlatMap(functools.partial(af.list_unit, root)))
  ours = files | "OfSplit" >> beam.Filter(lambda rel: spec.split_of(rel) == split)
  from_csv = pbegin | "CsvPath" >> beam.Create([root]) | "ReadCsv" >> beam.Map(
      af.root_captions)
  examples = ours | "Clips" >> SourcesToExamples(
      functools.partial(_audio_file, root=root, spec=spec), af.BuildReport, report_path,
      namespace="audio_folder", side_inputs={"from_csv": beam.pvalue.AsSingleton(from_csv)})
  csv_keys = from_csv | "CsvKeys" >> beam.FlatMap(
      lambda rows: [(rel, None) for rel in rows if spec.split_of(rel) == split])
  file_keys = ours | "FileKeys" >> beam.Map(lambda rel: (rel, None))
  _ = ({"csv": csv_keys, "file": file_keys}
       | "Join" >> beam.CoGroupByKey()
       | "NoFile" >> beam.Filter(lambda kv: kv[1]["csv"] and not kv[1]["file"])
       | "Keys" >> beam.Keys()
       | "Unmatched" >> beam.combiners.ToList()
       | "WriteUnmatched" >> beam.Map(write_pickle, report_path + ".unmatched"))
  return examples


# musiccaps -------------------------------------------------------------------------------

@beam.ptransform_fn
def MusicCapsSplit(  # pylint: disable=invalid-name  (a PTransform, named as one)
    pbegin, sources: list, split: str, sample_rate: int, report_path: str):
  """The (key, example) pairs of one musiccaps split from its (row, path) sources."""
  return (pbegin | "Rows" >> beam.Create(sources)
          | "Clips" >> SourcesToExamples(
              functools.partial(mcaps.process_row, split=split, sample_rate=sample_rate),
              mcaps.BuildReport, report_path, namespace="musiccaps"))
