"""The suite as a user meets it: cold start to the first answer, then each tab's example — over loopback.

    python benchmarks/suite.py        # writes benchmarks/results/suite/suite.{json,md,png}

1. cold start: launch `spaces/suite/app.py` (a fresh process, the published models) → first 200 on `/qa` with
   the QA example, over `--starts` starts; the last one serves the phases below;
2. tabs: once the background loading is over (the PyTorch side of the benchmark tab, the RAG agent), each
   tab's example through its Gradio endpoint (`gradio_client`, as the page calls it) `--repeats` times;
3. browser: headless Chromium opens the page, clicks each tab's button and waits for the answer on screen.
Targets: cold start ≤ 15 s; each tab's example ≤ 2 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from pocketlm import MINILM_SQUAD, MINILM_SQUAD_ONNX, RAG_INDEX, TINY_LM_ONNX, TINY_LM_RAG_LORA
from pocketlm.benchmarking import latency_summary, markdown_table, write_results
from pocketlm.cli import run
from pocketlm.settings import REPO_ROOT
from pocketlm.spaces import SPACE_TITLES

COLD_START_TARGET_S = 15.0
TAB_TARGET_S = 2.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default=TINY_LM_ONNX)
    parser.add_argument("--qa", default=MINILM_SQUAD_ONNX)
    parser.add_argument("--qa-pytorch", default=MINILM_SQUAD)
    parser.add_argument("--rag-index", default=RAG_INDEX, help="'none' leaves the RAG tab out")
    parser.add_argument("--rag-generator", default=TINY_LM_RAG_LORA)
    parser.add_argument("--starts", type=int, default=3, help="cold starts (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each tab's example (default: %(default)s)")
    parser.add_argument("--no-browser", action="store_true", help="skip the headless-Chromium phase")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "suite"))
    args = parser.parse_args(argv)
    if args.starts < 1 or args.repeats < 1:
        parser.error("--starts and --repeats must be at least 1")
    return args


def tab_examples(rag: bool) -> dict[str, tuple[str, tuple]]:
    """Each tab's first example, as (Gradio endpoint, arguments)."""
    from pocketlm.spaces.onnx_benchmark import DEFAULT_RUNS
    from pocketlm.spaces.examples import CHAT_EXAMPLES, GENERATION_EXAMPLES, QA_EXAMPLES

    examples = {
        "text_generation": ("/generate_text", tuple(GENERATION_EXAMPLES[0])),
        "question_answering": ("/answer_question", tuple(QA_EXAMPLES[0])),
        "onnx_benchmark": ("/compare_runtimes", (*QA_EXAMPLES[0], DEFAULT_RUNS)),
    }
    if rag:
        examples["rag_chat"] = ("/chat", (CHAT_EXAMPLES[0], []))
    return examples


def wait_for_background_loading(log_path: Path, timeout_s: float = 300) -> float:
    """Seconds until the suite logs that every tab has loaded."""
    started = time.perf_counter()
    while "all tabs loaded" not in log_path.read_text():
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"the suite did not finish loading: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    return time.perf_counter() - started


