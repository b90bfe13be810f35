"""Token-by-token vs full-batch generation: throughput over 20 prompts, and a batch-size sweep.

    python benchmarks/batching.py            # pocketlm/tiny-lm-onnx, fp32 and int8

Token by token runs each prompt alone, streamed, with the KV cache (what /generate/stream does) and, as
the naive reference, without it (every step re-reads the whole sequence). Every scheme decodes the same 20
WikiText-2 prompts (10 to 67 tokens, so padding matters) by 32 and by 128 greedy tokens each, with ONNX
Runtime at `--threads` intra-op threads; each run is repeated and the median kept.
Greedy fp32 outputs must be identical across all schemes (checked; the script fails otherwise). The int8
graph's agreement is reported, not required: dynamic quantisation scales activations by the min/max of the
whole batch tensor, so a row's numbers depend slightly on the rows batched with it.
Writes benchmarks/results/batching/batching.{json,md,png}.
"""

from __future__ import annotations

import argparse
import random

from pocketlm import TINY_LM_ONNX
from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.cli import run
from pocketlm.hub import resolve
from pocketlm.inference.batching import SchemeRun, corpus_prompts, full_batch, token_by_token
from pocketlm.inference.onnx_lm import BATCH_STABLE_PRECISIONS, LM_PRECISIONS, OnnxCausalLM, SamplingParams
from pocketlm.settings import REPO_ROOT


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TINY_LM_ONNX, help="Hub id or folder of the LM's ONNX export")
    parser.add_argument("--precisions", default=",".join(LM_PRECISIONS), help=f"comma-separated: {', '.join(LM_PRECISIONS)}")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new_tokens", default="32,128", help="comma-separated: tokens generated per prompt")
    parser.add_argument("--batch_sizes", default="1,2,4,8,16,20")
    parser.add_argument("--repeats", type=int, default=3, help="runs per scheme; the median is reported")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "batching"))
    args = parser.parse_args(argv)
    for name in ("batch_sizes", "new_tokens"):
        try:
            setattr(args, name, [int(b) for b in getattr(args, name).split(",")])
        except ValueError:
            parser.error(f"--{name} must be comma-separated integers, got {getattr(args, name)!r}")
    args.precisions = args.precisions.split(",")
    if not set(args.precisions) <= set(LM_PRECISIONS):
        parser.error(f"--precisions takes {', '.join(LM_PRECISIONS)}, got {','.join(args.precisions)}")
    if min(args.batch_sizes + args.new_tokens) < 1 or args.prompts < 1 or args.repeats < 1:
        parser.error("--batch_sizes, --prompts, --new_tokens and --repeats must be positive")
    return args


def prompt_lengths(count: int) -> list[int]:
    """10, 13, 16... tokens, in a fixed shuffled order: consecutive prompts differ in length, as real traffic does."""
    lengths = [10 + 3 * i for i in range(count)]
    random.Random(0).shuffle(lengths)
    return lengths


def token_agreement(outputs: list[list[int]], reference: list[list[int]]) -> float:
    """Share of generated tokens equal, position by position, to the token-by-token run's."""
    same = sum(a == b for out, ref in zip(outputs, reference) for a, b in zip(out, ref))
    return same / sum(map(len, reference))


