"""Fine-tuning the RAG generator's LoRA: pairs, the peft LoRA and its `Trainer` run, scores, the experiment.

The generator (pocketlm's tiny LM by default) gets a rank-4 LoRA on its attention projections, fine-tuned on
(question + retrieved fragments → answer) pairs in exactly the prompt layout the chain answers with
(`pocketlm.rag.generator.build_prompt`), and judged by ROUGE-L (`rouge-score`) on pairs from held-out
articles, before and after.

With `copy_steps`, each seed first fully fine-tunes the base on the copy curriculum
(`pocketlm.rag.copy_curriculum`) and trains its LoRA on that model instead.

Pairs: questions of SQuAD *train* (never the dev/evaluation questions), each with its top-k fragments
retrieved by the frozen MiniLM from the paragraphs of the same articles (a flat FAISS index), cropped to
the generator's context the way the chain crops them. Held-out pairs come from articles kept out of training.
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pocketlm import TINY_LM, TINY_LM_COPY, TINY_LM_RAG_LORA
from pocketlm.benchmarking import markdown_table
from pocketlm.errors import ConfigError
from pocketlm.hub import ArtifactNotFoundError, ModelCardInfo, publish, resolve
from pocketlm.io import write_dir, write_json
from pocketlm.rag.corpus import Passage, SquadTrainSet, split_by_title, squad_train_set
from pocketlm.rag.embeddings import encode, load_encoder
from pocketlm.rag.evaluation import answer_report
from pocketlm.rag.generator import ANSWER_TOKENS, build_prompt, context_length, generate_answers, load_tokenizer
from pocketlm.rag.index import IndexSpec, PassageIndex
from pocketlm.rag.prompt import Fragment
from pocketlm.settings import runs_dir
from pocketlm.training.distributed import process_state

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


# ---------------------------------------------------------------- pairs, LoRA, training, scores

@dataclass(frozen=True)
class RagPair:
    question: str
    fragments: tuple[Fragment, ...]
    answer: str
    prompt: str


def build_rag_pairs(
    train_set: SquadTrainSet,
    question_rows: Sequence[int],
    retrieved: np.ndarray,
    tokenizer: "PreTrainedTokenizerBase",
    max_prompt_tokens: int,
    ensure_gold: bool = True,
    seed: int = 0,
) -> tuple[list[RagPair], int]:
    """(question + retrieved fragments → answer) pairs; returns them and how many were dropped.

    `retrieved[i]` holds the passage rows retrieved for `question_rows[i]`, best first. With `ensure_gold`,
    the gold paragraph replaces the last retrieved one when retrieval missed it, and the fragments are put
    in a seeded random order (so the model learns to find the answer, not to trust position 1). A pair is
    dropped when cropping to the token budget cut its answer out.
    """
    rng = random.Random(seed)
    pairs, dropped = [], 0
    for row, hits in zip(question_rows, retrieved):
        gold = train_set.positives[row]
        rows = [int(h) for h in hits if h >= 0]
        if ensure_gold and gold not in rows:
            rows[-1] = gold
        if ensure_gold:
            rng.shuffle(rows)
        fragments = [_fragment(train_set.passages[r]) for r in rows]
        question, answer = train_set.questions[row], train_set.answers[row]
        fitted = build_prompt(tokenizer, question, fragments, max_prompt_tokens=max_prompt_tokens)
        if not any(answer in f.text for f in fitted.fragments):
            dropped += 1
            continue
        pairs.append(RagPair(question, tuple(fitted.fragments), answer, fitted.text))
    return pairs, dropped


def _fragment(passage: Passage) -> Fragment:
    return Fragment(passage.id, passage.title, passage.text)


def tokenize_pairs(pairs: Sequence[RagPair], tokenizer: "PreTrainedTokenizerBase") -> list[dict]:
    """Input ids of prompt + " answer" + EOS; labels are -100 on the prompt, so only the answer is learnt."""
    features = []
    for pair in pairs:
        prompt_ids = tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(" " + pair.answer, add_special_tokens=False)["input_ids"][: ANSWER_TOKENS - 1]
        answer_ids.append(tokenizer.eos_token_id)
        features.append(
            {
                "input_ids": prompt_ids + answer_ids,
                "attention_mask": [1] * (len(prompt_ids) + len(answer_ids)),
                "labels": [-100] * len(prompt_ids) + answer_ids,
            }
        )
    return features


def write_pairs(path: Path, train_pairs: list[RagPair], eval_pairs: list[RagPair]) -> None:
    """The exact prompts and answers trained and evaluated on, for inspection and for `benchmarks/rag_lora_sweep.py`."""
    write_json(path, {"train": [asdict(p) for p in train_pairs], "held_out": [asdict(p) for p in eval_pairs]})


def read_pairs(path: str | Path) -> tuple[list[RagPair], list[RagPair]]:
    data = json.loads(Path(path).read_text())

    def pair(row: dict) -> RagPair:
        return RagPair(row["question"], tuple(Fragment(**f) for f in row["fragments"]), row["answer"], row["prompt"])

    return [pair(r) for r in data["train"]], [pair(r) for r in data["held_out"]]


def attention_target_modules(model: "torch.nn.Module") -> str:
    """A peft `target_modules` regex naming every linear projection inside the attention blocks.

    Written out because peft's per-architecture defaults cover only part of them (Llama: `q_proj`, `v_proj`)
    and a plain suffix list would also catch MLP layers that share a name (GPT-2's `c_proj`).
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and re.search(r"(^|\.)(self_)?(attn|attention)(\.|$)", name)
    ]
    if not names:
        raise ArtifactNotFoundError(f"found no attention projections in {type(model).__name__}")
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def lora_model(model: "PreTrainedModel", rank: int = 4, alpha: int = 16, dropout: float = 0.05):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=attention_target_modules(model), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


