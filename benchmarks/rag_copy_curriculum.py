"""Does teaching the generator to copy help the RAG answers? Copy accuracy and dev-loop EM/F1 of the generator, LoRA alone against copy curriculum + LoRA, over seeds.

    python benchmarks/rag_copy_curriculum.py --workers 3          # tiny-lm, quick-preset pairs, seeds 0,1,2
    python benchmarks/rag_copy_curriculum.py --preset smoke       # seconds: the whole path, for tests

Runs `pocketlm.rag.lora_finetune.run_experiment` twice on the same pairs — the LoRA alone (as the demo trains
it), then the copy curriculum (`pocketlm.rag.copy_curriculum`, full fine-tuning) followed by the same LoRA — and
scores every seed's generator on the RAG dev set through `pocketlm.rag.evaluate_loop.evaluate_loop`, the loop
evaluation itself (hybrid retrieval, `--dev_k` fragments, greedy answers): generative EM/F1, next to each model's
copy accuracy (`copy_accuracy`: random tokens shown twice) and its EM/F1 on the held-out training-style pairs.
Each (arm, seed) is one job (`--workers` run side by side, in their own processes). Writes
benchmarks/results/rag_copy_curriculum/rag_copy_curriculum.{json,md,png}.
"""

from __future__ import annotations

import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from pocketlm import RAG_INDEX
from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.cli import parse_args_with_presets, run
from pocketlm.rag.evaluate_loop import LoopEvalConfig, evaluate_loop
from pocketlm.rag.lora_finetune import LoraExperimentConfig, run_experiment
from pocketlm.settings import data_dir, runs_dir

DEV = data_dir() / "squad-rag-dev"  # $POCKETLM_DATA_DIR, else the data mirror beside the repository
PRESETS = {
    "quick": {"train_pairs": 200, "eval_pairs": 50, "max_articles": 12, "held_out_fraction": 0.25, "num_train_epochs": 2.0,
              "copy_steps": 200},
    "smoke": {"train_pairs": 4, "eval_pairs": 4, "max_articles": 2, "held_out_fraction": 0.5, "seeds": "0",
              "num_train_epochs": 1.0, "per_device_train_batch_size": 2, "learning_rate": 2e-2, "copy_steps": 2,
              "copy_batch_size": 4, "dev_questions": 4},
}
ARMS = {"LoRA alone": False, "copy curriculum + LoRA": True}


@dataclass
class DevArguments:
    dev_passages: str = field(default=str(DEV / "passages.jsonl"), metadata={"help": "passages.jsonl of the dev loop"})
    dev_qa: str = field(default=str(DEV / "qa.jsonl"), metadata={"help": "qa.jsonl of the dev loop"})
    dev_questions: int = field(default=0, metadata={"help": "score only the first N dev questions (0: all)"})
    dev_k: int = field(default=3, metadata={"help": "fragments per dev question"})
    query_adapter: str = field(default=RAG_INDEX, metadata={"help": "query adapter of the dev retrieval (a folder, an index id, or 'none')"})
    results_dir: str | None = field(default=None, metadata={"help": "where the record goes (default: benchmarks/results/rag_copy_curriculum)"})
    workers: int = field(default=1, metadata={"help": "(arm, seed) jobs run side by side, each in its own process"})


def dev_scores(dev: DevArguments, lora_folder: Path, lora_base: str, output_dir: Path) -> dict:
    """Generative EM/F1 of one seed's generator (its LoRA merged onto its base) through the loop evaluation."""
    config = LoopEvalConfig(passages=dev.dev_passages, qa=dev.dev_qa, query_adapter=dev.query_adapter, reader="none",
                            generator_lora=str(lora_folder), generator_base=lora_base, k=dev.dev_k,
                            max_questions=dev.dev_questions, output_dir=str(output_dir))
    results = evaluate_loop(config)
    return {"exact_match": results["readers"]["generative"]["exact_match"], "f1": results["readers"]["generative"]["f1"],
            "questions": results["qa"]["count"], "recall@5": results["retrieval"]["recall@5"]}


def fill_embedding_cache(config: LoraExperimentConfig, dev: DevArguments) -> None:
    """Encode the pairs' and the dev set's passages once, before the jobs start: they all read the same embeddings
    (`encode(..., cache=True)`), and side by side each would otherwise compute them itself."""
    from pocketlm.hub import resolve
    from pocketlm.rag.corpus import read_passages_and_questions
    from pocketlm.rag.embeddings import encode, load_encoder
    from pocketlm.rag.generator import ANSWER_TOKENS, MAX_CONTEXT, load_tokenizer
    from pocketlm.rag.lora_finetune import make_pairs

    make_pairs(config, load_tokenizer(resolve(config.model_name_or_path)), MAX_CONTEXT - ANSWER_TOKENS)
    passages, _ = read_passages_and_questions(dev.dev_passages, dev.dev_qa)
    encode(load_encoder("minilm"), [p.text for p in passages], show_progress=True, cache=True)


