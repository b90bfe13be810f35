"""Benchmark results, one way: time the calls, summarise the latencies, tabulate, record, read back.

Every benchmark in `benchmarks/` writes, through `write_results`, one folder `benchmarks/results/<name>/`:

* `<name>.json` — the record: `name`, `command` (the exact command line to rerun), `machine`, `date` (UTC ISO),
  `figures` (its headline numbers: [label, text with the unit] pairs, in order) and every number it measured;
* `<name>.md` — its tables, ending with the machine, date and command;
* `<name>.png` — its plot.

`python -m pocketlm.report` gathers the records into `docs/results.md`; the ONNX benchmark Space shows the
`qa_latency` one (`read_results`). Published artifacts record the same provenance (`provenance()`).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.io import atomic_write, atomic_write_text, write_json
from pocketlm.settings import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RECORD_KEYS = ("name", "command", "machine", "date", "figures")
"""What `write_results` adds to every benchmark's numbers; a JSON without them is not a record."""


# --- where, when and how a number was measured ------------------------------------------------------------


def machine_description() -> str:
    """One line naming the machine a number was measured on (CPU model and count, and the GPU if one is in use)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    line = f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"
    # Name the GPU only where the measuring process already uses torch: importing it here would cost seconds.
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        line += f", GPU {torch.cuda.get_device_name(0)}"
    return line


def cpu_times() -> list[int] | None:
    """The machine's cumulative CPU times in ticks (`/proc/stat`'s `cpu` line: user, nice, system, idle, iowait,
    irq, softirq, steal, ...), or None where there is no `/proc/stat` (not Linux)."""
    try:
        with open("/proc/stat") as stat:
            return [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time between two `cpu_times` readings that the hypervisor gave to other guests (steal):
    on a shared VM the same run is slower when it is high, so a benchmark records it beside its timings."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after)]
    return spent[7] / sum(spent) if sum(spent) > 0 else 0.0


def command_line() -> str:
    """The running command as a user would type it from the repository root (`python benchmarks/x.py --flag v`)."""
    argv = list(sys.argv)
    if argv and argv[0]:
        script = Path(argv[0]).resolve()
        if script.is_relative_to(REPO_ROOT):
            argv[0] = str(script.relative_to(REPO_ROOT))
    return shlex.join(["python", *argv])


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (`2025-01-31T14:02:07Z`)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance() -> dict[str, str]:
    """`command`, `machine` and `date` of a number measured now: what every record and published artifact carries."""
    return {"command": command_line(), "machine": machine_description(), "date": utc_now()}


# --- timing and latency summaries ------------------------------------------------------------------------


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
    another would share the cores with those spinning threads. `warmup` untimed requests each, first."""
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


def percentile(values: Iterable[float], q: float) -> float:
    """The `q`-th percentile (0–100) by linear interpolation between the two nearest ranks — numpy's default
    method (Hyndman & Fan type 7, as Excel's PERCENTILE.INC): p50 is the median, p95 of 1..100 is 95.05."""
    return float(np.percentile(np.asarray(list(values), dtype=np.float64), q))


