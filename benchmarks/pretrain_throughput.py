"""Pretraining throughput: pocketlm's loop against transformers' `Trainer`, side by side, with MFU.

    python benchmarks/pretrain_throughput.py     # writes benchmarks/results/pretrain_throughput/pretrain_throughput.{json,md,png}
    python benchmarks/pretrain_throughput.py --profile ours_bf16   # where one variant's step goes → profile-ours_bf16.md

Same Llama config (4 layers, d256, vocab of the prepared corpus, 512-token chunks), same initial weights,
same chunks, same number of steps, learning-rate schedule and optimizer (fused AdamW, the `Trainer`'s default)
for every variant, each in its own process and on tcmalloc where it is installed, as the training scripts run;
tokens/s after `--warmup_steps`, the final loss (mean of the last 5 steps), and MFU against the fp32/bf16
matmul peaks measured in the same run (again after every round, keeping the best). Variants toggle one
optimisation at a time (fused SDPA, fused AdamW, the fused output projection + loss, bf16 autocast,
torch.compile, batch size, the system allocator instead of tcmalloc) to record what each gives; the `Trainer`
runs in fp32 and under bf16 autocast, each compiled and not, and the target compares the loop with the fastest
of them (bf16 variants are left out where bf16 matmuls are slower than fp32's). Rounds interleave the variants
and each reports its median round; results are rewritten after every round, and no round starts that would
overrun `--time_budget_s` (the defaults fit about 10 minutes on the 2-core CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from pocketlm.cli import run
from pocketlm.settings import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results" / "pretrain_throughput"


def main(argv: list[str] | None = None) -> int:
    from pocketlm.data.corpus import default_prepared_dir
    from pocketlm.training.throughput import VARIANTS, VARIANTS_BY_NAME

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=None, help="prepared corpus (default: $POCKETLM_RUNS_DIR/corpus)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per variant (default: %(default)s)")
    parser.add_argument("--warmup_steps", type=int, default=2, help="untimed first steps (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="run every variant this many times, interleaved; the median round counts (default: %(default)s)")
    parser.add_argument("--time_budget_s", type=float, default=600,
                        help="start no further round once the next would end past this (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for every variant (default: %(default)s)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated subset of {', '.join(VARIANTS_BY_NAME)} (default: "
                             f"{','.join(v.name for v in VARIANTS if v.default)}; the bf16 ones only where bf16 "
                             "matmuls outrun fp32's)")
    parser.add_argument("--output_dir", type=Path, default=RESULTS)
    parser.add_argument("--profile", default=None, metavar="VARIANT",
                        help="instead of the comparison, profile one variant's run: its top operators by self time")
    parser.add_argument("--run_one", default=None, help=argparse.SUPPRESS)  # internal: one variant, JSON to stdout
    args = parser.parse_args(argv)
    if args.profile is not None:
        names = [args.profile]
    elif args.variants is not None:
        names = [n for n in args.variants.split(",") if n]
    else:
        names = [v.name for v in VARIANTS if v.default]
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
    if args.profile:
        return write_profile(args, VARIANTS_BY_NAME[args.profile], settings)
    return orchestrate(args, names, settings)


def write_profile(args, variant, settings) -> int:
    """`--profile VARIANT`: the variant's top operators by self time, recorded as profile-VARIANT.{json,md}."""
    import torch

    from pocketlm.benchmarking import markdown_table, write_results as write_record
    from pocketlm.training.throughput import profile_variant

    torch.set_num_threads(args.threads)
    rows = profile_variant(variant, settings)
    table = markdown_table(rows, ["operator", "calls", ("self_ms", "self ms"), "share"], {"self_ms": ",.0f", "share": ".1%"})
    markdown = (f"# Where the time goes: {variant.label}\n\n{settings.steps} steps of batch {variant.batch_size} under "
                f"`torch.profiler` ({args.threads} threads), the top operators by self time:\n\n{table}")
    write_record(f"profile-{variant.name}", {"variant": variant.name, "steps": settings.steps, "rows": rows}, markdown,
                 figures={row["operator"]: f"{row['share']:.1%} of operator self time" for row in rows[:5]},
                 output_dir=args.output_dir)
    print(markdown)
    return 0


