"""What every benchmark writes: `<name>.json` (numbers + machine + command), `<name>.md` (a table), `<name>.png`.

The integrator reruns each benchmark on a quiet machine; the files say what ran, where, and how.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pocketlm.io import atomic_write, atomic_write_text, write_json


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean / max in milliseconds (nearest-rank percentiles) of a list of durations in seconds."""
    if not seconds:
        return {}
    ordered = sorted(1000 * s for s in seconds)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    return {"p50": statistics.median(ordered), "p95": rank(95), "p99": rank(99), "mean": statistics.fmean(ordered),
            "max": ordered[-1], "n": len(ordered)}


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of `rows`; `columns` are (key, header) pairs; floats get 3 significant decimals at most."""

    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(header for _, header in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key, "")) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(output_dir: str | Path, name: str, results: dict[str, Any], markdown: str,
                  plot: Callable[[Any], None] | None = None) -> Path:
    """Write the JSON (with machine and command added), the Markdown and, via `plot(figure)`, the PNG."""
    from pocketlm.hub import machine_description

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    command = " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else ""
    write_json(output_dir / f"{name}.json", {**results, "machine": machine, "command": command})
    atomic_write_text(output_dir / f"{name}.md", f"{markdown}\nMachine: {machine}. Command: `{command}`.\n")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=(11, 4.5))
        plot(figure)
        figure.tight_layout()
        atomic_write(output_dir / f"{name}.png", lambda tmp: figure.savefig(tmp, format="png", dpi=110))
        plt.close(figure)
    print(f"wrote {output_dir}/{name}.{{json,md{',png' if plot else ''}}}", flush=True)
    return output_dir
