"""The REST server as a client sees it: start-up, latency, 8 concurrent clients, overload — over loopback.

    python benchmarks/serving.py

It starts `python -m pocketlm.serving` as its own process (`pocketlm.serving.launch`), as a user would:
1. start-up: launch → first 200 on /health, over `--starts` cold starts (the last one serves the phases below);
2. latency: `--requests` sequential requests per endpoint after `--warmup`: /generate with a 50-token
   WikiText-2 prompt and exactly 32 new tokens (`ignore_eos`), /qa on SQuAD validation questions;
   plus time to first token of /generate/stream;
3. load: `--clients` closed-loop clients alternating /generate and /qa for `--duration` s; every non-200 is an error;
4. overload: then `--overload_clients` closed-loop clients for `--overload_duration` s against the default
   limits: how fast the refused requests (503) come back, and /health latency meanwhile.
Targets: start-up < 1 s (the median of the cold starts), p95 < 200 ms on both endpoints, 0 errors under load.
Writes benchmarks/results/serving/serving.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from pocketlm import MINILM_SQUAD_ONNX, TINY_LM_ONNX
from pocketlm.benchmarking import latency_summary, markdown_table, write_results
from pocketlm.cli import run
from pocketlm.data import read_squad_json, squad_json_path
from pocketlm.errors import PocketLMError
from pocketlm.hub import resolve
from pocketlm.inference.batching import corpus_texts
from pocketlm.inference.onnx_lm import LM_PRECISIONS
from pocketlm.serving.launch import running_server
from pocketlm.settings import REPO_ROOT

PROMPT_TOKENS = 50
NEW_TOKENS = 32


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default=TINY_LM_ONNX)
    parser.add_argument("--qa", default=MINILM_SQUAD_ONNX)
    parser.add_argument("--lm-precision", default="fp32", choices=LM_PRECISIONS)
    parser.add_argument("--qa-precision", default="int8", choices=["fp32", "int8"])
    parser.add_argument("--threads", type=int, default=None, help="server's ONNX Runtime threads (default: its own)")
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--overload_clients", type=int, default=64)
    parser.add_argument("--overload_duration", type=float, default=5.0)
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "serving"))
    args = parser.parse_args(argv)
    if min(args.starts, args.requests, args.clients, args.overload_clients) < 1 or args.duration <= 0:
        parser.error("--starts, --requests, --clients, --overload_clients and --duration must be positive")
    return args


def fifty_token_prompts(lm_folder: str, count: int = 20) -> list[str]:
    """Article openings that the LM's own tokenizer encodes to exactly 50 tokens."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(lm_folder) / "tokenizer.json"))
    prompts = []
    for text in corpus_texts(60):
        candidate = tokenizer.decode(tokenizer.encode(text).ids[:PROMPT_TOKENS])
        if len(tokenizer.encode(candidate).ids) == PROMPT_TOKENS:
            prompts.append(candidate)
        if len(prompts) == count:
            return prompts
    raise PocketLMError(f"found only {len(prompts)} articles that re-encode to {PROMPT_TOKENS} tokens")


def squad_questions(count: int = 50) -> list[dict]:
    path = squad_json_path("validation")
    if path is None:
        raise PocketLMError("the SQuAD validation file is not in the data mirror")
    records = read_squad_json(path)
    step = max(1, len(records) // count)
    return [{"question": r["question"], "context": r["context"]} for r in records[::step][:count]]


class Workload:
    """The two request kinds of the benchmark, cycling through real prompts and questions."""

    def __init__(self, prompts: list[str], questions: list[dict]):
        self.prompts, self.questions = prompts, questions

    def generate_body(self, i: int) -> dict:
        return {"prompt": self.prompts[i % len(self.prompts)], "max_new_tokens": NEW_TOKENS, "ignore_eos": True}

    def call(self, http: httpx.Client, kind: str, i: int) -> tuple[int, float]:
        body = self.generate_body(i) if kind == "generate" else self.questions[i % len(self.questions)]
        started = time.perf_counter()
        response = http.post(f"/{kind}", json=body)
        elapsed = time.perf_counter() - started
        if kind == "generate" and response.status_code == 200:
            data = response.json()
            if data["prompt_tokens"] < PROMPT_TOKENS or data["generated_tokens"] != NEW_TOKENS:  # (+ BOS)
                raise AssertionError(f"/generate saw {data['prompt_tokens']} prompt / {data['generated_tokens']} new tokens")
        return response.status_code, elapsed


def sequential_latency(base_url: str, workload: Workload, warmup: int, requests: int) -> dict:
    timings: dict[str, list[float]] = {}
    with httpx.Client(base_url=base_url, timeout=60) as http:
        for kind in ("generate", "qa"):
            for i in range(warmup):
                workload.call(http, kind, i)
            timings[kind] = []
            for i in range(requests):
                status, elapsed = workload.call(http, kind, i)
                if status != 200:
                    raise AssertionError(f"/{kind} answered {status} with no load")
                timings[kind].append(elapsed)
        first_token, whole = [], []
        for i in range(min(requests, 20)):
            started = time.perf_counter()
            with http.stream("POST", "/generate/stream", json=workload.generate_body(i)) as response:
                lines = response.iter_lines()
                next(line for line in lines if line.startswith("data: "))
                first_token.append(time.perf_counter() - started)
                for _ in lines:
                    pass
            whole.append(time.perf_counter() - started)
    return {"timings": timings, "stream_first_token": first_token, "stream_whole": whole}


def closed_loop(base_url: str, workload: Workload, clients: int, duration: float, kinds: tuple[str, ...]) -> list[dict]:
    """`clients` threads each sending requests back to back for `duration` s; one record per request."""
    records: list[dict] = []
    lock = threading.Lock()
    deadline = [0.0]
    # every client connected before the clock starts, so they all fire at once
    ready = threading.Barrier(clients, action=lambda: deadline.__setitem__(0, time.perf_counter() + duration))

    def client(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            ready.wait()
            i = index
            while time.perf_counter() < deadline[0]:
                kind = kinds[i % len(kinds)]
                try:
                    status, elapsed = workload.call(http, kind, i)
                except (httpx.HTTPError, AssertionError) as err:
                    status, elapsed = f"{type(err).__name__}: {err}", 0.0
                with lock:
                    records.append({"kind": kind, "status": status, "seconds": elapsed})
                i += clients

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client, i) for i in range(clients)]:
            future.result()
    return records


