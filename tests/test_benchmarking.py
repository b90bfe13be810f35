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


def test_time_interleaved_takes_turns_in_blocks_and_rotates_who_goes_first():
    from pocketlm.inference.latency import time_interleaved

    order = []
    calls = {name: (lambda request, name=name: order.append((name, request))) for name in "abc"}
    timings = time_interleaved(calls, ["r1", "r2", "r3"], warmup=1, block=2, settle_s=0)
    assert {name: len(ms) for name, ms in timings.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(ms >= 0 for values in timings.values() for ms in values)
    assert order[:3] == [("a", "r1"), ("b", "r1"), ("c", "r1")]  # warm-up
    assert order[3:] == [("a", "r1"), ("a", "r2"), ("b", "r1"), ("b", "r2"), ("c", "r1"), ("c", "r2"),
                         ("b", "r3"), ("c", "r3"), ("a", "r3")]
