"""Generation under load: the serial scheduler against continuous batching, 1–16 closed-loop clients, over loopback.

    python benchmarks/serving_load.py

It starts two `python -m pocketlm.serving` processes on 127.0.0.1, one per scheduler (`--scheduler serial`:
one request at a time; `--scheduler continuous`: one decode batch that requests join and leave at every step),
both with the LM only. After a warm-up, for each client count in `--clients` (interleaved: the two servers take
turns, the first one alternating) `n` clients each send `--requests_per_client` requests back to back,
alternating `/generate` and `/generate/stream` (a 50-token WikiText-2 prompt and exactly 32 new tokens,
`ignore_eos`), stopping early at `--max_seconds` per cell. Per cell: total tokens/s (generated tokens of all
clients over the cell's wall time), `/generate` latency p50/p95/p99 and time to first token of the stream.
Targets at 8 clients: continuous ≥ 3× the serial tokens/s, `/generate` p95 < 200 ms.
Writes benchmarks/results/serving_load/serving_load.{json,md,png}.
"""

from __future__ import annotations

import argparse
import runpy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx

from pocketlm import TINY_LM_ONNX
from pocketlm.benchmarking import latency_summary, markdown_table, write_results
from pocketlm.cli import run
from pocketlm.hub import resolve
from pocketlm.serving.launch import running_server
from pocketlm.settings import REPO_ROOT

# the serving benchmark's workload, so the two benchmarks' /generate figures measure the same request
_serving = runpy.run_path(str(Path(__file__).with_name("serving.py")))
fifty_token_prompts, PROMPT_TOKENS, NEW_TOKENS = _serving["fifty_token_prompts"], _serving["PROMPT_TOKENS"], _serving["NEW_TOKENS"]
SCHEDULERS = ("serial", "continuous")
TARGET_CLIENTS, TARGET_SPEEDUP, TARGET_P95_MS = 8, 3.0, 200.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default=TINY_LM_ONNX, help="Hub id or folder of the LM's ONNX export (served as fp32)")
    parser.add_argument("--threads", type=int, default=None, help="servers' ONNX Runtime threads (default: their own)")
    parser.add_argument("--max_batch", type=int, default=None, help="continuous server's --max-batch (default: its own)")
    parser.add_argument("--clients", default="1,2,4,8,16", help="comma-separated client counts")
    parser.add_argument("--requests_per_client", type=int, default=8)
    parser.add_argument("--max_seconds", type=float, default=60.0, help="a cell stops sending after this long")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up requests per client at the largest count")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "serving_load"))
    args = parser.parse_args(argv)
    try:
        args.clients = sorted({int(c) for c in args.clients.split(",")})
    except ValueError:
        parser.error(f"--clients must be comma-separated whole numbers, got {args.clients!r}")
    if min(args.clients) < 1 or args.requests_per_client < 1 or args.max_seconds <= 0 or args.warmup < 0:
        parser.error("--clients, --requests_per_client and --max_seconds must be positive, --warmup >= 0")
    return args


def one_request(http: httpx.Client, route: str, prompt: str) -> dict:
    """One call; its status, latency, time to first token (stream) and generated tokens."""
    body = {"prompt": prompt, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}
    started = time.perf_counter()
    if route == "/generate":
        response = http.post(route, json=body)
        seconds = time.perf_counter() - started
        tokens = response.json()["generated_tokens"] if response.status_code == 200 else 0
        return {"route": route, "status": response.status_code, "seconds": seconds, "tokens": tokens}
    first_token, tokens, event = None, 0, "message"
    with http.stream("POST", route, json=body) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event == "message":
                first_token = first_token or time.perf_counter() - started
                tokens += 1
        status = response.status_code if response.status_code != 200 or event == "end" else f"stream ended with {event!r}"
    return {"route": route, "status": status, "seconds": time.perf_counter() - started, "first_token_s": first_token,
            "tokens": tokens}