@dataclass
class LoraTrainingConfig:
    rank: int = 4
    alpha: int = 16
    dropout: float = 0.05
    num_train_epochs: float = 5.0
    learning_rate: float = 2e-3
    per_device_train_batch_size: int = 8
    logging_steps: int = 10
    seed: int = 0
    save_checkpoints: bool = True
    """A checkpoint per epoch, so an interrupted run resumes; sweeps that rerun from scratch switch it off."""


def finetune_lora(
    model_path: str,
    train_pairs: Sequence[RagPair],
    eval_pairs: Sequence[RagPair],
    config: LoraTrainingConfig,
    output_dir: str | Path,
):
    """Fine-tune a rank-`config.rank` LoRA on the attention projections with transformers' `Trainer`.

    Only the answer tokens carry a loss. Evaluates the held-out loss each epoch, writes metrics and curves
    into `output_dir` (`MetricsWriterCallback`) and resumes from the last checkpoint there if one exists.
    Returns the trained peft model, its tokenizer and the Trainer's log history.
    """
    import datasets
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from pocketlm.training.callbacks import MetricsWriterCallback
    from pocketlm.training.checkpoints import newest_complete_checkpoint

    set_seed(config.seed)
    tokenizer = load_tokenizer(model_path)
    model = lora_model(AutoModelForCausalLM.from_pretrained(model_path), config.rank, config.alpha, config.dropout)
    output_dir = Path(output_dir)
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=config.num_train_epochs,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=0.06,  # a fraction of the steps (transformers 5)
        logging_steps=config.logging_steps,
        eval_strategy="epoch",
        save_strategy="epoch" if config.save_checkpoints else "no",
        save_total_limit=1,
        seed=config.seed,
        report_to=[],
        disable_tqdm=False,
    )  # the GPU when there is one (fp32: the tiny LM is launch-bound there, half precision buys nothing)
    tokenizer.padding_side = "right"  # training: positions count from the first token, as in pretraining
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(tokenize_pairs(train_pairs, tokenizer)),
        eval_dataset=datasets.Dataset.from_list(tokenize_pairs(eval_pairs, tokenizer)),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[MetricsWriterCallback(output_dir, title=f"generator LoRA (seed {config.seed})")],
    )
    trainer.train(resume_from_checkpoint=newest_complete_checkpoint(output_dir))
    return model.eval(), tokenizer, trainer.state.log_history


