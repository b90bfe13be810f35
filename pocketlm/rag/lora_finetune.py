"""The generator-LoRA experiment: build SQuAD-train RAG pairs, fine-tune over several seeds, measure, publish.

Pairs: questions of SQuAD *train* (never the dev/evaluation questions), each with its top-k fragments
retrieved by the frozen MiniLM from the paragraphs of the same articles (a flat FAISS index), cropped to
the generator's context the way the chain crops them. Held-out pairs come from articles kept out of training.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pocketlm import TINY_LM, TINY_LM_RAG_LORA
from pocketlm.benchmarking import markdown_table
from pocketlm.errors import ConfigError
from pocketlm.hub import ModelCardInfo, publish, resolve
from pocketlm.io import write_json
from pocketlm.rag.corpus import squad_train_set, split_by_title
from pocketlm.rag.embeddings import encode, load_encoder
from pocketlm.rag.evaluation import answer_report
from pocketlm.rag.generator import (
    ANSWER_TOKENS,
    LoraTrainingConfig,
    RagPair,
    build_rag_pairs,
    context_length,
    finetune_lora,
    gain_over_seeds,
    load_tokenizer,
    save_lora,
    score_generator,
    write_pairs,
)
from pocketlm.rag.index import IndexSpec, PassageIndex
from pocketlm.settings import runs_dir


@dataclass
class LoraExperimentConfig:
    model_name_or_path: str = field(default=TINY_LM, metadata={"help": "base causal LM: pocketlm/tiny-lm (default), gpt2, any causal LM id or path"})
    train_pairs: int = field(default=500, metadata={"help": "training pairs"})
    eval_pairs: int = field(default=300, metadata={"help": "held-out pairs for ROUGE-L before/after (at 100, which pairs are drawn moves a seed's score about as much as the effect)"})
    max_articles: int = field(default=0, metadata={"help": "use only this many SQuAD-train articles (0: all 44)"})
    held_out_fraction: float = field(default=0.15, metadata={"help": "share of the articles kept for held-out pairs"})
    k: int = field(default=2, metadata={"help": "fragments per prompt"})
    ensure_gold: bool = field(default=True, metadata={"help": "put the gold paragraph among the fragments when retrieval missed it"})
    seeds: str = field(default="0,1,2", metadata={"help": "comma-separated training seeds; the first one's LoRA is published"})
    rank: int = field(default=4, metadata={"help": "LoRA rank"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    num_train_epochs: float = field(default=5.0)
    learning_rate: float = field(default=2e-3)
    per_device_train_batch_size: int = field(default=8)
    encoder: str = field(default="minilm", metadata={"help": "encoder retrieving the fragments of the pairs"})
    output_dir: str | None = field(default=None, metadata={"help": "runs folder (default: $POCKETLM_RUNS_DIR/rag-lora)"})

    def seed_list(self) -> list[int]:
        try:
            seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds must be comma-separated integers, not {self.seeds!r}") from None
        if not seeds:
            raise ConfigError("--seeds names no seed")
        return seeds


def make_pairs(config: LoraExperimentConfig, tokenizer, max_prompt_tokens: int) -> tuple[list[RagPair], list[RagPair], dict]:
    """Training and held-out pairs, and a description of how they were made."""
    data = squad_train_set()
    titles = sorted(set(data.titles))
    if config.max_articles:
        titles = sorted(random.Random(0).sample(titles, min(config.max_articles, len(titles))))
    chosen = set(titles)
    rows = [i for i, t in enumerate(data.titles) if t in chosen]
    train_local, held_local = split_by_title([data.titles[i] for i in rows], config.held_out_fraction, seed=0)
    rng = random.Random(0)
    train_rows = rng.sample([rows[i] for i in train_local], len(train_local))
    held_rows = rng.sample([rows[i] for i in held_local], len(held_local))

    passage_rows = sorted({data.positives[i] for i in rows})
    passages = [data.passages[r] for r in passage_rows]
    encoder = load_encoder(config.encoder)
    index = PassageIndex.build(encode(encoder, [p.text for p in passages], show_progress=True, cache=True), passages, IndexSpec("flat"), config.encoder)

    def pairs_for(candidates: list[int], wanted: int, seed: int) -> tuple[list[RagPair], int]:
        budget = min(len(candidates), int(wanted * 1.5) + 10)  # a few pairs get dropped by cropping
        picked = candidates[:budget]
        _, hits = index.search(encode(encoder, [data.questions[i] for i in picked], cache=True), config.k)
        retrieved = [[passage_rows[h] for h in row if h >= 0] for row in hits]
        pairs, dropped = build_rag_pairs(data, picked, retrieved, tokenizer, max_prompt_tokens, config.ensure_gold, seed)
        return pairs[:wanted], dropped

    train_pairs, train_dropped = pairs_for(train_rows, config.train_pairs, seed=1)
    eval_pairs, eval_dropped = pairs_for(held_rows, config.eval_pairs, seed=2)
    if len(train_pairs) < config.train_pairs or len(eval_pairs) < config.eval_pairs:
        raise ConfigError(
            f"only {len(train_pairs)} training / {len(eval_pairs)} held-out pairs could be built from {len(titles)} articles; "
            "raise --max_articles or lower --train_pairs / --eval_pairs"
        )
    info = {
        "articles": len(titles),
        "held_out_articles": len({data.titles[i] for i in held_rows}),
        "passages": len(passages),
        "dropped_by_cropping": {"train": train_dropped, "held_out": eval_dropped},
    }
    return train_pairs, eval_pairs, info


def evaluate_answers(model, tokenizer, pairs: list[RagPair]) -> tuple[dict[str, float], list[str]]:
    """ROUGE-L, EM and F1 of greedy answers to the pairs' prompts, the copy accuracy, and the answers."""
    scores, predictions = score_generator(model, tokenizer, pairs)
    return {**scores, **answer_report(predictions, [[p.answer] for p in pairs])}, predictions


