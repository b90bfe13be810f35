"""The one module every benchmark measures, tabulates and records its results with."""

import json
import sys

import numpy as np
import pytest

from pocketlm.benchmarking import (
    RECORD_KEYS, latency_summary, markdown_table, percentile, read_results, time_interleaved, write_results,
)


def test_percentiles_interpolate_linearly_between_ranks_as_numpy_does():
    values = [float(i) for i in range(1, 101)]  # 1..100 ms
    stats = latency_summary(reversed(values))
    assert (stats["p50_ms"], stats["p95_ms"], stats["p99_ms"], stats["max_ms"], stats["n"]) == (50.5, 95.05, 99.01, 100, 100)
    assert stats["mean_ms"] == 50.5
    assert percentile([10, 20], 25) == 12.5 == np.percentile([10, 20], 25)
    assert latency_summary([]) == {}


def test_markdown_table_formats_aligns_and_marks_missing_cells():
    rows = [{"a": 1.23456, "b": "x|y", "n": 1200}, {"a": 1234.5, "b": None}]
    assert markdown_table(rows, [("a", "A"), ("b", "B"), "n"]).splitlines() == [
        "| A | B | n |", "| ---: | --- | ---: |", "| 1.23 | x\\|y | 1200 |", "| 1,234.5 | – |  |"]
    assert "| 1.235 |" in markdown_table(rows, ["a"], ".3f")  # one spec for every float
    per_column = markdown_table(rows, ["a", "n"], {"n": ","})
    assert "| 1.23 | 1,200 |" in per_column  # a spec per column, ints included; other floats: 3 significant digits


def test_results_are_one_record_markdown_and_png_that_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["benchmarks/demo.py", "--flag", "a b"])
    table = markdown_table([{"value": 1.5}], ["value"])
    folder = write_results("demo", {"value": 1.5}, table, figures={"value": "1.5 s"},
                           plot=lambda figure: figure.add_subplot(1, 1, 1).plot([1, 2]), output_dir=tmp_path)
    record = json.loads((folder / "demo.json").read_text())
    assert set(RECORD_KEYS) <= set(record) and record["value"] == 1.5 and record["figures"] == [["value", "1.5 s"]]
    assert record["command"] == "python benchmarks/demo.py --flag 'a b'" and "logical CPUs" in record["machine"]
    assert record["date"].endswith("Z") and record["date"][:2] == "20"
    markdown = (folder / "demo.md").read_text()
    assert markdown.startswith(table) and f"Date: {record['date']}" in markdown and record["command"] in markdown
    assert (folder / "demo.png").stat().st_size > 1000
    assert read_results(folder) == read_results(folder, "demo") == record
    assert read_results(tmp_path / "missing") is None
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.json").write_text('{"rows": []}')  # the layout before records: not one
    assert read_results(tmp_path / "old") is None
    with pytest.raises(ValueError, match="machine"):
        write_results("demo", {"machine": "mine"}, table, figures={}, output_dir=tmp_path)