def orchestrate(args, names, settings) -> int:
    import torch

    from pocketlm.allocator import chosen_library
    from pocketlm.training.precision import cpu_bf16_support
    from pocketlm.training.throughput import VARIANTS_BY_NAME, median_round

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    peaks = {"threads": args.threads, "cpu_bf16": cpu_bf16_support(), **measure_peaks(settings)}
    print(f"matmul peak at {args.threads} threads: fp32 {peaks['fp32_gflops']:.0f} GFLOP/s, bf16 "
          f"{peaks['bf16_gflops']:.1f} GFLOP/s ({peaks['cpu_bf16']})", flush=True)
    print(f"fused causal attention, forward + backward, all layers: {peaks['attention_s_per_token'] * 1e6:.1f} µs a "
          f"token in {peaks['attention_dtype']}", flush=True)
    if args.variants is None and peaks["bf16_gflops"] < peaks["fp32_gflops"]:
        # Emulated bf16 (1/100 of fp32's speed on an AVX2-only CPU) would take hours and cannot be anyone's
        # fastest variant; name the variants in --variants to run them anyway.
        skipped = [n for n in names if VARIANTS_BY_NAME[n].bf16]
        names = [n for n in names if n not in skipped]
        peaks["skipped"] = (f"{', '.join(skipped)}: bf16 matmuls run at {peaks['bf16_gflops']:.1f} GFLOP/s here, "
                            f"below fp32's {peaks['fp32_gflops']:.0f}")
        print(f"skipping {peaks['skipped']}", flush=True)
    if chosen_library() is None:  # tcmalloc not installed (or POCKETLM_ALLOCATOR=system): every variant on glibc's
        names = [n for n in names if VARIANTS_BY_NAME[n].allocator != "system"]
        peaks["allocator_note"] = "tcmalloc is not in use here, so every variant ran on the system allocator"
        print(peaks["allocator_note"], flush=True)
    # Rounds interleave the variants (A B C, A B C...) so that a burst of other work on a shared machine
    # slows one round of everything rather than one variant; each variant reports its median round.
    rounds: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            row = run_one(name, args, settings)
            if row is None:
                return 1
            rounds[name].append(row)
            print(f"round {round_index + 1}: {VARIANTS_BY_NAME[name].label:48s} {row['tokens_per_second']:8,.0f} tokens/s  "
                  f"final loss {row['final_loss']:.3f}", flush=True)
        peaks.update(measure_peaks(settings, peaks))
        folder = write_results(args, [median_round(rounds[name]) for name in names], peaks, round_index + 1)
        elapsed = time.perf_counter() - started
        if round_index + 1 < args.rounds and elapsed * (round_index + 2) / (round_index + 1) > args.time_budget_s:
            print(f"stopping after {round_index + 1} round(s): another would end past --time_budget_s {args.time_budget_s:.0f}")
            break
    print(f"results in {folder} ({time.perf_counter() - started:.0f} s)")
    return 0


def measure_peaks(settings, earlier: dict | None = None) -> dict:
    """The fp32 and bf16 matmul peaks and the attention kernels' time, each the best of this measurement and the
    `earlier` ones: other work on a shared machine only ever slows a measurement down, so measuring again after
    every round keeps one burst (the peak once read half its value at the start of a run) out of MFU and ceilings."""
    import torch

    from pocketlm.training.precision import matmul_peak

    first = earlier is None
    peaks = {"fp32_gflops": matmul_peak(torch.float32, repeats=15, warmup_s=2 if first else 0.5),
             "bf16_gflops": matmul_peak(torch.bfloat16, repeats=15, warmup_s=1 if first else 0.5)}
    if not first:
        peaks = {key: max(value, earlier[key]) for key, value in peaks.items()}
    peaks.update(attention_floor(settings, peaks))
    if not first and peaks["attention_dtype"] == earlier["attention_dtype"]:
        peaks["attention_s_per_token"] = min(peaks["attention_s_per_token"], earlier["attention_s_per_token"])
    return peaks