def run_experiment(config: LoraExperimentConfig, repo_id: str | None = TINY_LM_RAG_LORA, push_to_hub: bool = False, token: str | None = None) -> dict:
    """Fine-tune one LoRA per seed, measure ROUGE-L before/after on held-out pairs, publish the first seed's."""
    from transformers import AutoModelForCausalLM

    seeds = config.seed_list()
    output_dir = Path(config.output_dir or runs_dir() / "rag-lora")
    base_path = resolve(config.model_name_or_path)
    tokenizer = load_tokenizer(base_path)
    base = AutoModelForCausalLM.from_pretrained(base_path)
    max_prompt_tokens = context_length(base) - ANSWER_TOKENS
    train_pairs, eval_pairs, data_info = make_pairs(config, tokenizer, max_prompt_tokens)
    write_pairs(output_dir / "pairs.json", train_pairs, eval_pairs)
    before, before_predictions = evaluate_answers(base, tokenizer, eval_pairs)
    print(f"before fine-tuning: ROUGE-L {before['rougeL']:.4f} on {len(eval_pairs)} held-out pairs", flush=True)

    runs, published_model = [], None
    for seed in seeds:
        training = LoraTrainingConfig(
            rank=config.rank, alpha=config.alpha, num_train_epochs=config.num_train_epochs,
            learning_rate=config.learning_rate, per_device_train_batch_size=config.per_device_train_batch_size, seed=seed,
        )
        model, tokenizer, history = finetune_lora(base_path, train_pairs, eval_pairs, training, output_dir / f"seed-{seed}")
        after, predictions = evaluate_answers(model, tokenizer, eval_pairs)
        print(f"seed {seed}: ROUGE-L {after['rougeL']:.4f}", flush=True)
        runs.append({"seed": seed, **after, "final_eval_loss": next((r["eval_loss"] for r in reversed(history) if "eval_loss" in r), None),
                     "examples": [{"question": p.question, "answer": p.answer, "before": b, "after": a}
                                  for p, b, a in list(zip(eval_pairs, before_predictions, predictions))[:5]]})
        if published_model is None:
            published_model = model

    afters = [r["rougeL"] for r in runs]
    summary = {
        "config": asdict(config),
        "base_model": config.model_name_or_path,
        "data": data_info,
        "pairs": {"train": len(train_pairs), "held_out": len(eval_pairs)},
        "before": before,
        "after": runs,
        "rougeL_before": before["rougeL"],
        "rougeL_after_median": statistics.median(afters),
        **gain_over_seeds(before["rougeL"], afters),
    }
    table_rows = [{"model": "base (no LoRA)", "seed": "-", **before}] + [{"model": "base + LoRA", **r} for r in runs]
    table = markdown_table(table_rows, ["model", "seed", "rougeL", "exact_match", "f1", "copy_accuracy"],
                           {"exact_match": ".1f", "f1": ".1f", "rougeL": ".4f", "copy_accuracy": ".3f"})
    summary["table"] = table
    write_json(output_dir / "results.json", summary)
    (output_dir / "results.md").write_text(table)
    if repo_id:
        _publish(repo_id, published_model, tokenizer, config, summary, table, push_to_hub, token)
    return summary


