"""Pretraining throughput: pocketlm's loop against transformers' `Trainer`, side by side, with MFU.

    flock /work/heavy.lock python benchmarks/pretrain_throughput.py     # writes benchmarks/results/pretrain_throughput/

Same Llama config (4 layers, d256, vocab of the prepared corpus, 512-token chunks), same initial weights,
same chunks, same number of steps and learning-rate schedule for every variant, each in its own process;
tokens/s after `--warmup_steps`, the final loss (mean of the last 5 steps), and MFU against the fp32/bf16
matmul peaks measured at the start of the same run. Variants toggle one optimisation at a time (fused
SDPA, fused AdamW, bf16 autocast, torch.compile, batch size) to record what each gives.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pocketlm.cli import run
from pocketlm.settings import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results" / "pretrain_throughput"


def main(argv: list[str] | None = None) -> int:
    from pocketlm.data.corpus import default_prepared_dir
    from pocketlm.training.throughput import VARIANTS, VARIANTS_BY_NAME

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=None, help="prepared corpus (default: $POCKETLM_RUNS_DIR/corpus)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per variant (default: %(default)s)")
    parser.add_argument("--warmup_steps", type=int, default=4, help="untimed first steps (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="run every variant this many times, interleaved; the fastest round counts (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for every variant (default: %(default)s)")
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS), help="comma-separated subset")
    parser.add_argument("--output_dir", type=Path, default=RESULTS)
    parser.add_argument("--run_one", default=None, help=argparse.SUPPRESS)  # internal: one variant, JSON to stdout
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS_BY_NAME]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS_BY_NAME)}")
    if args.steps <= args.warmup_steps or args.warmup_steps < 1:
        parser.error("--warmup_steps must be at least 1 and below --steps")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    data_dir = args.data_dir or default_prepared_dir()
    if not (data_dir / "train.jsonl").is_file():
        parser.error(f"no prepared corpus in {data_dir}: run training_scripts/prepare_corpus.py first (or pass --data_dir)")

    from pocketlm.training.throughput import BenchSettings, run_variant

    settings = BenchSettings(data_dir=data_dir, work_dir=args.output_dir / "work", steps=args.steps,
                             warmup_steps=args.warmup_steps, threads=args.threads)
    if args.run_one:
        print("RESULT " + json.dumps(run_variant(VARIANTS_BY_NAME[args.run_one], settings)))
        return 0
    return orchestrate(args, names, settings)


def orchestrate(args, names, settings) -> int:
    import torch

    from pocketlm.hub import machine_description
    from pocketlm.training.throughput import VARIANTS_BY_NAME, add_derived, matmul_peak, write_throughput_results

    torch.set_num_threads(args.threads)
    peaks = {"fp32_gflops": matmul_peak(torch.float32), "bf16_gflops": matmul_peak(torch.bfloat16), "threads": args.threads}
    print(f"matmul peak at {args.threads} threads: fp32 {peaks['fp32_gflops']:.0f} GFLOP/s, bf16 {peaks['bf16_gflops']:.0f} GFLOP/s", flush=True)
    # Rounds interleave the variants (A B C, A B C...) so that a burst of other work on a shared machine
    # slows one round of everything rather than one variant; each variant keeps its fastest round.
    best: dict[str, dict] = {}
    for round_index in range(args.rounds):
        for name in names:
            row = run_one(name, args, settings)
            if row is None:
                return 1
            row["rounds_tokens_per_second"] = [*best.get(name, {}).get("rounds_tokens_per_second", []), row["tokens_per_second"]]
            if name not in best or row["tokens_per_second"] > best[name]["tokens_per_second"]:
                best[name] = row
            else:
                best[name]["rounds_tokens_per_second"] = row["rounds_tokens_per_second"]
            print(f"round {round_index + 1}: {VARIANTS_BY_NAME[name].label:48s} {row['tokens_per_second']:8,.0f} tokens/s  "
                  f"final loss {row['final_loss']:.3f}", flush=True)
    rows = [best[name] for name in names]
    add_derived(rows, peaks)
    folder = write_throughput_results(args.output_dir, rows, peaks, vars_for_json(args), machine_description())
    print(f"results in {folder}")
    return 0


def run_one(name, args, settings) -> dict | None:
    """One variant in a fresh process (no precision, compile or allocator state shared with the others)."""
    command = [sys.executable, __file__, "--run_one", name, "--steps", str(args.steps), "--warmup_steps",
               str(args.warmup_steps), "--threads", str(args.threads), "--data_dir", str(settings.data_dir),
               "--output_dir", str(args.output_dir)]
    result = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        print(f"{name}: failed\n{result.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1].removeprefix("RESULT "))


def vars_for_json(args) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "run_one"}


if __name__ == "__main__":
    run(main)