def attention_floor(settings, peaks: dict) -> dict:
    """The attention kernels' time per token for the benchmark's model, in the faster matmul precision, at the
    `Trainer` variants' batch: the part of a step the ceiling cannot count at the matmul peak."""
    import torch

    from pocketlm.training.throughput import (
        VARIANTS_BY_NAME, attention_seconds_per_token, chunk_length, faster_matmul_precision,
    )

    precision, _ = faster_matmul_precision(peaks)
    model = settings.model
    per_token = attention_seconds_per_token(VARIANTS_BY_NAME["trainer_fp32"].batch_size, chunk_length(settings.data_dir),
                                            model["n_heads"], model["d_model"] // model["n_heads"], model["n_layers"],
                                            {"fp32": torch.float32, "bf16": torch.bfloat16}[precision])
    return {"attention_s_per_token": per_token, "attention_dtype": precision}


def write_results(args, rows, peaks, rounds_done) -> Path:
    """Rewrite the record after every round: an interrupted run keeps what it measured."""
    from pocketlm.benchmarking import markdown_table, write_results as write_record
    from pocketlm.training.throughput import add_derived

    add_derived(rows, peaks)
    settings = {**vars_for_json(args), "rounds_done": rounds_done}
    verdict = target_verdict(rows, peaks)
    shown = [{**r, "per_round": " / ".join(f"{t:,.0f}" for t in r.get("rounds_tokens_per_second", [r["tokens_per_second"]]))}
             for r in rows]
    table = markdown_table(shown, [
        ("label", "variant"), ("allocator", "malloc"), ("batch_size", "batch"), ("tokens_per_second", "tokens/s (median round)"),
        ("per_round", "rounds' tokens/s"), ("seconds_per_step", "s/step"), ("final_loss", "final loss"), ("peak_rss_mb", "peak RSS MB"),
        ("model_gflops", "model GFLOP/s"), ("mfu", "MFU"), ("speedup_vs_trainer_fp32", "× Trainer fp32"),
        ("speedup_vs_trainer_bf16", "× Trainer bf16"), ("speedup_vs_trainer_best", "× fastest Trainer"),
    ], {"tokens_per_second": ",.0f", "seconds_per_step": ".2f", "peak_rss_mb": ",.0f", "final_loss": ".3f", "model_gflops": ".0f", "mfu": ".1%",
        "speedup_vs_trainer_fp32": ".2f", "speedup_vs_trainer_bf16": ".2f", "speedup_vs_trainer_best": ".2f"})
    markdown = "\n".join([
        "# Pretraining throughput: pocketlm loop vs transformers Trainer", "",
        f"{rounds_done} of {args.rounds} round(s) done.", "", table,
        f"Matmul peak measured in the same run ({peaks['threads']} threads, square matmuls up to 2048²): fp32 "
        f"{peaks['fp32_gflops']:.0f} GFLOP/s, bf16 {peaks['bf16_gflops']:.1f} GFLOP/s ({peaks.get('cpu_bf16', 'CPU flags not recorded')}). "
        "MFU uses the peak of the variant's precision. Each variant's tokens/s is the tokens of one step over its "
        "median step time after the warm-up steps, in its median round.",
        *(["", f"Not run: {peaks['skipped']}."] if "skipped" in peaks else []),
        *(["", f"Note: {peaks['allocator_note']}."] if "allocator_note" in peaks else []), "", verdict,
    ])
    figures = {r["label"]: (f"{r['tokens_per_second']:,.0f} tokens/s, MFU {r['mfu']:.1%}"
                            + "".join(f", {r[f'speedup_vs_{ref}']:.2f}× Trainer {ref.split('_')[1]}"
                                      for ref in ("trainer_fp32", "trainer_bf16") if f"speedup_vs_{ref}" in r))
               for r in rows}
    figures["target: best loop variant ≥ 1.5× the fastest Trainer variant"] = verdict
    return write_record("pretrain_throughput", {"settings": settings, "peaks": peaks, "rows": rows, "verdict": verdict},
                        markdown, figures=figures, plot=lambda figure: plot(rows, figure, peaks["threads"]),
                        output_dir=args.output_dir)


