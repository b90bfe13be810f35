"""Benchmark corpus preparation as the corpus grows: peak memory and tokens/s at 1×, 10× and 30× the default corpus.

    python benchmarks/corpus_prep.py                                   # scales 1,10,30 × num_proc 1,2
    python benchmarks/corpus_prep.py --scales 0.02,0.05 --num_procs 1 --output_dir /tmp/corpus-prep   # a quick look

1× is the default pretraining corpus in words (the mirror's WikiText-2 articles + SQuAD train's paragraphs,
about 636k words); a larger scale adds the mirror's Wikipedia articles (`--extra_corpus wikipedia-en-2014`)
up to that many words, a smaller one reads only the first documents (`--max_words`). Each (scale, num_proc)
runs `training_scripts/prepare_corpus.py` — exactly what a user runs — in a fresh process, and records:

* peak RSS of the preparing process (`os.wait4`'s `ru_maxrss`: the process and the map workers it waited
  for, the largest of them);
* the peak, sampled every 0.1 s, of the summed proportional set size (PSS) of the process tree, and of its
  anonymous part (the memory the processes hold, as opposed to the pages of the memory-mapped Arrow files
  and of the libraries, which the kernel can drop and share);
* tokens/s = tokens written to chunks / seconds of the preparation (imports excluded), and the wall time.

All runs chunk with one tokenizer (`--tokenizer`, default: trained once, untimed, by preparing the smallest
scale): BPE training keeps a count of every distinct word, which grows with the corpus's vocabulary, so it
would measure the tokenizer trainer, not the data path; `--train_tokenizer` measures it too. Writes
corpus_prep.{json,md,png} under benchmarks/results/corpus_prep/ (or `--output_dir`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.data.corpus import default_source
from pocketlm.settings import REPO_ROOT

PREPARE = REPO_ROOT / "training_scripts" / "prepare_corpus.py"
MB = 2**20


def default_corpus_words() -> int:
    """Words of the default corpus as `--max_words` counts them (whitespace-separated, raw text)."""
    return sum(row["words"] for row in default_source().raw_documents())


def proportional_memory(pid: int) -> tuple[int, int]:
    """(PSS, anonymous PSS) of a process in bytes, from /proc/<pid>/smaps_rollup (Linux).

    Proportional: a page shared by n processes counts 1/n in each, so the sum over a process tree is the memory
    the tree really uses — summing RSS would count every page a forked map worker shares with its parent twice.
    """
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024  # kB
    return fields["Pss"], fields.get("Pss_Anon", 0)


class TreeMemory:
    """Sample the summed PSS (and its anonymous part) of a process and all its descendants until it exits.

    psutil (a dependency of accelerate) lists the descendants: the map workers `datasets` forks."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        import psutil

        self.process, self.interval_s = psutil.Process(pid), interval_s
        self.peak_pss = self.peak_anon = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while True:
            try:
                pids = [self.process.pid, *(child.pid for child in self.process.children(recursive=True))]
            except psutil.Error:
                return
            pss = anon = 0
            for pid in pids:
                try:
                    pid_pss, pid_anon = proportional_memory(pid)
                except (OSError, KeyError, ValueError):  # exited meanwhile
                    continue
                pss, anon = pss + pid_pss, anon + pid_anon
            self.peak_pss, self.peak_anon = max(self.peak_pss, pss), max(self.peak_anon, anon)
            time.sleep(self.interval_s)

    def join(self) -> None:
        self._thread.join(timeout=5)