def median_run(make_run, repeats: int) -> SchemeRun:
    runs = [make_run() for _ in range(repeats)]
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def measure(lm: OnnxCausalLM, prompts: list[list[int]], new_tokens: int, batch_sizes: list[int], repeats: int) -> list[SchemeRun]:
    """Token by token, then full batch at each size (and length-sorted groups where that changes anything)."""
    params = SamplingParams(max_new_tokens=new_tokens, stop_at_eos=False)  # equal work in every scheme
    full_batch(lm, prompts[:4], params)  # warm-up
    runs = [median_run(lambda: token_by_token(lm, prompts, params), repeats),
            token_by_token(lm, prompts, params, use_cache=False)]  # the slow reference: one run
    for size in batch_sizes:
        runs.append(median_run(lambda: full_batch(lm, prompts, params, batch_size=size), repeats))
        if 1 < size < len(prompts):
            runs.append(median_run(lambda: full_batch(lm, prompts, params, batch_size=size, sort_by_length=True), repeats))
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    rows, headline = [], {}
    for precision in args.precisions:
        lm = OnnxCausalLM(resolve(args.model), precision=precision, intra_op_num_threads=args.threads)
        prompts = corpus_prompts(lm, args.prompts, prompt_lengths(args.prompts))
        for new_tokens in args.new_tokens:
            baseline, *others = runs = measure(lm, prompts, new_tokens, args.batch_sizes, args.repeats)
            for scheme_run in runs:
                agreement = token_agreement(scheme_run.outputs, baseline.outputs)
                if precision in BATCH_STABLE_PRECISIONS and agreement < 1:
                    raise SystemExit(f"error: {scheme_run.scheme} (batch {scheme_run.batch_size}) changed the greedy outputs")
                rows.append({**scheme_run.summary(), "precision": precision, "tokens_per_prompt": new_tokens, "token_agreement": agreement,
                             "speedup": scheme_run.tokens_per_s / baseline.tokens_per_s})
            no_cache = next(r for r in others if r.scheme == "token_by_token_no_cache")
            everyone = next(r for r in others if r.scheme == "full_batch" and r.batch_size == len(prompts))
            best = max((r for r in others if r.scheme.startswith("full_batch")), key=lambda r: r.tokens_per_s)
            key = f"{precision}, {new_tokens} new tokens"
            headline[key] = {
                "token_by_token_tokens_per_s": baseline.tokens_per_s, "full_batch_tokens_per_s": everyone.tokens_per_s,
                "token_by_token_no_cache_tokens_per_s": no_cache.tokens_per_s,
                "speedup_full_batch_vs_token_by_token": everyone.tokens_per_s / baseline.tokens_per_s,
                "speedup_full_batch_vs_token_by_token_no_cache": everyone.tokens_per_s / no_cache.tokens_per_s,
                "best": {"scheme": best.scheme, "batch_size": best.batch_size, "tokens_per_s": best.tokens_per_s,
                         "speedup": best.tokens_per_s / baseline.tokens_per_s},
            }
            print(f"{key}: token by token {baseline.tokens_per_s:.0f} tok/s; full batch of {len(prompts)}: "
                  f"{everyone.tokens_per_s:.0f} tok/s ({everyone.tokens_per_s / baseline.tokens_per_s:.1f}×)", flush=True)
    results = {"model": args.model, "threads": args.threads, "prompts": args.prompts, "new_tokens": args.new_tokens,
               "repeats": args.repeats,
               "greedy_outputs_identical": {p: all(r["token_agreement"] == 1 for r in rows if r["precision"] == p) for p in args.precisions},
               "headline": headline, "runs": rows}
    table = markdown_table(rows, [
        ("precision", "graph"), ("tokens_per_prompt", "new tokens"), ("scheme", "scheme"), ("batch_size", "batch"),
        ("padding_fraction", "padding share"), ("tokens_per_s", "tokens/s"), ("speedup", "× token by token"),
        ("first_token_ms", "first token (ms)"), ("token_agreement", "same tokens"),
    ])
    figures = {
        key: f"full batch of {args.prompts} = {h['speedup_full_batch_vs_token_by_token']:.1f}× token by token "
             f"with the KV cache ({h['full_batch_tokens_per_s']:.0f} vs {h['token_by_token_tokens_per_s']:.0f} tokens/s), "
             f"{h['speedup_full_batch_vs_token_by_token_no_cache']:.1f}× token by token without it "
             f"({h['token_by_token_no_cache_tokens_per_s']:.0f} tokens/s); best: "
             f"{h['best']['scheme'].replace('_', ' ')} of {h['best']['batch_size']}, {h['best']['speedup']:.1f}×"
        for key, h in headline.items()
    }
    summary = "\n".join(f"* {key}: {line}" for key, line in figures.items())
    markdown = (f"### Batching: {args.prompts} WikiText-2 prompts (10–{7 + 3 * args.prompts} tokens), greedy, {args.model}, "
                f"{args.threads} threads (median of {args.repeats})\n\n{summary}\n\n{table}")

    def plot(figure):
        axes = figure.subplots(1, len(args.new_tokens), squeeze=False)[0]
        for axis, new_tokens in zip(axes, args.new_tokens):
            for precision in args.precisions:
                mine = [r for r in rows if r["precision"] == precision and r["tokens_per_prompt"] == new_tokens]
                for scheme, style in (("full_batch", "o-"), ("full_batch_sorted", "s--")):
                    points = sorted((r["batch_size"], r["tokens_per_s"]) for r in mine if r["scheme"] == scheme)
                    if points:
                        axis.plot(*zip(*points), style, label=f"{scheme.replace('_', ' ')} ({precision})")
                for scheme in ("token_by_token", "token_by_token_no_cache"):
                    base = next(r["tokens_per_s"] for r in mine if r["scheme"] == scheme)
                    axis.axhline(base, linestyle=":", color="grey")
                    axis.annotate(f"{scheme.replace('_', ' ')} ({precision})", (1, base), textcoords="offset points",
                                  xytext=(4, 4), fontsize=7)
            axis.set(xlabel="batch size (prompts decoded together)", ylabel="generated tokens / s",
                     title=f"{args.prompts} prompts × {new_tokens} new tokens, {args.threads} threads")
            axis.legend(fontsize=8)
            axis.grid(alpha=0.3)

    write_results("batching", results, markdown, figures=figures, plot=plot, output_dir=args.output_dir)
    print(summary)
    return 0


if __name__ == "__main__":
    run(main)
