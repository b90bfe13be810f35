"""Sweep the generator LoRA's learning rate and epochs over seeds: where does the ROUGE-L gain beat the seed spread?

    python training_scripts/run_lora_finetune.py --repo_id ''     # writes $POCKETLM_RUNS_DIR/rag-lora/pairs.json
    python benchmarks/rag_lora_sweep.py --pairs $POCKETLM_RUNS_DIR/rag-lora/pairs.json --workers 3   # GPU: minutes

Trains one rank-4 LoRA per (learning rate, epochs, seed) on exactly the pairs the experiment script built (its
`pairs.json`), and scores greedy answers on its held-out pairs with ROUGE-L, as `run_lora_finetune.py` does.
It also reports the copy accuracy (`pocketlm.rag.lora_finetune.copy_accuracy`) before and after: whether the
model can quote from its context at all. Writes benchmarks/results/rag_lora_sweep/rag_lora_sweep.{json,md,png}.
On 2 CPU cores one run of 5 epochs takes ~6 min; the default grid is meant for a GPU (`--workers` runs
several trainings side by side, which a launch-bound tiny model on one GPU allows).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from pocketlm import TINY_LM
from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.hub import resolve
from pocketlm.rag.generator import load_base
from pocketlm.rag.lora_finetune import LoraTrainingConfig, finetune_lora, gain_over_seeds, read_pairs, score_generator
from pocketlm.settings import REPO_ROOT


def parse_floats(flag: str, text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag} must be comma-separated numbers, not {text!r}") from None
    if not values or min(values) <= 0:
        raise SystemExit(f"{flag} needs positive numbers, got {text!r}")
    return values


def train_and_score(base_path: str, pairs_path: str, learning_rate: float, epochs: float, seed: int, run_dir: str) -> dict:
    """One LoRA run (in its own process): ROUGE-L and copy accuracy on the held-out pairs, and the wall time."""
    train, held_out = read_pairs(pairs_path)
    started = time.perf_counter()
    config = LoraTrainingConfig(num_train_epochs=epochs, learning_rate=learning_rate, seed=seed, save_checkpoints=False)
    model, tokenizer, history = finetune_lora(base_path, train, held_out, config, run_dir)
    scores, _ = score_generator(model, tokenizer, held_out, batch_size=32)
    return {
        "learning_rate": learning_rate, "epochs": epochs, "seed": seed, **scores,
        "eval_loss": next((r["eval_loss"] for r in reversed(history) if "eval_loss" in r), None),
        "seconds": time.perf_counter() - started,
    }


def summarise(runs: list[dict], before: float) -> list[dict]:
    """Per (learning rate, epochs): mean ROUGE-L, its gain over the base model, the spread over seeds, copy accuracy."""
    rows = []
    for (lr, epochs), group in itertools.groupby(sorted(runs, key=lambda r: (r["learning_rate"], r["epochs"], r["seed"])),
                                                  key=lambda r: (r["learning_rate"], r["epochs"])):
        group = list(group)
        scores = [r["rougeL"] for r in group]
        rows.append({"learning_rate": lr, "epochs": epochs, "seeds": len(scores), **gain_over_seeds(before, scores),
                     "rougeL_per_seed": " / ".join(f"{s:.3f}" for s in scores),
                     "copy_accuracy_mean": statistics.mean(r["copy_accuracy"] for r in group)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True, help="pairs.json written by run_lora_finetune.py")
    parser.add_argument("--model_name_or_path", default=TINY_LM)
    parser.add_argument("--learning_rates", default="1e-3,2e-3,5e-3")
    parser.add_argument("--epochs", default="2,5,10,20")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=1, help="trainings run side by side (processes)")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "rag_lora_sweep"))
    args = parser.parse_args(argv)
    if not Path(args.pairs).is_file():
        raise SystemExit(f"--pairs {args.pairs}: no such file (run training_scripts/run_lora_finetune.py first)")
    if args.workers < 1:
        raise SystemExit(f"--workers must be at least 1, got {args.workers}")
    learning_rates, epochs = parse_floats("--learning_rates", args.learning_rates), parse_floats("--epochs", args.epochs)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--seeds must be comma-separated integers, not {args.seeds!r}") from None

    base_path = resolve(args.model_name_or_path)
    _, held_out = read_pairs(args.pairs)
    model, tokenizer = load_base(base_path)
    base_scores, _ = score_generator(model, tokenizer, held_out, batch_size=32)
    baseline, base_copy = base_scores["rougeL"], base_scores["copy_accuracy"]
    print(f"base model: ROUGE-L {baseline:.4f} on {len(held_out)} held-out pairs, copy accuracy {base_copy:.3f}", flush=True)

    grid = list(itertools.product(learning_rates, epochs, seeds))
    runs_dir = Path(args.output_dir) / "runs"
    # spawn: each run starts clean (CUDA cannot be forked), and imports only what a training needs
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(train_and_score, base_path, args.pairs, lr, ep, seed, str(runs_dir / f"lr{lr:g}-ep{ep:g}-seed{seed}"))
                   for lr, ep, seed in grid]
        runs = []
        for future in futures:
            runs.append(future.result())
            r = runs[-1]
            print(f"lr {r['learning_rate']:g} epochs {r['epochs']:g} seed {r['seed']}: ROUGE-L {r['rougeL']:.4f}, "
                  f"copy {r['copy_accuracy']:.3f} ({r['seconds']:.0f} s)", flush=True)

    rows = summarise(runs, baseline)
    markdown = (
        f"Base `{args.model_name_or_path}`: ROUGE-L {baseline:.4f} on {len(held_out)} held-out pairs, copy accuracy "
        f"{base_copy:.3f}.\n\n"
        + markdown_table(rows, [("learning_rate", "learning rate"), ("epochs", "epochs"), ("rougeL_after_mean", "ROUGE-L (mean)"),
                                ("rougeL_per_seed", "per seed"), ("rougeL_gain", "gain"), ("rougeL_seed_spread", "seed spread"),
                                ("gain_exceeds_spread", "gain > spread"), ("copy_accuracy_mean", "copy accuracy")])
    )

    def plot(figure) -> None:
        ax = figure.add_subplot(1, 1, 1)
        for lr in learning_rates:
            mine = [r for r in rows if r["learning_rate"] == lr]
            line = ax.plot([r["epochs"] for r in mine], [r["rougeL_gain"] for r in mine], "o-", label=f"gain, lr {lr:g}")[0]
            ax.plot([r["epochs"] for r in mine], [r["rougeL_seed_spread"] for r in mine], "x--", color=line.get_color(), label=f"spread, lr {lr:g}")
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(xlabel="epochs", ylabel="ROUGE-L", title=f"generator LoRA on {args.model_name_or_path}: mean gain vs seed spread")
        ax.legend(fontsize=8)

    results = {"model": args.model_name_or_path, "pairs": args.pairs, "held_out_pairs": len(held_out), "rougeL_before": baseline,
               "copy_accuracy_before": base_copy, "configs": rows, "runs": runs}
    wins = sum(r["gain_exceeds_spread"] for r in rows)
    figures = {"base model": f"ROUGE-L {baseline:.4f} on {len(held_out)} held-out pairs, copy accuracy {base_copy:.3f}",
               **{f"lr {r['learning_rate']:g}, {r['epochs']:g} epochs": (
                   f"ROUGE-L {r['rougeL_after_mean']:.4f} (gain {r['rougeL_gain']:+.4f}, seed spread {r['rougeL_seed_spread']:.4f}), "
                   f"copy accuracy {r['copy_accuracy_mean']:.3f}") for r in rows},
               "settings where the gain exceeds the seed spread": f"{wins} of {len(rows)}"}
    write_results("rag_lora_sweep", results, markdown, figures=figures, plot=plot, output_dir=args.output_dir)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
