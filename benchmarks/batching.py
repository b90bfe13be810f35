"""Token-by-token vs full-batch generation: throughput over 20 prompts, and a batch-size sweep.

    flock /work/heavy.lock python benchmarks/batching.py            # pocketlm/tiny-lm-onnx, fp32 and int8

Every scheme decodes the same 20 WikiText-2 prompts (10 to 67 tokens, so padding matters) by 32 greedy
tokens each, with ONNX Runtime at `--threads` intra-op threads; each run is repeated and the median kept.
Greedy fp32 outputs must be identical across all schemes (checked; the script fails otherwise). The int8
graph's agreement is reported, not required: dynamic quantisation scales activations by the min/max of the
whole batch tensor, so a row's numbers depend slightly on the rows batched with it.
Writes benchmarks/results/batching/batching.{json,md,png}.
"""

from __future__ import annotations

import argparse

from pocketlm import TINY_LM_ONNX
from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.cli import run
from pocketlm.hub import resolve
from pocketlm.inference.batching import SchemeRun, corpus_prompts, full_batch, token_by_token
from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams
from pocketlm.settings import REPO_ROOT


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TINY_LM_ONNX, help="Hub id or folder of the LM's ONNX export")
    parser.add_argument("--precisions", default="fp32,int8", help="comma-separated: fp32, int8")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--batch_sizes", default="1,2,4,8,16,20")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scheme; the median is reported")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "batching"))
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        parser.error(f"--batch_sizes must be comma-separated integers, got {args.batch_sizes!r}")
    args.precisions = args.precisions.split(",")
    if not set(args.precisions) <= {"fp32", "int8"}:
        parser.error(f"--precisions takes fp32 and/or int8, got {','.join(args.precisions)}")
    if min(args.batch_sizes) < 1 or args.prompts < 1 or args.new_tokens < 1 or args.repeats < 1:
        parser.error("--batch_sizes, --prompts, --new_tokens and --repeats must be positive")
    return args


def token_agreement(outputs: list[list[int]], reference: list[list[int]]) -> float:
    """Share of generated tokens equal, position by position, to the token-by-token run's."""
    same = sum(a == b for out, ref in zip(outputs, reference) for a, b in zip(out, ref))
    return same / sum(map(len, reference))


def median_run(make_run, repeats: int) -> SchemeRun:
    runs = [make_run() for _ in range(repeats)]
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def main(argv=None) -> int:
    args = parse_args(argv)
    params = SamplingParams(max_new_tokens=args.new_tokens, stop_at_eos=False)  # equal work in every scheme
    rows = []
    for precision in args.precisions:
        lm = OnnxCausalLM(resolve(args.model), quantized=precision == "int8", intra_op_num_threads=args.threads)
        prompts = corpus_prompts(lm, args.prompts, [10 + 3 * i for i in range(args.prompts)])
        full_batch(lm, prompts[:4], params)  # warm-up
        baseline = median_run(lambda: token_by_token(lm, prompts, params), args.repeats)
        runs = [baseline]
        for size in args.batch_sizes:
            runs.append(median_run(lambda: full_batch(lm, prompts, params, batch_size=size), args.repeats))
            if 1 < size < len(prompts):
                runs.append(median_run(lambda: full_batch(lm, prompts, params, batch_size=size, sort_by_length=True), args.repeats))
        for scheme_run in runs:
            agreement = token_agreement(scheme_run.outputs, baseline.outputs)
            if precision == "fp32" and agreement < 1:
                raise SystemExit(f"error: {scheme_run.scheme} (batch {scheme_run.batch_size}) changed the greedy outputs")
            rows.append({**scheme_run.summary(), "precision": precision, "token_agreement": agreement,
                         "speedup": scheme_run.tokens_per_s / baseline.tokens_per_s})
        print(f"{precision}: token by token {baseline.tokens_per_s:.0f} tok/s; "
              f"full batch of {len(prompts)}: {runs[-1].tokens_per_s:.0f} tok/s", flush=True)

    def best_full(precision):
        return max((r for r in rows if r["precision"] == precision and r["scheme"] != "token_by_token"),
                   key=lambda r: r["tokens_per_s"])

    headline = {
        p: {"token_by_token_tokens_per_s": next(r["tokens_per_s"] for r in rows if r["precision"] == p and r["scheme"] == "token_by_token"),
            "full_batch_all_prompts_tokens_per_s": next(r["tokens_per_s"] for r in rows if r["precision"] == p and r["scheme"] == "full_batch" and r["batch_size"] == args.prompts),
            "best": {k: best_full(p)[k] for k in ("scheme", "batch_size", "tokens_per_s", "speedup")}}
        for p in args.precisions
    }
    for p in headline.values():
        p["speedup_full_batch_vs_token_by_token"] = p["full_batch_all_prompts_tokens_per_s"] / p["token_by_token_tokens_per_s"]
    results = {"model": args.model, "threads": args.threads, "prompts": args.prompts, "new_tokens": args.new_tokens,
               "repeats": args.repeats,
               "greedy_outputs_identical": {p: all(r["token_agreement"] == 1 for r in rows if r["precision"] == p) for p in args.precisions},
               "headline": headline, "runs": rows}
    table = markdown_table(rows, [
        ("precision", "graph"), ("scheme", "scheme"), ("batch_size", "batch"), ("padding_fraction", "padding share"),
        ("tokens_per_s", "tokens/s"), ("speedup", "× token by token"), ("first_token_ms", "first token (ms)"),
        ("token_agreement", "same tokens"),
    ])
    summary = "\n".join(
        f"* {p}: full batch of {args.prompts} = **{h['speedup_full_batch_vs_token_by_token']:.1f}×** token by token "
        f"({h['full_batch_all_prompts_tokens_per_s']:.0f} vs {h['token_by_token_tokens_per_s']:.0f} tokens/s)"
        for p, h in headline.items()
    )
    markdown = (f"### Batching: {args.prompts} prompts × {args.new_tokens} greedy tokens, {args.model}, "
                f"{args.threads} threads (median of {args.repeats})\n\n{summary}\n\n{table}")

    def plot(figure):
        axis = figure.add_subplot(1, 1, 1)
        for precision in args.precisions:
            for scheme, style in (("full_batch", "o-"), ("full_batch_sorted", "s--")):
                points = sorted((r["batch_size"], r["tokens_per_s"]) for r in rows if r["precision"] == precision and r["scheme"] == scheme)
                if points:
                    axis.plot(*zip(*points), style, label=f"{scheme.replace('_', ' ')} ({precision})")
            base = headline[precision]["token_by_token_tokens_per_s"]
            axis.axhline(base, linestyle=":", color="grey")
            axis.annotate(f"token by token ({precision})", (1, base), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set_xlabel("batch size (prompts decoded together)")
        axis.set_ylabel("generated tokens / s")
        axis.set_title(f"{args.prompts} prompts × {args.new_tokens} tokens, {args.threads} threads")
        axis.legend()
        axis.grid(alpha=0.3)

    write_results(args.output_dir, "batching", results, markdown, plot)
    print(summary)
    return 0


if __name__ == "__main__":
    run(main)
