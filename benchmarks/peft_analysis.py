"""PEFT analysis in one run: trainable parameters, macro-F1 and training time (3 seeds, with and without AWP +
mixout), training memory, and inference latency with LoRA merged / unmerged / with adapters.

    python benchmarks/peft_analysis.py            # ≤ 30 min on a 2-core CPU

Writes `peft_analysis.json`, `peft_analysis.md` and `peft_analysis.png` under
`benchmarks/results/peft_analysis/`. To fit the CPU budget each run trains on a seeded subset of SST-2's
train split for a fixed number of epochs (no early stopping) and is scored on the whole validation split;
the tables say so. The published model (`training_scripts/finetune_classifier.py --preset full`) trains on
all of it (6,920 sentences, 2 epochs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pocketlm.cli import run
from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.settings import REPO_ROOT

METHODS = ("full", "lora", "adapters", "lora+adapters")
LEARNING_RATES = {"full": 5e-5, "lora": 1e-3, "adapters": 1e-3, "lora+adapters": 1e-3}
"""Full fine-tuning at the reference recipe's rate; PEFT at the much higher rate small added weights want."""
REGIMES = {"plain": dict(awp_eps=0.0, mixout_p=0.0), "AWP + mixout": dict(awp_eps=0.01, mixout_p=0.1)}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_samples", type=int, default=640,
                        help="seeded subset of the train split per run (640 × 2 epochs × 24 runs fits 30 CPU-minutes)")
    parser.add_argument("--epochs", type=float, default=2, help="epochs per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads for training and latency")
    parser.add_argument("--latency_repeats", type=int, default=30)
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "peft_analysis"))
    return parser.parse_args(argv)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def train_once(method, regime, seed, splits, names, tokenizer, args, workdir):
    from transformers import TrainingArguments, set_seed

    from pocketlm.models.peft_classifier import ClassifierSpec, build_classifier
    from pocketlm.training.classifier import RegularisationArguments, build_trainer

    settings = REGIMES[regime]
    set_seed(seed)
    model = build_classifier(ClassifierSpec(method=method, mixout_p=settings["mixout_p"]), names)
    training_args = TrainingArguments(
        output_dir=str(workdir), per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=64,
        learning_rate=LEARNING_RATES[method], num_train_epochs=args.epochs, warmup_steps=0.06, weight_decay=0.01,
        train_sampling_strategy="group_by_length", eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        seed=seed, disable_tqdm=True, use_cpu=True,
    )
    trainer = build_trainer(model, tokenizer, training_args, splits["train"], splits["validation"], names,
                            RegularisationArguments(awp_eps=settings["awp_eps"], early_stopping_patience=0))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    scores = trainer.evaluate()
    return model, {"method": method, "regime": regime, "seed": seed, "f1_macro": scores["eval_f1_macro"],
                   "accuracy": scores["eval_accuracy"], "train_seconds": seconds, "awp_steps": trainer.awp_steps,
                   "optimizer_steps": trainer.state.global_step}


def worst_case_batch(tokenizer, texts, batch_size, length=128):
    """`batch_size` of the longest texts, padded to `length` tokens: the activation-memory worst case."""
    longest = sorted(texts, key=len, reverse=True)[:batch_size]
    batch = tokenizer(longest, truncation=True, max_length=length, padding="max_length", return_tensors="pt")
    batch["labels"] = torch.zeros(batch_size, dtype=torch.long)
    return batch


@torch.inference_mode()
def median_latency_ms(model, batch, repeats: int) -> float:
    model.eval()
    for _ in range(3):
        model(**batch)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model(**batch)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def latency_variants(models: dict):
    """(name, model) pairs for the latency table: LoRA unmerged and merged, adapters (never merged), full FT."""
    import copy

    if "full" in models:
        yield "full fine-tuning (plain BERT)", models["full"]
    if "lora" in models:
        yield "LoRA, unmerged", models["lora"]
        yield "LoRA, merged", copy.deepcopy(models["lora"]).merge_and_unload()
    if "adapters" in models:
        yield "adapters (cannot merge)", models["adapters"]
    if "lora+adapters" in models:
        yield "LoRA + adapters, unmerged", models["lora+adapters"]
        yield "LoRA + adapters, LoRA merged", copy.deepcopy(models["lora+adapters"]).merge_and_unload()


