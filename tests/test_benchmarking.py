"""The helpers every benchmark writes its results with."""

import json

from pocketlm.benchmarking import markdown_table, percentiles_ms, write_results


def test_percentiles_are_nearest_rank_in_milliseconds():
    stats = percentiles_ms([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert (stats["p50"], stats["p95"], stats["p99"], stats["max"], stats["n"]) == (50.5, 95, 99, 100, 100)
    assert percentiles_ms([]) == {}


def test_results_are_json_markdown_and_png(tmp_path):
    table = markdown_table([{"a": 1.23456, "b": "x"}, {"a": 1234.5}], [("a", "A"), ("b", "B")])
    assert table.splitlines() == ["| A | B |", "| --- | --- |", "| 1.23 | x |", "| 1,234.5 |  |"]
    write_results(tmp_path, "demo", {"value": 1}, table, lambda figure: figure.add_subplot(1, 1, 1).plot([1, 2]))
    assert json.loads((tmp_path / "demo.json").read_text())["value"] == 1
    assert "Machine:" in (tmp_path / "demo.md").read_text() and (tmp_path / "demo.png").stat().st_size > 1000
