"""The report card: every benchmark's record and every published model's metrics on one page, `docs/results.md`.

    python -m pocketlm.report            # (re)writes docs/results.md
    python -m pocketlm.report --only serving_load,lm_graph   # only those benchmarks' sections, the rest kept
    python -m pocketlm.report --check    # exit 1 when a figure of README.md's results table, or a measured figure
                                         # of a docs page, is not in docs/results.md

Benchmarks come from `benchmarks/results/*/*.json` (the records `pocketlm.benchmarking.write_results` writes:
command, machine, date, headline figures); a benchmark in `benchmarks/` with no record yet is listed with the
command that measures it. Published models come from the local hub (`pocketlm.settings.hub_dir()`): each
folder's `metrics.json` (the numbers of its model card) and `provenance.json` (`pocketlm.hub.publish`).
The page is generated, never edited: the same records give the same page, sections sorted by name.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from pocketlm.benchmarking import RESULTS_DIR, markdown_table, read_results
from pocketlm.cli import run
from pocketlm.errors import ConfigError
from pocketlm.io import atomic_write_text
from pocketlm.settings import REPO_ROOT, hub_dir

REPORT_COMMAND = "python -m pocketlm.report"
BENCHMARKS_DIR = REPO_ROOT / "benchmarks"
REPORT_PATH = REPO_ROOT / "docs" / "results.md"
README_PATH = REPO_ROOT / "README.md"

NUMBER = re.compile(r"(?<![\w.@/])[-+−]?\d+(?:,\d{3})*(?:\.\d+)?")
"""A figure in text: `66.92`, `1.33` (of `1.33×`), `0.77` (of `0.77 s`), `4,961`, `−0.73`; not the digits of a
name such as `fp32`, `p95`, `OPQ32_128` or `recall@5`."""
LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")
MEASUREMENT = re.compile(
    r"(?<![\w.@/])(?<!every )(?<!within )(?<!under )(?<![<≤≥>] )(?<![<≤≥>])"
    r"(\d+(?:,\d{3})*(?:\.\d+)?) ?(?:ms\b|tokens/s|req/s|(?<=\.\d)×|(?<=\.\d\d)×|(?<=\.\d\d\d)×)")
"""A measured figure in prose: a latency (`23 ms`), a rate (`316 tokens/s`) or a ratio with decimals (`2.21×`);
not a setting or a goal (`every 100 ms`, `< 200 ms`, `≥ 3×`) nor a multiple such as `30×` the corpus."""
LABELLED_MEASUREMENT = re.compile(r"\b(?:F1|EM|PPL|perplexity|ROUGE-L|recall@\d+(?:/\d+)*) (\d+(?:\.\d+)?)\b")
"""A quality figure named by its metric: `F1 66.92`, `PPL 129.5`, `recall@5 0.963`."""
DOCS_DIR = REPO_ROOT / "docs"


@dataclass(frozen=True)
class BenchmarkScript:
    """A script in `benchmarks/`: its name, what it measures (its docstring's first line) and how to run it."""

    name: str
    title: str
    command: str


def benchmark_scripts(folder: Path = BENCHMARKS_DIR) -> dict[str, BenchmarkScript]:
    """Every `benchmarks/<name>.py`, read (not imported) for its title and the usage line of its docstring."""
    scripts = {}
    for path in sorted(folder.glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        usage = next((line for line in doc.splitlines() if f"benchmarks/{path.name}" in line), "")
        command = usage.split("#", 1)[0].strip() or f"python benchmarks/{path.name}"
        title = " ".join(doc.split("\n\n", 1)[0].split()) or path.stem  # the docstring's first paragraph
        scripts[path.stem] = BenchmarkScript(path.stem, title, command)
    return scripts


def provenance_lines(record: dict) -> list[str]:
    return [f"- **Command**: `{record.get('command') or 'not recorded'}`",
            f"- **Machine**: {record.get('machine') or 'not recorded'}",
            f"- **Date**: {record.get('date') or 'not recorded'}"]


def figures_table(figures: dict, label: str = "figure") -> str:
    return markdown_table([{"label": key, "value": value} for key, value in figures.items()], [("label", label), ("value", "value")])


def benchmark_section(folder: str, record: dict | None, script: BenchmarkScript | None, has_plot: bool = True) -> str:
    """`## <folder>`: what was measured, how, where and when, and its headline figures — or how to measure it.
    `has_plot`: the benchmark drew `<name>.png` beside its record (not every benchmark draws one)."""
    title = script.title if script else (record or {}).get("name", folder)
    lines = [f"## {folder}", "", title, ""]
    if record is None:
        command = script.command if script else f"python benchmarks/{folder}.py"
        return "\n".join(lines + [f"Not measured yet — run `{command}`.", ""])
    lines += provenance_lines(record)
    where = f"benchmarks/results/{folder}/{record['name']}"
    plot = f", plot `{where}.png`" if has_plot else ""
    lines += [f"- **All its numbers**: `{where}.json`, tables in `{where}.md`{plot} (regenerated, not committed)", ""]
    if record["figures"]:
        lines.append(figures_table(dict(record["figures"])))
    else:
        lines += ["No headline figures recorded.", ""]
    return "\n".join(lines)


def metric_text(value) -> str:
    """A card metric as the report shows it: ints with separators, floats to 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def published_models(hub: Path) -> dict[str, Path]:
    """Repo id → folder of every artifact published in the local hub (`<owner>/<name>/metrics.json`), sorted."""
    return {f"{path.parent.parent.name}/{path.parent.name}": path.parent for path in sorted(hub.glob("*/*/metrics.json"))}


def model_section(repo_id: str, folder: Path) -> str:
    metrics = json.loads((folder / "metrics.json").read_text())
    provenance_file = folder / "provenance.json"
    provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else {}
    lines = [f"### {repo_id}", ""] + provenance_lines(provenance) + [""]
    if not provenance:
        lines += ["Published before pocketlm recorded provenance: republish it to record its command, machine and date.", ""]
    lines.append(figures_table({name: metric_text(value) for name, value in sorted(metrics.items())}, "metric"))
    history_file, summary_file = folder / "training_metrics.json", folder / "summary.json"
    if history_file.is_file() and summary_file.is_file():
        curve = learning_curve(json.loads(history_file.read_text()), json.loads(summary_file.read_text()))
        if curve:
            lines += ["Learning curve (every validation of the run):", "", curve + "\n"]  # the table ends with \n
    return "\n".join(lines)


def learning_curve(history: list[dict], summary: dict) -> str | None:
    """A pretraining run's validations as a table — tokens seen, hours, perplexity, bits per byte — or None when it
    validated fewer than three times (a curve needs points). Every step of the loop trains on the same number of
    tokens (full chunks, full batches), so a step's tokens are `step × train_tokens / steps` of its `summary.json`."""
    evaluations = [r for r in history if "eval_ppl" in r]
    if len(evaluations) < 3 or not summary.get("steps"):
        return None
    tokens_per_step = summary["train_tokens"] / summary["steps"]
    rows = ["| step | tokens | hours | validation PPL | bits per byte |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| {r['step']:,} | {r['step'] * tokens_per_step / 1e6:.1f}M | {r['elapsed_s'] / 3600:.2f} | "
             f"{r['eval_ppl']:.1f} | {r.get('eval_bits_per_byte', float('nan')):.3f} |" for r in evaluations]
    return "\n".join(rows)


def render_report(results_dir: Path = RESULTS_DIR, hub: Path | None = None, benchmarks_dir: Path = BENCHMARKS_DIR,
                  date: str | None = None) -> str:
    """The whole page: header, one section per benchmark (recorded or not), then the published models."""
    hub = hub if hub is not None else hub_dir()
    date = date or datetime.now(timezone.utc).strftime("%Y-%m-%d")
    scripts = benchmark_scripts(benchmarks_dir)
    records = {folder.name: read_results(folder) for folder in sorted(results_dir.glob("*")) if folder.is_dir()}
    records = {name: record for name, record in records.items() if record is not None}
    names = sorted(set(scripts) | set(records))
    sections = [benchmark_section(name, records.get(name), scripts.get(records[name]["name"] if name in records else name),
                                  has_plot=_has_plot(results_dir, name, records.get(name))) for name in names]
    models = published_models(hub)
    header = [
        "# Results", "",
        f"Generated by `{REPORT_COMMAND}` on {date}, from the benchmark records in `benchmarks/results/` and the models "
        "published in the local hub. Every figure was written by the command named beside it, on the machine named "
        "beside it; none is typed by hand. To refresh a figure, rerun its command, then "
        f"`{REPORT_COMMAND}`.", "",
        f"Benchmarks: {len(records)} of {len(names)} measured. Published models: {len(models)}.", "",
    ]
    published = ["## Published models", "",
                 "Each published folder holds the model card (`README.md`), `metrics.json` (the card's numbers) and "
                 "`provenance.json` (command, machine, date).", ""]
    published += [model_section(repo_id, folder) for repo_id, folder in models.items()] or [
        "None published yet — run `make demo`, or the training scripts in `training_scripts/`.", ""]
    return "\n".join(header + sections + published).rstrip() + "\n"


def _has_plot(results_dir: Path, folder: str, record: dict | None) -> bool:
    return record is not None and (results_dir / folder / f"{record['name']}.png").is_file()


def refresh_sections(page: str, names: list[str], results_dir: Path = RESULTS_DIR, benchmarks_dir: Path = BENCHMARKS_DIR,
                     date: str | None = None) -> str:
    """`page` (a report `render_report` wrote) with the sections of the benchmarks `names` rendered again from
    their records, added in order where the page has none, and the header's date and count brought up to date;
    every other section stays as it is. What a checkout that has rerun some benchmarks, but holds neither the
    other records nor the published models, can refresh without erasing their figures."""
    scripts = benchmark_scripts(benchmarks_dir)
    header, *chunks = re.split(r"(?m)^(?=## )", page)
    sections = {chunk.split("\n", 1)[0][3:]: chunk for chunk in chunks}
    models = sections.pop("Published models", "")
    for name in names:
        record = read_results(results_dir / name)
        if record is None:
            raise ConfigError(f"no benchmark record in {results_dir / name}: run the benchmark first")
        sections[name] = benchmark_section(name, record, scripts.get(record["name"]),
                                           has_plot=_has_plot(results_dir, name, record)) + "\n"
    measured = sum("Not measured yet" not in chunk for chunk in sections.values())
    header = re.sub(r"(?m)^Benchmarks: \d+ of \d+ measured\.", f"Benchmarks: {measured} of {len(sections)} measured.", header)
    header = re.sub(rf"(?<=Generated by `{re.escape(REPORT_COMMAND)}` on )\d{{4}}-\d{{2}}-\d{{2}}",
                    date or datetime.now(timezone.utc).strftime("%Y-%m-%d"), header)
    return header + "".join(sections[name] for name in sorted(sections)) + models


# --- the figures of a page, and the README's ------------------------------------------------------------


def normalised(figure: str) -> str:
    """A figure's value as plain digits: no sign, no thousands separator, no trailing zeros (`0.880` → `0.88`)."""
    return format(Decimal(figure.lstrip("+-−").replace(",", "")).normalize(), "f")


def figures(text: str) -> set[str]:
    """Every figure in `text`, `normalised`: what a README figure is matched against."""
    return {normalised(match) for match in NUMBER.findall(text)}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def results_table(readme: str) -> list[list[str]]:
    """The first Markdown table under the first heading that contains "Results": its rows of cells, header first."""
    lines = readme.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"#+ .*results", line, re.IGNORECASE)), None)
    if start is None:
        return []
    table = []
    for line in lines[start + 1:]:
        if line.lstrip().startswith("|"):
            table.append(_cells(line))
        elif table or line.startswith("#"):
            break
    return [row for row in table if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in row)]