def closed_loop(base_url: str, prompts: list[str], clients: int, requests_per_client: int, max_seconds: float) -> dict:
    """`clients` threads, each sending its requests back to back (alternating the two routes); the cell's records
    and wall time, from the moment all clients are connected to the last answer."""
    records: list[dict] = []
    lock = threading.Lock()
    clock = {}
    ready = threading.Barrier(clients, action=lambda: clock.setdefault("start", time.perf_counter()))

    def client(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=120) as http:
            http.get("/health")  # connected before the clock starts
            ready.wait()
            for i in range(requests_per_client):
                if time.perf_counter() - clock["start"] > max_seconds:
                    break
                route = "/generate" if (index + i) % 2 == 0 else "/generate/stream"
                try:
                    record = one_request(http, route, prompts[(index * requests_per_client + i) % len(prompts)])
                except httpx.HTTPError as err:
                    record = {"route": route, "status": f"{type(err).__name__}: {err}", "seconds": 0.0, "tokens": 0}
                with lock:
                    records.append(record)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client, i) for i in range(clients)]:
            future.result()
    return {"records": records, "seconds": time.perf_counter() - clock["start"]}


def summarise(cell: dict, clients: int) -> dict:
    records = cell["records"]
    ok = [r for r in records if r["status"] == 200]
    errors = [r for r in records if r["status"] != 200]
    return {
        "clients": clients, "requests": len(records), "errors": len(errors),
        "error_examples": [str(r["status"]) for r in errors[:3]], "seconds": round(cell["seconds"], 3),
        "tokens": sum(r["tokens"] for r in ok), "tokens_per_s": round(sum(r["tokens"] for r in ok) / cell["seconds"], 1),
        "generate_ms": latency_summary(1000 * r["seconds"] for r in ok if r["route"] == "/generate"),
        "stream_ms": latency_summary(1000 * r["seconds"] for r in ok if r["route"] == "/generate/stream"),
        "first_token_ms": latency_summary(1000 * r["first_token_s"] for r in ok if r.get("first_token_s") is not None),
    }