def target_verdict(rows: list[dict], peaks: dict | None = None) -> str:
    """The target: the best pocketlm variant at ≥ 1.5× the tokens/s of the fastest `Trainer` variant measured
    (the `Trainer` at its best: fp32, bf16 autocast or compiled, whichever this host runs fastest). With the
    run's matmul `peaks`, also the ceiling: how far above the fastest Trainer the same model FLOPs could go if a
    step did nothing but matmuls at the faster precision's peak — and, where the run timed the attention kernels,
    a step of the weight matmuls at that peak plus attention at its measured speed, with nothing else."""
    from pocketlm.training.throughput import faster_matmul_precision

    ours = [r for r in rows if r["loop"] == "pocketlm"]
    trainers = [r for r in rows if r["loop"] == "trainer"]
    if not ours or not trainers:
        return "target not evaluated (needs a Trainer and a pocketlm variant)"
    best, reference = (max(group, key=lambda r: r["tokens_per_second"]) for group in (ours, trainers))
    ratio = best["speedup_vs_trainer_best"]
    verdict = "met" if ratio >= 1.5 else "NOT met"
    text = (f"Target (≥ 1.5× the fastest Trainer variant): {verdict} — best loop variant '{best['label']}' at "
            f"{best['tokens_per_second']:,.0f} tokens/s = {ratio:.2f}× '{reference['label']}' "
            f"({reference['tokens_per_second']:,.0f} tokens/s).")
    if peaks and reference.get("model_gflops"):
        precision, peak = faster_matmul_precision(peaks)
        text += (f" Ceiling: that Trainer computes {reference['model_gflops']:.0f} model GFLOP/s; at the {precision} "
                 f"matmul peak ({peak:.0f} GFLOP/s) a step of only matmuls would be {peak / reference['model_gflops']:.2f}× it.")
        if "attention_s_per_token" in peaks and "matmul_flops_per_token" in reference:
            floor_s = reference["matmul_flops_per_token"] / (peak * 1e9) + peaks["attention_s_per_token"]
            text += (f" With attention timed as it runs (the fused kernels, forward and backward: "
                     f"{peaks['attention_s_per_token'] * 1e6:.1f} µs a token), the weight matmuls at the peak and "
                     f"nothing else — no norms, activations, embedding or optimizer — would be "
                     f"{1 / floor_s / reference['tokens_per_second']:.2f}× it.")
    return text


def plot(rows: list[dict], figure, threads: int) -> None:
    """Tokens/s per variant (Trainer grey, pocketlm's loop blue) with MFU, and the target line."""
    figure.set_size_inches(9, 0.5 * len(rows) + 2)
    ax = figure.add_subplot()
    labels = [r["label"] for r in rows]
    values = [r["tokens_per_second"] for r in rows]
    colors = ["#999999" if r["loop"] == "trainer" else "#2a7ab0" for r in rows]
    ax.barh(labels, values, color=colors)
    for y, (value, row) in enumerate(zip(values, rows)):
        ax.text(value, y, f" {value:,.0f}  (MFU {row['mfu']:.0%})", va="center", fontsize=8)
    trainer_best = max((r["tokens_per_second"] for r in rows if r["loop"] == "trainer"), default=None)
    if trainer_best:
        ax.axvline(1.5 * trainer_best, color="#c0392b", linestyle="--", label="target: 1.5 × the fastest Trainer")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)  # below: bars and labels fill the axes
    ax.invert_yaxis()
    ax.set_xlabel("training tokens / s (higher is better)")
    ax.set_title(f"Pretraining throughput ({threads} threads)")
    ax.set_xlim(0, max(values) * 1.35)


def run_one(name, args, settings) -> dict | None:
    """One variant in a fresh process (no precision, compile or allocator state shared with the others), on the
    variant's allocator."""
    import os

    from pocketlm.allocator import chosen_library, with_allocator
    from pocketlm.training.throughput import VARIANTS_BY_NAME

    library = chosen_library() if VARIANTS_BY_NAME[name].allocator == "tcmalloc" else None
    command = [sys.executable, __file__, "--run_one", name, "--steps", str(args.steps), "--warmup_steps",
               str(args.warmup_steps), "--threads", str(args.threads), "--data_dir", str(settings.data_dir),
               "--output_dir", str(args.output_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env=with_allocator(os.environ, library))
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        print(f"{name}: failed\n{result.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1].removeprefix("RESULT "))


def vars_for_json(args) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "run_one"}


if __name__ == "__main__":
    run(main, tcmalloc=True)