def readme_figures(readme: str) -> list[str]:
    """The figures of the README's results table, in order: every number in a body cell outside the "target"
    columns (a target is a goal, not a measurement), link texts included."""
    table = results_table(readme)
    if not table:
        return []
    header, body = table[0], table[1:]
    keep = [i for i, name in enumerate(header) if "target" not in name.lower()]
    texts = [LINK.sub(r"\1", row[i]) for row in body for i in keep if i < len(row)]
    return list(dict.fromkeys(normalised(match) for text in texts for match in NUMBER.findall(text)))


def missing_figures(readme: str, report: str) -> list[str]:
    """README results figures that the report does not contain."""
    present = figures(report)
    return [figure for figure in readme_figures(readme) if figure not in present]


def unreported_measurements(page: str, report: str) -> list[str]:
    """Measured figures (`MEASUREMENT`) of a docs page that the report does not contain: figures copied by hand."""
    present = figures(report)
    matches = MEASUREMENT.findall(page) + LABELLED_MEASUREMENT.findall(page)
    found = (normalised(match) for match in matches)
    return [figure for figure in dict.fromkeys(found) if figure not in present]


def docs_pages(folder: Path = DOCS_DIR, report: Path = REPORT_PATH) -> list[Path]:
    """The hand-written pages of the docs site: every Markdown page but the generated report."""
    return sorted(path for path in folder.glob("*.md") if path.resolve() != report.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPORT_PATH, help="the page to write (default: docs/results.md)")
    parser.add_argument("--results_dir", type=Path, default=RESULTS_DIR, help="benchmark records (default: benchmarks/results)")
    parser.add_argument("--hub_dir", type=Path, default=None, help="local hub (default: POCKETLM_HUB_DIR or hub/)")
    parser.add_argument("--date", default=None, help="the date in the header (default: today, UTC)")
    parser.add_argument("--only", default=None,
                        help="comma-separated benchmark names: render only their sections into the existing --output, "
                             "keeping every other section and the published models as they are")
    parser.add_argument("--check", action="store_true",
                        help="write nothing: exit 1 when a figure of README.md's results table or a measured figure "
                             "of a docs page (a latency, a rate, a ratio) is not in --output")
    parser.add_argument("--readme", type=Path, default=README_PATH, help="the README --check reads (default: README.md)")
    parser.add_argument("--docs_dir", type=Path, default=DOCS_DIR,
                        help="the docs pages --check reads for measured figures (default: docs/)")
    args = parser.parse_args(argv)
    if args.check:
        if not args.output.is_file():
            parser.error(f"--output {args.output} does not exist: run `{REPORT_COMMAND}` first")
        report = args.output.read_text()
        missing = [(args.readme.name, figure) for figure in missing_figures(args.readme.read_text(), report)]
        missing += [(page.name, figure) for page in docs_pages(args.docs_dir, args.output)
                    for figure in unreported_measurements(page.read_text(), report)]
        for page, figure in missing:
            print(f"{page}: {figure} is not in {args.output}")
        print(f"{len(readme_figures(args.readme.read_text()))} README figures checked, and the docs pages' "
              f"measurements; {len(missing)} missing")
        return 1 if missing else 0
    if args.date and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.date):
        parser.error(f"--date takes YYYY-MM-DD, got {args.date!r}")
    if args.only is not None:
        if not args.output.is_file():
            parser.error(f"--only refreshes sections of --output {args.output}, which does not exist: run `{REPORT_COMMAND}`")
        names = [name for name in args.only.split(",") if name]
        page = refresh_sections(args.output.read_text(), names, args.results_dir, date=args.date)
    else:
        page = render_report(args.results_dir, args.hub_dir, date=args.date)
    atomic_write_text(args.output, page)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    run(main)