def figures(results: dict) -> dict[str, str]:
    cells, counts = results["cells"], [int(c) for c in results["cells"]["serial"]]
    at = str(TARGET_CLIENTS) if str(TARGET_CLIENTS) in cells["serial"] else str(max(counts))
    serial, continuous = cells["serial"][at], cells["continuous"][at]
    one = str(min(counts))

    def p50_p95(stats: dict) -> str:
        return f"p50 {stats['p50_ms']:.0f} ms, p95 {stats['p95_ms']:.0f} ms" if stats else "none"

    return {
        f"{at} clients: tokens/s, continuous vs serial": (
            f"{continuous['tokens_per_s']:.0f} vs {serial['tokens_per_s']:.0f} ({results['speedup'][at]:.2f}×)"),
        f"{at} clients: /generate ({PROMPT_TOKENS} + {NEW_TOKENS} tokens), continuous": p50_p95(continuous["generate_ms"]),
        f"{at} clients: /generate, serial": p50_p95(serial["generate_ms"]),
        f"{at} clients: time to first token, continuous": p50_p95(continuous["first_token_ms"]),
        f"{one} client: /generate, continuous vs serial": (
            f"{p50_p95(cells['continuous'][one]['generate_ms'])} vs {p50_p95(cells['serial'][one]['generate_ms'])}"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    prompts = fifty_token_prompts(resolve(args.lm))
    common = ["--lm", args.lm, "--qa", "none", "--lm-precision", "fp32", "--log-level", "warning"]
    if args.threads:
        common += ["--threads", str(args.threads)]
    options = {"serial": [], "continuous": ["--max-batch", str(args.max_batch)] if args.max_batch else []}
    cells: dict[str, dict[str, dict]] = {kind: {} for kind in SCHEDULERS}
    with ExitStack() as stack:
        servers = {kind: stack.enter_context(running_server([*common, "--scheduler", kind, *options[kind]]))
                   for kind in SCHEDULERS}
        health = {kind: httpx.get(f"{server.base_url}/health").json() for kind, server in servers.items()}
        assert all(health[kind]["scheduler"] == kind for kind in SCHEDULERS), health
        for kind, server in servers.items():  # first-call allocations at every batch shape, before the clock
            if args.warmup:
                closed_loop(server.base_url, prompts, max(args.clients), args.warmup, args.max_seconds)
        for turn, clients in enumerate(args.clients):
            for kind in SCHEDULERS if turn % 2 == 0 else SCHEDULERS[::-1]:
                cell = closed_loop(servers[kind].base_url, prompts, clients, args.requests_per_client, args.max_seconds)
                cells[kind][str(clients)] = summary = summarise(cell, clients)
                print(f"{kind:>10} × {clients:2}: {summary['tokens_per_s']:8.1f} tokens/s, /generate "
                      f"p95 {summary['generate_ms'].get('p95_ms', float('nan')):7.1f} ms, first token "
                      f"p95 {summary['first_token_ms'].get('p95_ms', float('nan')):7.1f} ms, {summary['errors']} errors",
                      flush=True)

    speedup = {c: round(cells["continuous"][c]["tokens_per_s"] / cells["serial"][c]["tokens_per_s"], 2)
               for c in cells["serial"] if cells["serial"][c]["tokens_per_s"] > 0}
    at = str(TARGET_CLIENTS)
    results = {
        "lm": f"{args.lm} (fp32)", "servers": health, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
        "requests_per_client": args.requests_per_client, "clients": args.clients, "cells": cells, "speedup": speedup,
        "errors": sum(cell["errors"] for per_kind in cells.values() for cell in per_kind.values()),
        "targets": {} if at not in speedup else {
            f"tokens_per_s_{TARGET_SPEEDUP:g}x_serial_at_{at}_clients": speedup[at] >= TARGET_SPEEDUP,
            f"generate_p95_below_{TARGET_P95_MS:g}ms_at_{at}_clients":
                cells["continuous"][at]["generate_ms"].get("p95_ms", float("inf")) < TARGET_P95_MS,
        },
    }
    rows = [
        {"scheduler": kind, "clients": cell["clients"], "requests": cell["requests"], "errors": cell["errors"],
         "tokens_per_s": cell["tokens_per_s"], "speedup": speedup.get(str(cell["clients"])) if kind == "continuous" else None,
         **{f"generate_{q}": cell["generate_ms"].get(f"{q}_ms") for q in ("p50", "p95", "p99")},
         **{f"ttft_{q}": cell["first_token_ms"].get(f"{q}_ms") for q in ("p50", "p95", "p99")}}
        for clients in map(str, args.clients) for kind, cell in ((k, cells[k][clients]) for k in SCHEDULERS)
    ]
    table = markdown_table(rows, [
        "scheduler", "clients", "requests", "errors", ("tokens_per_s", "tokens/s"), ("speedup", "× serial"),
        ("generate_p50", "/generate p50 ms"), ("generate_p95", "p95"), ("generate_p99", "p99"),
        ("ttft_p50", "first token p50 ms"), ("ttft_p95", "p95"), ("ttft_p99", "p99"),
    ])
    markdown = (
        f"### Generation under load: serial scheduler vs continuous batching, LM {results['lm']}\n\n"
        f"Closed-loop clients, each sending {args.requests_per_client} requests ({PROMPT_TOKENS}-token prompt, "
        f"{NEW_TOKENS} new tokens), alternating `/generate` and `/generate/stream`; both servers on this machine, "
        f"measured in turns.\n\n{table}"
    )

    def plot(figure):
        panels = figure.subplots(1, 3)
        for kind in SCHEDULERS:
            counts = args.clients
            series = [cells[kind][str(c)] for c in counts]
            panels[0].plot(counts, [s["tokens_per_s"] for s in series], marker="o", label=kind)
            panels[1].plot(counts, [s["generate_ms"].get("p95_ms") for s in series], marker="o", label=f"{kind} p95")
            panels[2].plot(counts, [s["first_token_ms"].get("p95_ms") for s in series], marker="o", label=f"{kind} p95")
        panels[1].axhline(TARGET_P95_MS, color="red", linestyle=":", label=f"{TARGET_P95_MS:g} ms target")
        for axes, title, ylabel in ((panels[0], "total throughput", "generated tokens/s"),
                                    (panels[1], f"/generate latency ({PROMPT_TOKENS} + {NEW_TOKENS} tokens)", "ms"),
                                    (panels[2], "time to first token (stream)", "ms")):
            axes.set(xlabel="concurrent clients", ylabel=ylabel, title=title, xscale="log")
            axes.set_xticks(args.clients, [str(c) for c in args.clients])
            axes.legend(fontsize=7)

    write_results("serving_load", results, markdown, figures=figures(results), plot=plot, output_dir=args.output_dir)
    print(markdown)
    return 0


if __name__ == "__main__":
    run(main)