def latency_summary(milliseconds: Iterable[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean / max (ms, 2 decimals, percentiles as `percentile`) and the count `n`; {} for none."""
    values = np.asarray(list(milliseconds), dtype=np.float64)
    if not values.size:
        return {}
    stats = {f"p{q}_ms": percentile(values, q) for q in (50, 95, 99)}
    stats |= {"mean_ms": float(values.mean()), "max_ms": float(values.max())}
    return {key: round(value, 2) for key, value in stats.items()} | {"n": int(values.size)}


# --- tables and records ----------------------------------------------------------------------------------


def significant(value: float) -> str:
    """Three significant digits, whole numbers from 100 up with a thousands separator and one decimal."""
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str | tuple[str, str]],
                   formats: str | Mapping[str, str] | None = None) -> str:
    """A Markdown table of `rows` (dicts), ending with a newline.

    `columns` are keys, or (key, header) pairs. `formats` is a format spec for every float (".2f"), or one per
    column ({"size_MB": ".3f", "params": ","}) applied to that column's ints and floats; other floats get
    `significant`. A missing key is an empty cell, None is "–". Columns holding only numbers are right-aligned.
    """
    pairs = [(column, column) if isinstance(column, str) else column for column in columns]
    per_column = formats if isinstance(formats, Mapping) else {}

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def cell(value: Any, key: str) -> str:
        if value is None:
            return "–"
        if is_number(value) and key in per_column:
            return format(value, per_column[key])
        if isinstance(value, float):
            return format(value, formats) if isinstance(formats, str) else significant(value)
        return str(value).replace("|", "\\|")

    def rule(key: str) -> str:
        values = [row[key] for row in rows if row.get(key) is not None]
        return "---:" if values and all(map(is_number, values)) else "---"

    lines = ["| " + " | ".join(header for _, header in pairs) + " |",
             "| " + " | ".join(rule(key) for key, _ in pairs) + " |"]
    lines += ["| " + " | ".join(cell(row.get(key, ""), key) for key, _ in pairs) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(name: str, results: Mapping[str, Any], markdown: str, *, figures: Mapping[str, str],
                  plot: Callable[[Any], None] | None = None, output_dir: str | Path | None = None) -> Path:
    """Record benchmark `name` in `output_dir` (default `benchmarks/results/<name>/`); returns the folder.

    `results` are its numbers; `figures` its headline numbers as the report card shows them (label → text with
    the unit, e.g. {"ONNX Runtime int8 × PyTorch (p50)": "2.21×"}); `markdown` its tables; `plot(figure)` draws
    on a matplotlib figure (11 × 4.5 in; resize with `figure.set_size_inches`) saved as `<name>.png`.
    """
    clash = set(RECORD_KEYS) & set(results)
    if clash:
        raise ValueError(f"{name}: results must not use the record's keys {sorted(clash)}")
    folder = Path(output_dir) if output_dir is not None else RESULTS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    record = {"name": name, **provenance(), "figures": [[label, text] for label, text in figures.items()], **results}
    write_json(folder / f"{name}.json", record)
    atomic_write_text(folder / f"{name}.md", f"{markdown.rstrip()}\n\nMachine: {record['machine']}. "
                                             f"Date: {record['date']}. Command: `{record['command']}`.\n")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=(11, 4.5))
        plot(figure)
        figure.tight_layout()
        atomic_write(folder / f"{name}.png", lambda tmp: figure.savefig(tmp, format="png", dpi=110))
        plt.close(figure)
    print(f"wrote {folder}/{name}.{{json,md{',png' if plot else ''}}}", flush=True)
    return folder


def read_results(folder: str | Path, name: str | None = None) -> dict[str, Any] | None:
    """The record in `folder`: `<name>.json` if `name` is given, else the one JSON there that is a record
    (preferring `<folder name>.json`); None when there is none (never measured, or written by an older layout)."""
    folder = Path(folder)
    candidates = [folder / f"{name}.json"] if name else sorted(folder.glob("*.json"), key=lambda p: p.stem != folder.name)
    for path in candidates:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and all(key in record for key in RECORD_KEYS):
            return record
    return None


def paired_bars(axes, labels: Sequence[str], bars: Mapping[str, Sequence[float]], ylabel: str, title: str,
                annotations: Sequence[str] | None = None, reference: tuple[float, str] | None = None) -> None:
    """Two bars per row (e.g. p50 and p95) on `axes`, the rows' labels under them.

    `annotations` go above each row's first bar (speed-ups); `reference` is a (value, label) dashed line (a target)."""
    (first, first_values), (second, second_values) = bars.items()
    x = np.arange(len(labels))
    axes.bar(x - 0.2, first_values, width=0.4, label=first)
    axes.bar(x + 0.2, second_values, width=0.4, label=second)
    for i, note in enumerate(annotations or []):
        axes.annotate(note, (i - 0.2, first_values[i]), ha="center", va="bottom")
    if reference:
        axes.axhline(reference[0], color="gray", linestyle="--", label=reference[1])
    axes.set_xticks(x, labels)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend()