def _publish(repo_id, model, tokenizer, config, summary, table, push_to_hub, token) -> Path:
    seeds = config.seed_list()

    def save(folder: Path) -> None:
        save_lora(model, tokenizer, folder, config.model_name_or_path)
        write_json(folder / "lora_results.json", {k: v for k, v in summary.items() if k != "table"})

    card = ModelCardInfo(
        title=f"{config.model_name_or_path} + RAG LoRA (rank {config.rank})",
        summary=(
            f"A rank-{config.rank} LoRA on every attention projection of `{config.model_name_or_path}`, fine-tuned on "
            f"{summary['pairs']['train']} (question + {config.k} retrieved fragments → answer) pairs built from SQuAD v1.1 "
            f"train, in the prompt layout of pocketlm's RAG chain. ROUGE-L on {summary['pairs']['held_out']} pairs from "
            f"held-out articles: {summary['rougeL_before']:.4f} before, {summary['rougeL_after_mean']:.4f} after "
            f"(mean of seeds {config.seeds}; spread {summary['rougeL_seed_spread']:.4f}). This folder holds seed {seeds[0]}'s LoRA."
        ),
        how_to_load=(
            "from pocketlm.rag.generator import load_generator\n\n"
            f"model, tokenizer, _ = load_generator({repo_id!r})  # base + merged LoRA\n"
            "# or with peft: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path)"
        ),
        pipeline_tag="text-generation",
        eval_dataset="rajpurkar/squad",
        eval_dataset_name="SQuAD v1.1 train, held-out articles (RAG pairs)",
        eval_split="train",
        metrics={
            "rougeL_before": summary["rougeL_before"],
            "rougeL_after": summary["rougeL_after_mean"],
            "rougeL_gain": summary["rougeL_gain"],
            "rougeL_seed_spread": summary["rougeL_seed_spread"],
        },
        datasets=["rajpurkar/squad"],
        base_model=config.model_name_or_path,
        library_name="peft",
        tags=["lora", "rag", "peft"],
        sections={
            "ROUGE-L before and after, per seed": table,
            "Training": (
                f"LoRA rank {config.rank}, alpha {config.alpha}, dropout 0.05 on the attention projections; "
                f"{config.num_train_epochs:g} epochs, learning rate {config.learning_rate:g} (cosine), batch "
                f"{config.per_device_train_batch_size}; loss on the answer tokens only; greedy decoding of at most "
                f"{ANSWER_TOKENS} tokens for evaluation. Data: {summary['data']}."
            ),
        },
    )
    return publish(repo_id, save, card, push_to_hub=push_to_hub, token=token)