def plan_4gb_gpu(tokenizer, texts, names, small: int = 2, large: int = 6) -> list[dict]:
    """Per-device batch × accumulation for an effective batch of 32 on a 4 GB GPU (fp16), from measured memory.

    Activations are measured at two batch sizes: the slope is the cost per example, the intercept (autocast's
    half-precision copies of the weights) joins the fixed part. Besides the MiniLM, the DistilBERT-base and
    BERT-base geometries (random weights: only the shapes matter) show where accumulation becomes necessary.
    """
    from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig

    from pocketlm.models.peft_classifier import ClassifierSpec, build_classifier, prepare_classifier
    from pocketlm.training.memory import MiB, batch_plan, saved_activation_bytes, training_memory

    def inputs(n):
        batch = worst_case_batch(tokenizer, texts, n)
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}  # DistilBERT: no token types

    plans = []
    for label, config in (("MiniLM-L6-H384 (this model)", None), ("DistilBERT-base geometry", DistilBertConfig()),
                          ("BERT-base geometry", BertConfig())):
        for method in ("full", "lora+adapters"):
            spec = ClassifierSpec(method=method, mixout_p=0.0)
            if config is None:
                model = build_classifier(spec, names)
            else:
                config.num_labels = len(names)
                model = prepare_classifier(AutoModelForSequenceClassification.from_config(config), spec)
            at_small = training_memory(model, inputs(small), torch.bfloat16)
            per_example = (saved_activation_bytes(model, inputs(large), torch.bfloat16) - at_small.activations) / (large - small)
            fixed = at_small.total - small * per_example
            plans.append({"model": label, "method": method, "fixed_mib": round(fixed / MiB),
                          "activation_mib_per_example": round(per_example / MiB, 1), **batch_plan(fixed, per_example)})
    return plans


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from pocketlm import BASE_ENCODER
    from pocketlm.data.classification import ClassificationDataArguments, load_tokenized_splits, padding_collator
    from pocketlm.data.registry import load_classification
    from pocketlm.hub import resolve
    from pocketlm.models.peft_classifier import ClassifierSpec, build_classifier, parameter_counts
    from pocketlm.training.memory import training_memory

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve(BASE_ENCODER))
    splits, names = load_tokenized_splits(ClassificationDataArguments(max_train_samples=args.train_samples), tokenizer)
    benchmark_started = time.perf_counter()

    runs, trained = [], {}
    with tempfile.TemporaryDirectory(prefix="peft-analysis-") as workdir:
        for method in args.methods:
            for regime in REGIMES:
                for seed in args.seeds:
                    model, record = train_once(method, regime, seed, splits, names, tokenizer, args, workdir)
                    runs.append(record)
                    print(f"{method:14s} {regime:13s} seed {seed}: macro-F1 {record['f1_macro']:.4f}, "
                          f"{record['train_seconds']:.0f} s", flush=True)
                    if regime == "plain" and seed == args.seeds[0]:
                        trained[method] = model

    summary, parameters, memory = [], {}, {}
    train_texts = load_classification("sst2", "train")["text"]
    for method in args.methods:
        model = build_classifier(ClassifierSpec(method=method, mixout_p=0.0), names)
        trainable, total = parameter_counts(model)
        parameters[method] = {"trainable": trainable, "total": total, "percent": 100 * trainable / total}
        batch = worst_case_batch(tokenizer, train_texts, args.batch_size)
        memory[method] = {"fp32": training_memory(model, batch).as_mib(),
                          "half (bf16 autocast ≈ fp16 on GPU)": training_memory(model, batch, torch.bfloat16).as_mib()}
        for regime in REGIMES:
            chosen = [r for r in runs if r["method"] == method and r["regime"] == regime]
            f1, f1_std = mean_std([r["f1_macro"] for r in chosen])
            seconds, seconds_std = mean_std([r["train_seconds"] for r in chosen])
            summary.append({"method": method, "regime": regime, "f1_macro_mean": f1, "f1_macro_std": f1_std,
                            "train_seconds_mean": seconds, "train_seconds_std": seconds_std, "seeds": len(chosen)})

    gpu_plan = plan_4gb_gpu(tokenizer, train_texts, names)

    collate = padding_collator(tokenizer)
    validation = splits["validation"].remove_columns("labels")
    one = collate([validation[0]])
    many = collate([validation[i] for i in range(args.batch_size)])
    latency = [{"variant": name, "batch_1_ms": median_latency_ms(model, one, args.latency_repeats),
                "batch_32_ms": median_latency_ms(model, many, max(5, args.latency_repeats // 3))}
               for name, model in latency_variants(trained)]

    results = {
        "threads": args.threads, "torch": torch.__version__,
        "setup": {"train_samples": args.train_samples, "epochs": args.epochs, "seeds": args.seeds, "batch_size": args.batch_size,
                  "learning_rates": {m: LEARNING_RATES[m] for m in args.methods}, "validation_examples": len(splits["validation"]),
                  "batch_1_tokens": int(one["input_ids"].shape[1]), "batch_32_tokens": int(many["input_ids"].shape[1])},
        "parameters": parameters, "summary": summary, "runs": runs, "memory_mib": memory, "gpu_4gb_plan": gpu_plan,
        "latency": latency,
        "benchmark_seconds": time.perf_counter() - benchmark_started,
    }
    write_results("peft_analysis", results, render_markdown(results), figures=figures(results),
                  plot=lambda figure: plot(results, figure), output_dir=output_dir)
    print(render_markdown(results))
    return 0


def render_markdown(results: dict) -> str:
    setup = results["setup"]
    methods = [{**row, "trainable": results["parameters"][row["method"]]["trainable"],
                "percent": f"{results['parameters'][row['method']]['percent']:.2f} %",
                "f1": f"{row['f1_macro_mean']:.4f} ± {row['f1_macro_std']:.4f}",
                "seconds": f"{row['train_seconds_mean']:.0f} ± {row['train_seconds_std']:.0f}"} for row in results["summary"]]
    memory = [{"method": method, "precision": precision, **m}
              for method, by_precision in results["memory_mib"].items() for precision, m in by_precision.items()]
    plan = [{**p, "split": f"{p['per_device_batch']} × {p['gradient_accumulation_steps']}"} for p in results["gpu_4gb_plan"]]
    return "\n".join([
        "# PEFT analysis: MiniLM (all-MiniLM-L6-v2) on SST-2",
        "",
        f"Each run: a seeded {setup['train_samples']:,}-sentence subset of the train split, {setup['epochs']:g} epochs, batch "
        f"{setup['batch_size']}, no early stopping; macro-F1 on the whole validation split ({setup['validation_examples']} "
        f"sentences); mean ± std over seeds {', '.join(map(str, setup['seeds']))}. Learning rates: "
        + ", ".join(f"{m} {lr:g}" for m, lr in setup["learning_rates"].items())
        + f". AWP ε=0.01 in the second half of each epoch, mixout p=0.1 on the head. {results['threads']} threads; "
        f"the whole analysis took {results['benchmark_seconds'] / 60:.1f} min.",
        "",
        markdown_table(methods, [("method", "method"), ("trainable", "trainable parameters"), ("percent", "% of the model"),
                                 ("regime", "regime"), ("f1", "macro-F1 (validation)"), ("seconds", "training time (s)")],
                       {"trainable": ","}),
        f"Training memory at the worst case: batch {setup['batch_size']} × 128 tokens (MiB; weights + gradients + "
        "AdamW state from the parameter counts, activations saved for backward measured with autograd hooks):",
        "",
        markdown_table(memory, [("method", "method"), ("precision", "precision"), ("weights", "weights"), ("gradients", "gradients"),
                                ("optimizer_state", "optimiser"), ("activations", "activations"), ("total", "total")], ".1f"),
        "Fitting a 4 GB GPU (fp16, `accelerate_configs/single_gpu_4gb.yaml`) at an effective batch of 32 and 128-token "
        "worst-case padding: weights + gradients + AdamW (fixed) and activations per example measured as above in half "
        "precision; 3.5 GiB usable, 25 % headroom on activations:",
        "",
        markdown_table(plan, [("model", "model"), ("method", "method"), ("fixed_mib", "fixed (MiB)"),
                              ("activation_mib_per_example", "activations / example (MiB)"),
                              ("largest_batch_that_fits", "largest batch that fits"), ("split", "per-device batch × accumulation"),
                              ("estimated_peak_mib", "estimated peak (MiB)")], {"activation_mib_per_example": ".1f"}),
        f"Inference latency (median ms; batch 1 = one validation sentence of {setup['batch_1_tokens']} tokens, "
        f"batch 32 = 32 sentences padded to {setup['batch_32_tokens']} tokens):",
        "",
        markdown_table(results["latency"], [("variant", "variant"), ("batch_1_ms", "batch 1 (ms)"), ("batch_32_ms", "batch 32 (ms)")],
                       {"batch_1_ms": ".2f", "batch_32_ms": ".1f"}),
    ])


def figures(results: dict) -> dict[str, str]:
    """Per method and regime: macro-F1, share of trainable parameters, training time; latency; the total time."""
    lines = {}
    for row in results["summary"]:
        p = results["parameters"][row["method"]]
        lines[f"{row['method']}, {row['regime']}"] = (
            f"macro-F1 {row['f1_macro_mean']:.4f} ± {row['f1_macro_std']:.4f} over {row['seeds']} seeds, "
            f"{p['trainable']:,} trainable parameters ({p['percent']:.2f} %), {row['train_seconds_mean']:.0f} s training")
    for row in results["latency"]:
        lines[f"latency, {row['variant']}"] = f"{row['batch_1_ms']:.2f} ms at batch 1, {row['batch_32_ms']:.1f} ms at batch 32"
    lines["the whole analysis"] = f"{results['benchmark_seconds'] / 60:.1f} min"
    return lines


def plot(results: dict, figure) -> None:
    figure.set_size_inches(13, 4.5)
    f1_ax, latency_ax = figure.subplots(1, 2)
    methods = list(results["parameters"])
    width = 0.38
    for offset, regime in zip((-width / 2, width / 2), REGIMES):
        rows = [next(r for r in results["summary"] if r["method"] == m and r["regime"] == regime) for m in methods]
        f1_ax.bar([i + offset for i in range(len(methods))], [r["f1_macro_mean"] for r in rows], width,
                  yerr=[r["f1_macro_std"] for r in rows], capsize=4, label=regime)
    f1_ax.set_xticks(range(len(methods)),
                     [f"{m}\n{results['parameters'][m]['percent']:.2f} % trainable" for m in methods])
    low = min(r["f1_macro_mean"] - r["f1_macro_std"] for r in results["summary"])
    f1_ax.set_ylim(max(0.0, low - 0.05), 1.0)
    f1_ax.set_ylabel("macro-F1 (validation)")
    f1_ax.set_title("SST-2 macro-F1, mean ± std over seeds")
    f1_ax.legend()
    variants = [row["variant"] for row in results["latency"]]
    latency_ax.barh(variants, [row["batch_32_ms"] for row in results["latency"]], color="tab:green")
    latency_ax.invert_yaxis()
    latency_ax.set_xlabel("median latency, batch 32 (ms)")
    latency_ax.set_title(f"inference latency ({results['threads']} threads)")


if __name__ == "__main__":
    run(main)