def health_probe(base_url: str, stop: threading.Event, timings: list[float]) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as http:
        while not stop.is_set():
            started = time.perf_counter()
            http.get("/health")
            timings.append(time.perf_counter() - started)
            time.sleep(0.05)


def figures(results: dict) -> dict[str, str]:
    """The report card's lines: start-up, sequential p50/p95 per endpoint, load and overload."""
    startup, seq, load, overload = results["startup_s"], results["sequential_ms"], results["load"], results["overload"]

    def p50_p95(stats: dict) -> str:
        return f"p50 {stats['p50_ms']:.0f} ms, p95 {stats['p95_ms']:.0f} ms" if stats else "none"

    return {
        "start-up: launch → first 200 on /health": f"{startup['median']:.2f} s median, {startup['max']:.2f} s max of {len(startup['runs'])}",
        f"/generate, {PROMPT_TOKENS}-token prompt + {NEW_TOKENS} new tokens": p50_p95(seq["generate"]),
        "/qa, SQuAD validation question + context": p50_p95(seq["qa"]),
        "/generate/stream: first token": p50_p95(results["stream_ms"]["first_token"]),
        f"{load['clients']} clients for {load['duration_s']:g} s": (
            f"{load['requests']} requests ({load['requests_per_s']:.1f}/s), {load['errors']} errors; "
            f"/generate {p50_p95(load['latency_ms']['generate'])}; /qa {p50_p95(load['latency_ms']['qa'])}"),
        f"overload: {overload['clients']} clients for {overload['duration_s']:g} s": (
            f"{overload['served']} served, {overload['refused_503']} refused with 503 "
            f"({p50_p95(overload['refused_ms'])}), {overload['other']} other; /health meanwhile {p50_p95(overload['health_ms'])}"),
    }