def prepare_once(max_words: int, extra: bool, num_proc: int, tokenizer: str | None, work_dir: Path,
                 streaming: bool = False) -> dict:
    """Run the prepare script once in a fresh process; its numbers and its peak memory."""
    output_dir = work_dir / f"prepared-{max_words}-{num_proc}{'-streaming' if streaming else ''}"
    command = [sys.executable, str(PREPARE), "--max_words", str(max_words), "--num_proc", str(num_proc),
               "--output_dir", str(output_dir), "--stride_ratios", "1", "--streaming", str(streaming)]
    if extra:
        command += ["--extra_corpus", "wikipedia-en-2014"]
    if tokenizer:
        command += ["--tokenizer", tokenizer]
    started = time.perf_counter()
    log_path = work_dir / "prepare.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        memory = TreeMemory(process.pid)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.perf_counter() - started
    memory.join()
    if process.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-15:])
        raise SystemExit(f"error: {' '.join(command)} failed (exit {process.returncode}); its last output:\n{tail}")
    stats = json.loads((output_dir / "stats.json").read_text())
    tokens = stats["train"]["tokens"] + stats["validation"]["tokens"]
    row = {
        "words": stats["words"], "tokens": tokens, "mode": label(num_proc, streaming), "num_proc": num_proc, "streaming": streaming,
        "chunks": stats["train"]["chunks"] + stats["validation"]["chunks"],
        "seconds": stats["seconds"], "wall_s": round(wall_s, 2), "tokens_per_s": round(tokens / stats["seconds"]),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss * 1024 / MB, 1),  # Linux reports kilobytes
        "tree_peak_pss_mb": round(memory.peak_pss / MB, 1), "tree_peak_anon_mb": round(memory.peak_anon / MB, 1),
        "output_mb": round(sum(p.stat().st_size for p in output_dir.glob("*.jsonl")) / MB, 1),
    }
    if tokenizer is None:
        kept = work_dir / "tokenizer"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(output_dir / "tokenizer", kept)
        row["tokenizer"] = str(kept)
    shutil.rmtree(output_dir)
    return row


def label(num_proc: int, streaming: bool) -> str:
    return "streaming" if streaming else f"num_proc {num_proc}"


def modes(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["mode"] for row in rows))


def plot(figure, rows: list[dict]) -> None:
    memory_axes, speed_axes = figure.subplots(1, 2)
    for mode in modes(rows):
        mine = [row for row in rows if row["mode"] == mode]
        words = [row["words"] / 1e6 for row in mine]
        line = memory_axes.plot(words, [row["peak_rss_mb"] for row in mine], "o-", label=f"peak RSS, {mode}")[0]
        memory_axes.plot(words, [row["tree_peak_anon_mb"] for row in mine], "s--", color=line.get_color(),
                         label=f"all processes' anonymous PSS, {mode}")
        speed_axes.plot(words, [row["tokens_per_s"] / 1e3 for row in mine], "o-", label=mode)
    for axes, ylabel, title in ((memory_axes, "MB", "Peak memory of preparation"),
                                (speed_axes, "thousand tokens / s", "Preparation throughput")):
        axes.set_xscale("log")
        axes.set_xlabel("corpus size (million words)")
        axes.set_ylabel(ylabel)
        axes.set_title(title)
        axes.set_ylim(bottom=0)
        axes.legend(fontsize=8)


