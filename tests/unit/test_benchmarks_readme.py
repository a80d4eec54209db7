"""benchmarks/README.md is generated from benchmarks/results/*.json (benchmarks/make_readme.py):
it is up to date, and the generator copes with JSONs it does not know. No jax: milliseconds."""

import json

from benchmarks import make_readme

CPU = {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2, "jax": "0.10.2", "backend": "cpu",
       "devices": ["cpu:0"]}
H200 = {"gpu": "NVIDIA H200, 143771 MiB, driver 580.159.04", "backend": "gpu"}


def _write(directory, name, report):
  (directory / name).write_text(json.dumps(report), encoding="utf-8")


def _rows(markdown: str, section: str) -> list[list[str]]:
  """The cells of the table under '## section' (header and separator rows left out)."""
  body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
  rows = [line for line in body.splitlines() if line.startswith("|")]
  return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[2:]]


def test_readme_is_up_to_date():
  message = make_readme.check()
  assert message is None, message


def test_missing_headline_keys_give_dashes(tmp_path):
  # A codec_quality JSON that lost everything but its name and machine still gets its row.
  _write(tmp_path, "codec_quality_cpu.json", {"benchmark": "codec_quality", "machine": CPU})
  _write(tmp_path, "codec_quality_odd_cpu.json", {"benchmark": "codec_quality",
                                                  "results": [1, 2], "machine": "?"})
  markdown = make_readme.render(str(tmp_path))
  rows = _rows(markdown, "codec_quality")
  assert len(rows) == 2
  first, odd = rows
  assert first[0] == "[codec_quality_cpu.json](results/codec_quality_cpu.json)"
  assert first[1] == "2-core Intel Xeon, CPU"
  assert set(first[2:]) == {"—"}
  assert set(odd[1:]) == {"—"}
  n_columns = 3 + len(make_readme.SPECS["codec_quality"].columns)
  assert all(len(row) == n_columns for row in rows)


def test_unknown_benchmark_gets_its_scalar_fields(tmp_path):
  _write(tmp_path, "new_thing_gpu.json", {
      "benchmark": "new_thing (variant b)", "machine": H200, "date": "2027-01-02 03:04:05",
      "tokens_per_second": 12345, "loss": 0.123456, "size": "small",
      "note": "after #12, commit 0123abcd4567: long prose that is not a number at all",
      "nested": {"ignored": 1}})
  _write(tmp_path, "mystery_cpu.json", {"machine": CPU, "score": 0.5})   # no "benchmark"
  (tmp_path / "broken_cpu.json").write_text("{not json", encoding="utf-8")
  (tmp_path / "notes.txt").write_text("not a result", encoding="utf-8")
  markdown = make_readme.render(str(tmp_path))
  assert markdown.startswith("# Benchmark results")
  assert "do not edit" in markdown
  assert [line[3:] for line in markdown.splitlines() if line.startswith("## ")] == [
      "broken", "mystery", "new_thing"]
  header = [line for line in markdown.split("## new_thing\n")[1].splitlines()
            if line.startswith("|")][0]
  assert "tokens_per_second" in header and "size" in header and "note" not in header
  assert _rows(markdown, "new_thing") == [[
      "[new_thing_gpu.json](results/new_thing_gpu.json)", "NVIDIA H200", "2027-01-02",
      "12345", "0.123", "small"]]
  assert _rows(markdown, "mystery")[0][1:] == ["2-core Intel Xeon, CPU", "—", "0.5"]
  assert len(_rows(markdown, "broken")) == 1
  assert "#12" not in markdown and "0123abcd" not in markdown
  assert make_readme.render(str(tmp_path)) == markdown   # deterministic


def test_check_names_the_stale_file(tmp_path):
  _write(tmp_path, "codec_speed_cpu.json", {"benchmark": "codec_speed", "machine": CPU,
                                            "results": {"encode_x_realtime": 21.7}})
  readme = tmp_path / "README.md"
  assert make_readme.main(["--results_dir", str(tmp_path), "--out", str(readme)]) == 0
  assert make_readme.check(str(tmp_path), str(readme)) is None
  assert "| 21.7 |" in readme.read_text(encoding="utf-8")
  _write(tmp_path, "codec_speed_gpu.json", {"benchmark": "codec_speed", "machine": H200})
  message = make_readme.check(str(tmp_path), str(readme))
  assert message and "README.md" in message and "\n" not in message
  assert make_readme.main(["--check", "--results_dir", str(tmp_path),
                           "--out", str(readme)]) == 1


def test_lookup_keys_with_dots_and_list_indices():
  data = {"results": {"streaming_0.5s_x": 3.0}, "passes": [{"v": 1}, {"v": 2}]}
  assert make_readme.lookup(data, "results.streaming_0.5s_x") == 3.0
  assert make_readme.lookup(data, "passes.-1.v") == 2
  assert make_readme.lookup(data, "passes.5.v") is None
  assert make_readme.lookup(data, "results.missing") is None


def test_acoustic_half_lists_a_longer_trained_coarse_stage(tmp_path):
  fad = lambda value: {"fad": {"fad": value}}
  _write(tmp_path, "acoustic_half_cpu.json", {
      "benchmark": "acoustic_half", "machine": CPU, "coarse_levels": 3,
      "recipe": {"size": "tiny", "stage_steps": [800, 1200, 600]},
      "renderings": {"codec": fad(20.7), "acoustic_coarse_only": fad(37.71),
                     "acoustic_coarse_only_step800": fad(45.0),
                     "acoustic_coarse_only_step3000": fad(32.77)},
      "coarse_run": {"dir": "runs/coarse_longer", "bundle_validation_loss": 2.039,
                     "checkpoints": {"3000": {"validation_loss": 1.883},
                                     "800": {"validation_loss": None}}}})
  _write(tmp_path, "acoustic_half_old_cpu.json", {
      "benchmark": "acoustic_half", "machine": CPU, "coarse_levels": 2,
      "recipe": {"size": "tiny", "stage_steps": [800, 1200, 600]}, "renderings": {}})
  rows = {row[0].split("]")[0][1:]: row for row in
          _rows(make_readme.render(str(tmp_path)), "acoustic_half")}
  assert rows["acoustic_half_cpu.json"][-1] == "3000 / 1.88 / 32.8"
  assert rows["acoustic_half_old_cpu.json"][-1] == "—"