def stats(seconds: list[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max in ms and the count `n` of durations measured in seconds."""
    return latency_summary(1000 * s for s in seconds)


def main(argv=None) -> int:
    args = parse_args(argv)
    server_args = ["--lm", args.lm, "--qa", args.qa, "--lm-precision", args.lm_precision,
                   "--qa-precision", args.qa_precision, "--log-level", "warning"]
    if args.threads:
        server_args += ["--threads", str(args.threads)]
    workload = Workload(fifty_token_prompts(resolve(args.lm)), squad_questions())
    # A user's server caches its bytecode from its first start on: allow it (some sandboxes and CI images set
    # PYTHONDONTWRITEBYTECODE=1, which would make every start compile FastAPI, pydantic... from source), and
    # leave that first start out of the measurement.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    with running_server(server_args):
        pass

    starts = []
    for _ in range(args.starts - 1):  # extra cold starts; the measuring server below is the last one
        with running_server(server_args) as server:
            starts.append(server.ready_s)
    with running_server(server_args) as server:
        starts.append(server.ready_s)
        print(f"start-up: {[round(s, 3) for s in starts]} s", flush=True)
        latency = sequential_latency(server.base_url, workload, args.warmup, args.requests)
        print({k: stats(v)["p95_ms"] for k, v in latency["timings"].items()}, "ms p95", flush=True)
        load = closed_loop(server.base_url, workload, args.clients, args.duration, ("generate", "qa"))
        health = httpx.get(f"{server.base_url}/health").json()
        errors = [r for r in load if r["status"] != 200]
        print(f"load: {len(load)} requests, {len(errors)} errors", flush=True)
        stop, health_timings = threading.Event(), []
        probe = threading.Thread(target=health_probe, args=(server.base_url, stop, health_timings))
        probe.start()
        overload = closed_loop(server.base_url, workload, args.overload_clients, args.overload_duration, ("generate",))
        stop.set()
        probe.join()
    refused = [r["seconds"] for r in overload if r["status"] == 503]
    served = [r["seconds"] for r in overload if r["status"] == 200]
    other = [r for r in overload if r["status"] not in (200, 503)]

    seq = {kind: stats(t) for kind, t in latency["timings"].items()}
    under_load = {kind: stats([r["seconds"] for r in load if r["kind"] == kind and r["status"] == 200]) for kind in ("generate", "qa")}
    results = {
        "lm": f"{args.lm} ({args.lm_precision})", "qa": f"{args.qa} ({args.qa_precision})", "server": health["models"],
        "startup_s": {"runs": starts, "median": statistics.median(starts), "max": max(starts)},
        "sequential_ms": seq,
        "stream_ms": {"first_token": stats(latency["stream_first_token"]), "whole": stats(latency["stream_whole"])},
        "load": {"clients": args.clients, "duration_s": args.duration, "requests": len(load), "errors": len(errors),
                 "error_examples": [str(e["status"]) for e in errors[:5]], "requests_per_s": len(load) / args.duration,
                 "latency_ms": under_load},
        "overload": {"clients": args.overload_clients, "duration_s": args.overload_duration, "served": len(served),
                     "refused_503": len(refused), "other": len(other), "refused_ms": stats(refused),
                     "served_ms": stats(served), "health_ms": stats(health_timings)},
        "targets": {"startup_median_below_1s": statistics.median(starts) < 1.0, "generate_p95_below_200ms": seq["generate"]["p95_ms"] < 200,
                    "qa_p95_below_200ms": seq["qa"]["p95_ms"] < 200, "zero_errors_under_load": not errors,
                    "overload_refused_fast": bool(refused) and stats(refused)["p95_ms"] < 200},
    }
    rows = [
        {"what": "start-up: launch → first 200 on /health", **stats(starts), "target": "< 1000 (median)"},
        {"what": f"/generate, {PROMPT_TOKENS}-token prompt + {NEW_TOKENS} new tokens", **seq["generate"], "target": "p95 < 200"},
        {"what": "/qa, SQuAD validation question + context", **seq["qa"], "target": "p95 < 200"},
        {"what": "/generate/stream: first token", **results["stream_ms"]["first_token"]},
        {"what": f"/generate under {args.clients} clients", **under_load["generate"]},
        {"what": f"/qa under {args.clients} clients", **under_load["qa"]},
        {"what": f"overload ({args.overload_clients} clients): refused (503)", **results["overload"]["refused_ms"]},
        {"what": f"overload ({args.overload_clients} clients): served (200)", **results["overload"]["served_ms"]},
        {"what": "overload: /health meanwhile", **results["overload"]["health_ms"]},
    ]
    table = markdown_table(rows, [("what", "measurement (ms)"), ("p50_ms", "p50"), ("p95_ms", "p95"), ("max_ms", "max"), ("n", "n"), ("target", "target")])
    markdown = (
        f"### REST server over loopback: LM {results['lm']}, QA {results['qa']}\n\n{table}\n"
        f"Under load: {args.clients} clients for {args.duration:g} s sent {len(load)} requests "
        f"({len(load) / args.duration:.1f}/s), **{len(errors)} errors**. Overload: {args.overload_clients} clients for "
        f"{args.overload_duration:g} s: {len(served)} served, {len(refused)} refused with 503, {len(other)} other.\n"
    )

    def plot(figure):
        left, middle, right = figure.subplots(1, 3)
        for label, values in (("/generate", latency["timings"]["generate"]), ("/qa", latency["timings"]["qa"]),
                              (f"/generate, {args.clients} clients", [r["seconds"] for r in load if r["kind"] == "generate" and r["status"] == 200]),
                              (f"/qa, {args.clients} clients", [r["seconds"] for r in load if r["kind"] == "qa" and r["status"] == 200])):
            ordered = sorted(1000 * v for v in values)
            left.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
        left.axvline(200, color="red", linestyle=":", label="200 ms target")
        left.set(xlabel="latency (ms)", ylabel="share of requests", title="latency CDF", xscale="log")
        left.legend(fontsize=7)
        middle.hist([[1000 * s for s in served], [1000 * s for s in refused]], bins=30, label=["served (200)", "refused (503)"])
        middle.set(xlabel="latency (ms)", ylabel="requests", title=f"overload: {args.overload_clients} clients")
        middle.legend(fontsize=7)
        right.bar(range(len(starts)), [1000 * s for s in starts])
        right.axhline(1000, color="red", linestyle=":")
        right.set(xlabel="cold start", ylabel="ms to first 200 on /health", title="start-up")

    write_results("serving", results, markdown, figures=figures(results), plot=plot, output_dir=args.output_dir)
    print(markdown)
    return 0


if __name__ == "__main__":
    run(main)