def time_tab_examples(base_url: str, examples: dict[str, tuple[str, tuple]], repeats: int) -> list[dict]:
    from gradio_client import Client

    client = Client(base_url + "/", verbose=False)
    tabs = []
    for tab, (endpoint, example) in examples.items():
        seconds = []
        for _ in range(repeats):
            began = time.perf_counter()
            client.predict(*example, api_name=endpoint)
            seconds.append(time.perf_counter() - began)
        stats = latency_summary(1000 * s for s in seconds)
        tabs.append({"tab": SPACE_TITLES[tab], "space": tab, "endpoint": endpoint, "p50_s": stats["p50_ms"] / 1000,
                     "max_s": stats["max_ms"] / 1000, "runs": len(seconds)})
        print(f"{SPACE_TITLES[tab]}: p50 {tabs[-1]['p50_s']:.2f} s, max {tabs[-1]['max_s']:.2f} s", flush=True)
    return tabs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from pocketlm.spaces.cli import fetch_models, parse_args as suite_args
    from pocketlm.spaces.launch import running_suite
    from pocketlm.spaces.examples import QA_EXAMPLES

    suite_flags = ["--lm", args.lm, "--qa", args.qa, "--qa-pytorch", args.qa_pytorch,
                   "--rag-index", args.rag_index, "--rag-generator", args.rag_generator]
    fetch_models(suite_args("suite", suite_flags), suite=True)
    rag = args.rag_index != "none"
    qa_example = json.dumps({"question": QA_EXAMPLES[0][0], "context": QA_EXAMPLES[0][1]}).encode()

    def launch():
        return running_suite(suite_flags, ready_path="/qa", ready_body=qa_example)

    def record(process) -> None:
        cold_starts.append(process.ready_s)
        print(f"cold start {len(cold_starts)}: first /qa answer {process.ready_s:.2f} s after launch", flush=True)

    cold_starts: list[float] = []
    for _ in range(args.starts - 1):
        with launch() as process:
            record(process)
    with launch() as process:  # the last start also serves the phases below
        record(process)
        loaded_after = wait_for_background_loading(process.log_path) + process.ready_s
        print(f"every tab loaded {loaded_after:.1f} s after launch", flush=True)
        tabs = time_tab_examples(process.base_url, tab_examples(rag), args.repeats)
        if not args.no_browser:
            from pocketlm.spaces.browser import visit_suite

            chat = [tab_examples(rag)["rag_chat"][1][0]] if rag else []
            visit = visit_suite(process.base_url, Path(args.output_dir) / "screenshots", [t["space"] for t in tabs], chat)
            for row in tabs:
                row["browser_s"] = visit.tabs[row["space"]].seconds
            if visit.outside_requests:
                print(f"warning: the page requested {visit.outside_requests}", flush=True)

    cold = {"runs_s": [round(s, 3) for s in cold_starts], "median_s": statistics.median(cold_starts),
            "max_s": max(cold_starts), "target_s": COLD_START_TARGET_S, "every_tab_loaded_s": loaded_after}
    for row in tabs:
        row["target_met"] = row["p50_s"] <= TAB_TARGET_S
    results = {"cold_start": cold, "tabs": tabs, "tab_target_s": TAB_TARGET_S,
               "settings": {"starts": args.starts, "repeats": args.repeats, "flags": suite_flags}}
    columns = [("tab", "tab"), ("endpoint", "Gradio endpoint"), ("p50_s", "p50 s"), ("max_s", "max s")]
    if not args.no_browser:
        columns.append(("browser_s", "browser: click → answer, s"))
    markdown = (
        f"# Spaces suite\n\nCold start (launch → first `/qa` answer), {args.starts} starts: median "
        f"{cold['median_s']:.2f} s, max {cold['max_s']:.2f} s (target ≤ {COLD_START_TARGET_S:g} s); every tab "
        f"loaded (incl. PyTorch{' and the RAG agent' if rag else ''}, in the background) after {loaded_after:.1f} s.\n\n"
        f"Each tab's example, {args.repeats} runs (target ≤ {TAB_TARGET_S:g} s):\n\n{markdown_table(tabs, columns)}"
    )

    def plot(figure) -> None:
        left, right = figure.subplots(1, 2)
        left.bar(range(len(cold_starts)), cold_starts)
        left.axhline(COLD_START_TARGET_S, color="red", linestyle="--", label="target")
        left.set(title="cold start → first /qa answer", xlabel="start", ylabel="s")
        left.legend()
        names = [row["tab"] for row in tabs]
        right.bar([i - 0.2 for i in range(len(tabs))], [row["p50_s"] for row in tabs], width=0.4, label="Gradio endpoint p50")
        if not args.no_browser:
            right.bar([i + 0.2 for i in range(len(tabs))], [row["browser_s"] for row in tabs], width=0.4,
                      label="browser click → answer")
        right.axhline(TAB_TARGET_S, color="red", linestyle="--", label="target")
        right.set_xticks(range(len(tabs)), names)
        right.set(title="each tab's example", ylabel="s")
        right.legend()

    figures = {
        "cold start → first /qa answer": f"{cold['median_s']:.2f} s median, {cold['max_s']:.2f} s max of {args.starts} "
                                         f"(target ≤ {COLD_START_TARGET_S:g} s)",
        "every tab loaded (in the background)": f"{loaded_after:.1f} s",
        **{f"{row['tab']}: its example": f"p50 {row['p50_s']:.2f} s, max {row['max_s']:.2f} s"
                                         + (f", browser click → answer {row['browser_s']:.2f} s" if "browser_s" in row else "")
           for row in tabs},
    }
    write_results("suite", results, markdown, figures=figures, plot=plot, output_dir=args.output_dir)
    print(markdown)
    return 0


if __name__ == "__main__":
    run(main)