def test_time_interleaved_takes_turns_in_blocks_and_rotates_who_goes_first():
    order = []
    calls = {name: (lambda request, name=name: order.append((name, request))) for name in "abc"}
    timings = time_interleaved(calls, ["r1", "r2", "r3"], warmup=1, block=2, settle_s=0)
    assert {name: len(ms) for name, ms in timings.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(ms >= 0 for values in timings.values() for ms in values)
    assert order[:3] == [("a", "r1"), ("b", "r1"), ("c", "r1")]  # warm-up
    assert order[3:] == [("a", "r1"), ("a", "r2"), ("b", "r1"), ("b", "r2"), ("c", "r1"), ("c", "r2"),
                         ("b", "r3"), ("c", "r3"), ("a", "r3")]


def test_the_throughput_target_compares_the_loop_with_the_fastest_trainer_variant():
    """`benchmarks/pretrain_throughput.py`: the Trainer at its best (here compiled) is the reference, not its bf16 run."""
    import runpy

    from pocketlm.settings import REPO_ROOT
    from pocketlm.training.throughput import add_derived

    target_verdict = runpy.run_path(str(REPO_ROOT / "benchmarks" / "pretrain_throughput.py"))["target_verdict"]

    def rows(ours: float) -> list[dict]:
        measured = [("trainer_bf16", "trainer", "Trainer bf16 autocast", 3000.0),
                    ("trainer_bf16_compile", "trainer", "Trainer bf16 autocast + torch.compile", 4000.0),
                    ("ours_bf16_compile", "pocketlm", "ours bf16 + compile", ours)]
        table = [{"name": n, "loop": loop, "label": label, "bf16": True, "tokens_per_second": t, "flops_per_token": 1e6}
                 for n, loop, label, t in measured]
        add_derived(table, {"fp32_gflops": 100.0, "bf16_gflops": 400.0})
        return table

    short = rows(5000.0)
    assert short[2]["speedup_vs_trainer_bf16"] == pytest.approx(5000 / 3000)  # 1.67× the bf16 run...
    assert short[2]["speedup_vs_trainer_best"] == pytest.approx(1.25)  # ...but 1.25× the Trainer at its best
    assert target_verdict(short) == ("Target (≥ 1.5× the fastest Trainer variant): NOT met — best loop variant "
                                     "'ours bf16 + compile' at 5,000 tokens/s = 1.25× 'Trainer bf16 autocast + "
                                     "torch.compile' (4,000 tokens/s).")
    assert target_verdict(rows(6000.0)).startswith("Target (≥ 1.5× the fastest Trainer variant): met")
    # With the run's peaks: how far a step of nothing but matmuls, at the faster precision, could go.
    assert target_verdict(short, {"fp32_gflops": 100.0, "bf16_gflops": 2.0}).endswith(
        "Ceiling: that Trainer computes 4 model GFLOP/s; at the fp32 matmul peak (100 GFLOP/s) a step of only "
        "matmuls would be 25.00× it.")
    # With the attention kernels timed too: the weight matmuls (0.9 of the model FLOPs here) at the peak take 9 µs a
    # token, attention 4 µs, so at best 1 / 13 µs = 76,923 tokens/s, 19.23× the Trainer's 4,000.
    for row in short:
        row["matmul_flops_per_token"] = 0.9e6
    assert target_verdict(short, {"fp32_gflops": 100.0, "bf16_gflops": 2.0, "attention_s_per_token": 4e-6}).endswith(
        "matmuls would be 25.00× it. With attention timed as it runs (the fused kernels, forward and backward: 4.0 µs "
        "a token), the weight matmuls at the peak and nothing else — no norms, activations, embedding or optimizer — "
        "would be 19.23× it.")
    assert target_verdict(short[:2]) == "target not evaluated (needs a Trainer and a pocketlm variant)"


def test_the_attention_floor_times_the_fused_kernels_forward_and_backward():
    import torch

    from pocketlm.models.transformer_lm import TransformerLMConfig
    from pocketlm.training.throughput import attention_seconds_per_token, flops_per_token, matmul_flops_per_token

    one_layer = attention_seconds_per_token(2, 64, 2, 16, n_layers=1, repeats=2)
    assert 0 < one_layer < 0.01  # a tiny shape: microseconds a token, measured, not assumed
    assert 0 < attention_seconds_per_token(2, 64, 2, 16, n_layers=1, dtype=torch.bfloat16, repeats=1) < 0.1
    config = TransformerLMConfig(vocab_size=100, d_model=32, n_layers=2, n_heads=2, d_ff=64)
    assert matmul_flops_per_token(config) == 6 * (2 * (4 * 32 * 32 + 3 * 32 * 64) + 32 * 100)
    assert flops_per_token(config, 64) - matmul_flops_per_token(config) == 6 * 2 * 64 * 32


def test_steal_share_is_the_hypervisors_part_of_the_cpu_time_between_two_readings():
    from pocketlm.benchmarking import cpu_times, steal_share

    #        user nice system idle iowait irq softirq steal
    before = [100, 0, 50, 800, 0, 0, 0, 50]
    after = [200, 0, 100, 1500, 0, 0, 0, 200]  # 1,000 ticks spent, 150 of them stolen
    assert steal_share(before, after) == 0.15
    assert steal_share(None, after) is None and steal_share(before, before) == 0.0
    now = cpu_times()
    assert now is None or (len(now) >= 8 and 0 <= steal_share(now, cpu_times()) <= 1)


def test_the_load_benchmark_measures_a_stolen_run_again_and_keeps_it_aside():
    import argparse
    import runpy

    from pocketlm.settings import REPO_ROOT

    measured_run = runpy.run_path(str(REPO_ROOT / "benchmarks" / "serving_load.py"))["measured_run"]
    record = {"route": "/generate", "status": 200, "seconds": 0.1, "tokens": 32}
    runs = iter([{"records": [record], "seconds": 1.0, "steal": 0.30}, {"records": [record] * 2, "seconds": 1.0, "steal": 0.01}])
    discarded: list[dict] = []
    run = measured_run(argparse.Namespace(max_steal=0.05, steal_retries=2), lambda: next(runs), discarded)
    assert run["steal"] == 0.01 and len(run["records"]) == 2
    assert discarded == [{"tokens_per_s": 32.0, "generate_p95_ms": 100.0, "steal_share": 0.3}]
    always_stolen = iter([{"records": [record], "seconds": 1.0, "steal": 0.5 + i / 10} for i in range(3)])
    last = measured_run(argparse.Namespace(max_steal=0.05, steal_retries=1), lambda: next(always_stolen), discarded)
    assert last["steal"] == 0.6 and len(discarded) == 2  # the retries spent: the last run is kept