def run_arm(name: str, config: LoraExperimentConfig, dev: DevArguments) -> list[dict]:
    """One arm's experiment, then each seed's dev-loop scores: a row per seed."""
    summary = run_experiment(config, repo_id=None)
    rows = []
    for run_ in summary["after"]:
        seed_dir = Path(config.output_dir) / f"seed-{run_['seed']}"
        dev_result = dev_scores(dev, seed_dir / "lora", run_["lora_base"], seed_dir / "dev")
        rows.append({
            "arm": name, "seed": run_["seed"], "copy_accuracy": run_["copy_accuracy"],
            "copy_accuracy_before_lora": (run_["copy_base"] or summary["before"])["copy_accuracy"],
            "held_out_exact_match": run_["exact_match"], "held_out_f1": run_["f1"],
            "dev_exact_match": dev_result["exact_match"], "dev_f1": dev_result["f1"],
            "dev_questions": dev_result["questions"], "dev_recall@5": dev_result["recall@5"],
        })
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per arm: the mean over seeds and the spread (max - min) of copy accuracy and dev F1."""
    out = []
    for arm in ARMS:
        group = [r for r in rows if r["arm"] == arm]
        entry = {"arm": arm, "seeds": len(group)}
        for key in ("copy_accuracy", "dev_exact_match", "dev_f1", "held_out_f1"):
            values = [r[key] for r in group]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_spread"] = max(values) - min(values)
        out.append(entry)
    return out


def main(args: list[str] | None = None) -> int:
    config, dev = parse_args_with_presets((LoraExperimentConfig, DevArguments), PRESETS, "quick", args, description=__doc__)
    if dev.workers < 1:
        raise SystemExit("error: --workers must be at least 1")
    root = Path(config.output_dir or runs_dir() / "rag-copy-curriculum")
    jobs = [(name, replace(config, seeds=str(seed), copy_steps=config.copy_steps if with_copy else 0,
                           output_dir=str(root / ("copy-lora" if with_copy else "lora") / f"seed-{seed}")))
            for seed in config.seed_list() for name, with_copy in ARMS.items()]
    fill_embedding_cache(config, dev)
    # spawn: each job starts clean and imports only what it needs; jobs share nothing but the embedding cache
    with ProcessPoolExecutor(dev.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_arm, name, job_config, dev) for name, job_config in jobs]
        rows = [row for future in futures for row in future.result()]
    summary = summarise(rows)
    columns = ["arm", "seed", "copy_accuracy_before_lora", "copy_accuracy", "held_out_exact_match", "held_out_f1", "dev_exact_match", "dev_f1"]
    formats = {c: ".3f" if "copy" in c else ".1f" for c in columns[2:]}
    markdown = (
        f"# Copy curriculum before the RAG LoRA\n\nBase `{config.model_name_or_path}`; LoRA rank {config.rank} on "
        f"{config.train_pairs} pairs, {config.num_train_epochs:g} epochs; copy curriculum {config.copy_steps} steps "
        f"(batch {config.copy_batch_size}, learning rate {config.copy_learning_rate:g}). Dev: {rows[0]['dev_questions']} "
        f"questions of {dev.dev_qa}, top {dev.dev_k} fragments.\n\n## Per seed\n\n"
        + markdown_table(rows, columns, formats)
        + "\n## Mean over seeds (spread: max - min)\n\n"
        + markdown_table(summary, ["arm", "seeds", "copy_accuracy", "copy_accuracy_spread", "dev_exact_match", "dev_f1", "dev_f1_spread"],
                         {"copy_accuracy": ".3f", "copy_accuracy_spread": ".3f", "dev_exact_match": ".1f", "dev_f1": ".1f", "dev_f1_spread": ".1f"})
    )
    alone, copied = summary
    figures = {
        "copy accuracy, LoRA alone (mean of seeds)": f"{alone['copy_accuracy']:.3f}",
        "copy accuracy, copy curriculum + LoRA (mean of seeds)": f"{copied['copy_accuracy']:.3f}",
        "dev generative EM / F1, LoRA alone": f"{alone['dev_exact_match']:.1f} / {alone['dev_f1']:.1f}",
        "dev generative EM / F1, copy curriculum + LoRA": f"{copied['dev_exact_match']:.1f} / {copied['dev_f1']:.1f}",
        "dev F1 spread over seeds (LoRA alone / copy + LoRA)": f"{alone['dev_f1_spread']:.1f} / {copied['dev_f1_spread']:.1f}",
    }
    write_results("rag_copy_curriculum", {"config": asdict(config), "dev": asdict(dev), "runs": rows, "summary": summary},
                  markdown, figures=figures, plot=lambda figure: plot(figure, rows), output_dir=dev.results_dir)
    print(markdown)
    return 0


def plot(figure, rows: list[dict]) -> None:
    """Copy accuracy and dev F1 per seed, one bar group per arm."""
    for position, (key, label) in enumerate([("copy_accuracy", "copy accuracy"), ("dev_f1", "dev generative F1")], 1):
        axis = figure.add_subplot(1, 2, position)
        for offset, arm in enumerate(ARMS):
            group = [r for r in rows if r["arm"] == arm]
            axis.bar([r["seed"] + 0.4 * offset for r in group], [r[key] for r in group], width=0.4, label=arm)
        axis.set_xlabel("seed")
        axis.set_title(label)
        axis.legend()


if __name__ == "__main__":
    run(main)