def summarise(rows: list[dict], words_1x: int) -> tuple[dict, str]:
    """Headline figures (memory growth from the smallest to the largest scale; num_proc speed-up) and tables."""
    figures = {}
    scales = sorted({row["scale"] for row in rows})
    for mode in modes(rows):
        first, last = (next(r for r in rows if r["scale"] == s and r["mode"] == mode) for s in (scales[0], scales[-1]))
        figures[f"peak RSS {first['scale']:g}× → {last['scale']:g}× corpus ({mode})"] = (
            f"{first['peak_rss_mb']:,.0f} → {last['peak_rss_mb']:,.0f} MB")
        figures[f"all processes' anonymous PSS {first['scale']:g}× → {last['scale']:g}× ({mode})"] = (
            f"{first['tree_peak_anon_mb']:,.0f} → {last['tree_peak_anon_mb']:,.0f} MB")
    for scale in scales:
        by_mode = {r["mode"]: r for r in rows if r["scale"] == scale}
        if "num_proc 1" in by_mode and "num_proc 2" in by_mode:
            speedup = by_mode["num_proc 2"]["tokens_per_s"] / by_mode["num_proc 1"]["tokens_per_s"]
            figures[f"tokens/s num_proc 2 ÷ 1 at {scale:g}×"] = f"{speedup:.2f}×"
    columns = [("scale", "scale"), ("words", "words"), ("tokens", "tokens"), ("mode", "mode"),
               ("seconds", "prepare s"), ("tokens_per_s", "tokens/s"), ("cpu_s", "CPU s"), ("peak_rss_mb", "peak RSS MB"),
               ("tree_peak_pss_mb", "tree PSS MB"), ("tree_peak_anon_mb", "tree anonymous PSS MB"), ("output_mb", "chunks MB")]
    markdown = (f"# Corpus preparation as the corpus grows\n\n1× = the default corpus, {words_1x:,} words; larger scales add "
                "Wikipedia articles. Peak RSS: the preparing process (the largest of it and its map workers). Tree PSS: "
                "their proportional set sizes summed (shared pages split between sharers), peak of samples every 0.1 s; "
                "anonymous PSS: without file-backed pages (memory-mapped Arrow files, libraries), i.e. the memory the "
                "processes hold.\n\n"
                + markdown_table(rows, columns, formats={"words": ",", "tokens": ",", "tokens_per_s": ",", "scale": "g"}))
    return figures, markdown


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,10,30", help="corpus sizes as multiples of the default corpus's words")
    parser.add_argument("--num_procs", default="1,2", help="map processes to compare")
    parser.add_argument("--tokenizer", default=None, help="tokenizer to chunk with (default: trained once on the smallest scale)")
    parser.add_argument("--train_tokenizer", action="store_true", help="train the tokenizer inside every timed run")
    parser.add_argument("--streaming", action="store_true", help="also run each scale with --streaming (no Arrow cache)")
    parser.add_argument("--output_dir", default=None, help="default: benchmarks/results/corpus_prep")
    args = parser.parse_args(argv)
    try:
        scales = sorted(float(s) for s in args.scales.split(",") if s.strip())
        num_procs = [int(n) for n in args.num_procs.split(",") if n.strip()]
    except ValueError:
        parser.error("--scales must be comma-separated numbers and --num_procs comma-separated integers")
    if not scales or min(scales) <= 0 or not num_procs or min(num_procs) < 1:
        parser.error("--scales must be positive and --num_procs at least 1")
    words_1x = default_corpus_words()
    rows = []
    with tempfile.TemporaryDirectory(prefix="corpus-prep-") as work:
        work_dir = Path(work)
        tokenizer = args.tokenizer
        if tokenizer is None and not args.train_tokenizer:
            print(f"training the tokenizer once on the {scales[0]:g}× corpus (untimed)", flush=True)
            tokenizer = prepare_once(round(scales[0] * words_1x), scales[0] > 1, 1, None, work_dir)["tokenizer"]
        configurations = [(num_proc, False) for num_proc in num_procs] + ([(1, True)] if args.streaming else [])
        for i, scale in enumerate(scales):
            # Alternate which configuration goes first: on a shared machine, load drifts between runs.
            for num_proc, streaming in configurations if i % 2 == 0 else configurations[::-1]:
                row = {"scale": scale, **prepare_once(round(scale * words_1x), scale > 1, num_proc,
                                                      None if args.train_tokenizer else tokenizer, work_dir, streaming)}
                row.pop("tokenizer", None)
                rows.append(row)
                print(f"{scale:g}× ({row['words']:,} words, {row['tokens']:,} tokens), {row['mode']}: "
                      f"{row['tokens_per_s']:,} tokens/s, peak RSS {row['peak_rss_mb']:,.0f} MB, "
                      f"all processes {row['tree_peak_pss_mb']:,.0f} MB PSS ({row['tree_peak_anon_mb']:,.0f} MB anonymous)", flush=True)
    rows.sort(key=lambda r: (r["scale"], r["streaming"], r["num_proc"]))
    figures, markdown = summarise(rows, words_1x)
    results = {"default_corpus_words": words_1x, "tokenizer_trained_per_run": args.train_tokenizer, "runs": rows}
    return write_results("corpus_prep", results, markdown, figures=figures, plot=lambda figure: plot(figure, rows),
                         output_dir=args.output_dir)


if __name__ == "__main__":
    main()
