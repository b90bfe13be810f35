"""Time single requests and summarise them (p50/p95), and write a benchmark's results the project's way.

Every benchmark writes, under `benchmarks/results/<name>/`: `results.json` (numbers, settings, command,
machine), `results.md` (a Markdown table) and a PNG plot.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.io import atomic_write_text, write_json
from pocketlm.settings import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def time_requests(call: Callable[[Any], object], requests: Sequence[Any], warmup: int) -> list[float]:
    """Milliseconds of `call(request)` for each request, after `warmup` untimed calls (on the first requests)."""
    for request in list(requests)[:warmup]:
        call(request)
    timings = []
    for request in requests:
        started = time.perf_counter()
        call(request)
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def time_interleaved(calls: Mapping[str, Callable[[Any], object]], requests: Sequence[Any], warmup: int,
                     block: int = 10, settle_s: float = 0.1) -> dict[str, list[float]]:
    """Milliseconds of each of `calls` on each request, the calls taking turns in blocks of `block` requests.

    On a shared VM the host's speed drifts by up to 2× within minutes; timing one runtime after another would
    compare them under different conditions, so the runtimes take turns, starting each round with a different
    one. Turns are blocks, not single requests, with an untimed `settle_s` pause at each switch: the thread
    pools of PyTorch (OpenMP) and ONNX Runtime spin for a while after a call, and a runtime timed right after
    another would share the two cores with those spinning threads. `warmup` untimed requests each, first."""
    names = list(calls)
    for request in list(requests)[:warmup]:
        for name in names:
            calls[name](request)
    timings: dict[str, list[float]] = {name: [] for name in names}
    for round_number, start in enumerate(range(0, len(requests), block)):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(settle_s)
            for request in requests[start : start + block]:
                started = time.perf_counter()
                calls[name](request)
                timings[name].append((time.perf_counter() - started) * 1000)
    return timings


def summarise(milliseconds: Iterable[float]) -> dict[str, float]:
    values = np.asarray(list(milliseconds), dtype=np.float64)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "mean_ms": round(float(values.mean()), 2),
        "requests": int(values.size),
    }


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of `rows`; `columns` are (key, header) pairs; floats get 2 decimals."""
    def cell(value):
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header for _, header in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key, "")) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def command_line() -> str:
    """The command that is running, as a user would type it from the repo root."""
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def write_results(name: str, results: dict, table: str, plot: Callable[[Path], None], output_dir: Path | None = None) -> Path:
    """Write results.json, results.md and (through `plot(path)`) the PNG of benchmark `name`; returns the folder."""
    from pocketlm.hub import machine_description

    folder = output_dir or RESULTS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    results = {**results, "machine": machine_description(), "command": command_line()}
    write_json(folder / "results.json", results)
    atomic_write_text(
        folder / "results.md",
        f"# {name}\n\n{table}\n\nMachine: {results['machine']}.\nCommand: `{results['command']}`\n",
    )
    plot(folder / f"{name}.png")
    return folder


def paired_bar_plot(path: Path, labels: Sequence[str], bars: Mapping[str, Sequence[float]], ylabel: str, title: str,
                    annotations: Sequence[str] | None = None, reference: tuple[float, str] | None = None) -> None:
    """Two bars per row (e.g. p50 and p95) with the rows' labels under them, written to `path` as a PNG.

    `annotations` go above each row's first bar (speed-ups); `reference` is a (value, label) dashed line (a target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (first, first_values), (second, second_values) = bars.items()
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x - 0.2, first_values, width=0.4, label=first)
    ax.bar(x + 0.2, second_values, width=0.4, label=second)
    for i, note in enumerate(annotations or []):
        ax.annotate(note, (i - 0.2, first_values[i]), ha="center", va="bottom")
    if reference:
        ax.axhline(reference[0], color="gray", linestyle="--", label=reference[1])
    ax.set_xticks(x, labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