def save_lora(peft_model, tokenizer, folder: str | Path, base_model_id: str) -> None:
    """Write the LoRA (safetensors + adapter_config.json naming the base by its id) and the tokenizer."""
    peft_model.peft_config["default"].base_model_name_or_path = base_model_id
    peft_model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)  # LoRA leaves embeddings as they are
    tokenizer.save_pretrained(folder)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (rouge-score, Porter stemming): `evaluate.load("rouge")` would fetch from the Hub."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return float(np.mean(scores)) if scores else 0.0


def copy_token_range(vocab_size: int) -> tuple[int, int]:
    """The token ids random copy sequences are drawn from: above the special and byte tokens of a BPE vocabulary."""
    return min(100, vocab_size // 2), vocab_size


def copy_accuracy(model, vocab_size: int, length: int = 40, sequences: int = 16, seed: int = 0) -> float:
    """Top-1 accuracy on the second half of random token sequences shown twice (the induction-head test).

    A model that can copy from its context (induction heads) scores near 1; one that cannot scores near 0,
    and then no fine-tuning on a few hundred pairs will make it quote answer spans from retrieved fragments.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(*copy_token_range(vocab_size), (sequences, length), generator=generator)
    ids = torch.cat([first, first], dim=1).to(model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    predicted = logits[:, length:-1].argmax(-1)  # predictions for tokens length+1 .. 2*length-1: all copies
    return float((predicted == ids[:, length + 1 :]).float().mean())


def score_generator(model, tokenizer, pairs: Sequence[RagPair], batch_size: int = 8) -> tuple[dict[str, float], list[str]]:
    """ROUGE-L of greedy answers to the pairs' prompts and the model's copy accuracy; and the answers."""
    predictions = generate_answers(model, tokenizer, [p.prompt for p in pairs], batch_size=batch_size)
    scores = {"rougeL": rouge_l(predictions, [p.answer for p in pairs]), "copy_accuracy": copy_accuracy(model, model.config.vocab_size)}
    return scores, predictions


def gain_over_seeds(before: float, afters: Sequence[float]) -> dict[str, float | bool]:
    """The issue's test of a fine-tuning: the mean gain over the base model against the seed spread (max - min)."""
    mean = float(np.mean(afters))
    gain, spread = mean - before, max(afters) - min(afters)
    return {"rougeL_after_mean": mean, "rougeL_gain": gain, "rougeL_seed_spread": spread, "gain_exceeds_spread": gain > spread}



# ---------------------------------------------------------------- the experiment


@dataclass
class LoraExperimentConfig:
    model_name_or_path: str = field(default=TINY_LM, metadata={"aliases": ["--base"], "help": "base causal LM: pocketlm/tiny-lm (default), gpt2, any causal LM id or path"})
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
    copy_steps: int = field(default=0, metadata={"help": "steps of the copy curriculum (full fine-tuning, pocketlm.rag.copy_curriculum) before each seed's LoRA; 0: none"})
    copy_learning_rate: float = field(default=1e-3, metadata={"help": "learning rate of the copy curriculum"})
    copy_batch_size: int = field(default=16, metadata={"help": "batch size of the copy curriculum"})
    encoder: str = field(default="minilm", metadata={"help": "encoder retrieving the fragments of the pairs"})
    output_dir: str | None = field(default=None, metadata={"help": "runs folder (default: $POCKETLM_RUNS_DIR/rag-lora)"})

    def __post_init__(self):
        if self.copy_steps < 0:
            raise ConfigError(f"--copy_steps must be >= 0 (0: no copy curriculum), not {self.copy_steps}")
        if self.copy_steps and (self.copy_batch_size < 1 or not self.copy_learning_rate > 0):
            raise ConfigError("--copy_batch_size must be >= 1 and --copy_learning_rate > 0")

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


def train_copy_base(config: LoraExperimentConfig, base_path: str, seed: int, run_dir: Path) -> tuple[str, dict]:
    """The copy curriculum for one seed (`pocketlm.rag.copy_curriculum`), saved in `run_dir/copy-base`.

    Returns the saved model's folder and its copy accuracy. A folder left by an earlier run is reused, so an
    interrupted experiment resumes without training it again. Under `accelerate launch` every process trains
    (the `Trainer` splits the batches), the main one saves, and the others wait for the folder their LoRA loads.
    """
    from transformers import AutoModelForCausalLM

    from pocketlm.rag.copy_curriculum import CopyCurriculumConfig, save_model, train_copy_curriculum
    from pocketlm.rag.corpus import wikitext_distractors

    folder = run_dir / "copy-base"
    if (folder / "model.safetensors").is_file():
        model = AutoModelForCausalLM.from_pretrained(folder)
    else:
        curriculum = CopyCurriculumConfig(steps=config.copy_steps, learning_rate=config.copy_learning_rate,
                                          batch_size=config.copy_batch_size, fragments=config.k, seed=seed)
        model, tokenizer, _ = train_copy_curriculum(base_path, wikitext_distractors(), curriculum, run_dir / "copy")
        state = process_state()
        if state.is_main_process:
            write_dir(folder, lambda staging: save_model(model, tokenizer, staging))  # whole or not at all: resume trusts it
        state.wait_for_everyone()
    return str(folder), {"copy_accuracy": copy_accuracy(model.eval(), model.config.vocab_size)}


def train_seed(config: LoraExperimentConfig, base_path: str, train_pairs, eval_pairs, seed: int, run_dir: Path):
    """One seed: the copy curriculum when `config.copy_steps`, then the LoRA on top, scored on the held-out pairs.

    Each seed's LoRA is also saved in `run_dir/lora` (its base: the seed's copy-trained model, or the base).
    Returns the scores, the peft model, its tokenizer, its answers and the LoRA's base folder.
    """
    state = process_state()
    lora_base, copy_scores = base_path, None
    if config.copy_steps:
        lora_base, copy_scores = train_copy_base(config, base_path, seed, run_dir)
        state.print(f"seed {seed}: copy accuracy {copy_scores['copy_accuracy']:.3f} after the copy curriculum", flush=True)
    training = LoraTrainingConfig(
        rank=config.rank, alpha=config.alpha, num_train_epochs=config.num_train_epochs,
        learning_rate=config.learning_rate, per_device_train_batch_size=config.per_device_train_batch_size, seed=seed,
    )
    model, tokenizer, history = finetune_lora(lora_base, train_pairs, eval_pairs, training, run_dir)
    after, predictions = evaluate_answers(model, tokenizer, eval_pairs)
    if state.is_main_process:
        save_lora(model, tokenizer, run_dir / "lora", lora_base)
    state.print(f"seed {seed}: ROUGE-L {after['rougeL']:.4f}", flush=True)
    scores = {"seed": seed, **after, "final_eval_loss": next((r["eval_loss"] for r in reversed(history) if "eval_loss" in r), None),
              "lora_base": lora_base, "copy_base": copy_scores}
    return scores, model, tokenizer, predictions


def run_experiment(config: LoraExperimentConfig, repo_id: str | None = TINY_LM_RAG_LORA, push_to_hub: bool = False,
                   token: str | None = None, copy_repo_id: str | None = TINY_LM_COPY) -> dict:
    """Per seed: the copy curriculum (when `config.copy_steps`) and a LoRA; ROUGE-L, EM/F1 and copy accuracy
    before/after on held-out pairs. Publishes the first seed's LoRA (and its copy-trained base as `copy_repo_id`).

    Under `accelerate launch` (several processes) the `Trainer` runs split the batches across the processes;
    every process builds the same pairs and scores the held-out ones itself (greedy decoding: the same answers,
    and no process waits on another's), and only the main one writes results, checkpoints' LoRAs and artifacts.
    """
    from transformers import AutoModelForCausalLM

    from pocketlm.training.checkpoints import claim_run_dir, weights_fingerprint

    seeds = config.seed_list()
    output_dir = Path(config.output_dir or runs_dir() / "rag-lora")
    base_path = resolve(config.model_name_or_path)
    tokenizer = load_tokenizer(base_path)
    settings = {k: v for k, v in asdict(config).items() if k not in ("seeds", "output_dir")}  # seeds may be added
    state = process_state()  # this process's place in an `accelerate launch` (one process when run by python)
    claim_run_dir(output_dir, {"base model weights": weights_fingerprint(base_path), "settings": settings})
    base = AutoModelForCausalLM.from_pretrained(base_path)
    max_prompt_tokens = context_length(base) - ANSWER_TOKENS
    train_pairs, eval_pairs, data_info = make_pairs(config, tokenizer, max_prompt_tokens)
    if state.is_main_process:
        write_pairs(output_dir / "pairs.json", train_pairs, eval_pairs)
    before, before_predictions = evaluate_answers(base, tokenizer, eval_pairs)
    state.print(f"before fine-tuning: ROUGE-L {before['rougeL']:.4f}, copy accuracy {before['copy_accuracy']:.3f} "
          f"on {len(eval_pairs)} held-out pairs", flush=True)

    runs, published_model = [], None
    for seed in seeds:
        run, model, tokenizer, predictions = train_seed(config, base_path, train_pairs, eval_pairs, seed, output_dir / f"seed-{seed}")
        run["examples"] = [{"question": p.question, "answer": p.answer, "before": b, "after": a}
                           for p, b, a in list(zip(eval_pairs, before_predictions, predictions))[:5]]
        runs.append(run)
        published_model = published_model or model

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
    tuned = "base + copy curriculum + LoRA" if config.copy_steps else "base + LoRA"
    table_rows = [{"model": "base (no LoRA)", "seed": "-", **before}] + [{"model": tuned, **r} for r in runs]
    table = markdown_table(table_rows, ["model", "seed", "rougeL", "exact_match", "f1", "copy_accuracy"],
                           {"exact_match": ".1f", "f1": ".1f", "rougeL": ".4f", "copy_accuracy": ".3f"})
    summary["table"] = table
    if not state.is_main_process:
        return summary
    write_json(output_dir / "results.json", summary)
    (output_dir / "results.md").write_text(table)
    if repo_id:
        lora_base_id = config.model_name_or_path
        if config.copy_steps:
            lora_base_id = copy_repo_id or runs[0]["lora_base"]
            if copy_repo_id:
                _publish_copy_base(copy_repo_id, runs[0], config, summary, push_to_hub, token)
        _publish(repo_id, published_model, tokenizer, config, summary, table, push_to_hub, token, lora_base_id)
    return summary


def _publish_copy_base(repo_id: str, run: dict, config: LoraExperimentConfig, summary: dict, push_to_hub, token) -> Path:
    """The first seed's copy-trained model, under its own id: the base its published LoRA names."""
    import shutil

    copy_accuracy_after = run["copy_base"]["copy_accuracy"]
    card = ModelCardInfo(
        title=f"{config.model_name_or_path} + copy curriculum",
        summary=(
            f"`{config.model_name_or_path}` fully fine-tuned for {config.copy_steps} steps on a copy curriculum "
            "(random sequences shown twice, and spans copied from WikiText fragments in pocketlm's RAG prompt layout), "
            f"so that it can quote its context: copy accuracy {summary['before']['copy_accuracy']:.3f} before, "
            f"{copy_accuracy_after:.3f} after. The base of pocketlm's RAG generator LoRA."
        ),
        how_to_load=f"from transformers import AutoModelForCausalLM\n\nmodel = AutoModelForCausalLM.from_pretrained(path_of({repo_id!r}))",
        pipeline_tag="text-generation",
        eval_dataset="wikitext",
        eval_dataset_name="random token sequences shown twice (copy accuracy)",
        eval_split="synthetic",
        metrics={"copy_accuracy_before": summary["before"]["copy_accuracy"], "copy_accuracy": copy_accuracy_after},
        base_model=config.model_name_or_path,
        tags=["copy-curriculum", "rag"],
    )
    source = Path(run["lora_base"])
    return publish(repo_id, lambda folder: shutil.copytree(source, folder, dirs_exist_ok=True), card, push_to_hub=push_to_hub, token=token)


def _publish(repo_id, model, tokenizer, config, summary, table, push_to_hub, token, base_id: str) -> Path:
    seeds = config.seed_list()

    def save(folder: Path) -> None:
        save_lora(model, tokenizer, folder, base_id)
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
