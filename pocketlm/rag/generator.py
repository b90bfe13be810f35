"""The RAG generator: a causal LM (pocketlm's tiny LM by default) with a rank-4 LoRA on its attention layers.

It is fine-tuned on (question + retrieved fragments → answer) pairs built from SQuAD *train*, in exactly the
prompt layout the LangChain chain uses (`pocketlm.rag.prompt`), and judged by ROUGE-L (`rouge-score`)
on pairs from held-out articles, before and after.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pocketlm import TINY_LM, TINY_LM_RAG_LORA
from pocketlm.hub import ArtifactNotFoundError, resolve
from pocketlm.io import write_json
from pocketlm.rag.corpus import Passage, SquadTrainSet
from pocketlm.rag.prompt import Fragment, fit_fragments, render_prompt

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MAX_CONTEXT = 384
"""Longest prompt + answer we train and generate with, even for models that accept more (tiny-lm, gpt2: 1024):
2 cropped fragments fit, and it keeps a LoRA epoch on 500 pairs to minutes on 2 CPU cores."""
ANSWER_TOKENS = 24


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt that fits the model's context, and the cropped fragments and kept history it shows."""

    text: str
    fragments: list[Fragment]
    history: list[tuple[str, str]]


@dataclass(frozen=True)
class RagPair:
    question: str
    fragments: tuple[Fragment, ...]
    answer: str
    prompt: str


def context_length(model) -> int:
    return min(int(getattr(model.config, "max_position_embeddings", MAX_CONTEXT) or MAX_CONTEXT), MAX_CONTEXT)


def build_prompt(
    tokenizer: "PreTrainedTokenizerBase",
    question: str,
    fragments: Sequence[Fragment],
    history: Sequence[tuple[str, str]] = (),
    max_prompt_tokens: int = MAX_CONTEXT - ANSWER_TOKENS,
) -> FittedPrompt:
    """Render the prompt with each fragment cropped so that the whole prompt fits `max_prompt_tokens`.

    History that leaves fewer than 24 tokens per fragment is dropped, oldest exchange first.
    """

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    history = list(history)
    while True:
        skeleton = render_prompt(question, [Fragment(f.id, f.title, "") for f in fragments], history)
        room = max_prompt_tokens - count(skeleton) - 2 * len(fragments)
        if not fragments or room // len(fragments) >= 24 or not history:
            break
        history.pop(0)
    per_fragment = max(room // max(len(fragments), 1), 8)
    cropped = fit_fragments(fragments, question, per_fragment, count)
    return FittedPrompt(render_prompt(question, cropped, history), cropped, history)


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


def load_tokenizer(model_path: str) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:  # gpt2 has none; padding never reaches the loss (labels -100, masked)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(model_name_or_path: str = TINY_LM) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    from transformers import AutoModelForCausalLM

    path = resolve(model_name_or_path)
    return AutoModelForCausalLM.from_pretrained(path), load_tokenizer(path)


def lora_model(model: "PreTrainedModel", rank: int = 4, alpha: int = 16, dropout: float = 0.05):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=attention_target_modules(model), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, config)


def load_generator(lora: str | None = TINY_LM_RAG_LORA, base: str | None = None):
    """The generator for the chain: base LM + merged LoRA. Without a published LoRA, the base LM alone.

    Returns (model, tokenizer, description). `base` defaults to the model the LoRA was trained from;
    `lora=None` or `"none"` gives the base LM alone.
    """
    from peft import PeftConfig, PeftModel

    if lora and lora.lower() == "none":
        lora = None
    lora_path = None
    if lora:
        try:
            lora_path = resolve(lora)
        except ArtifactNotFoundError:
            if lora != TINY_LM_RAG_LORA:  # an explicit LoRA that is missing is an error; the default is optional
                raise
    if lora_path is None:
        model, tokenizer = load_base(base or TINY_LM)
        return model.eval(), tokenizer, f"{base or TINY_LM} (no LoRA)"
    base = base or PeftConfig.from_pretrained(lora_path).base_model_name_or_path
    model, tokenizer = load_base(base)
    model = PeftModel.from_pretrained(model, lora_path).merge_and_unload()
    return model.eval(), tokenizer, f"{base} + LoRA {lora}"


def clean_answer(text: str) -> str:
    """The first line of a generation, trimmed: the model answers on one line, then may ramble."""
    return text.strip().split("\n", 1)[0].strip()


def generate_answers(model, tokenizer, prompts: Sequence[str], batch_size: int = 8, max_new_tokens: int = ANSWER_TOKENS) -> list[str]:
    """Greedy answers to `prompts`, batched with left padding."""
    import torch

    answers = []
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # continue every prompt from its last real token
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False,
            return_token_type_ids=False,
        ).to(model.device)
        with torch.inference_mode():
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.extend(clean_answer(t) for t in texts)
    tokenizer.padding_side = side
    return answers


def gain_over_seeds(before: float, afters: Sequence[float]) -> dict[str, float | bool]:
    """The issue's test of a fine-tuning: the mean gain over the base model against the seed spread (max - min)."""
    mean = float(np.mean(afters))
    gain, spread = mean - before, max(afters) - min(afters)
    return {"rougeL_after_mean": mean, "rougeL_gain": gain, "rougeL_seed_spread": spread, "gain_exceeds_spread": gain > spread}


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (rouge-score, Porter stemming): `evaluate.load("rouge")` would fetch from the Hub."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return float(np.mean(scores)) if scores else 0.0


def write_pairs(path: Path, train_pairs: list[RagPair], eval_pairs: list[RagPair]) -> None:
    """The exact prompts and answers trained and evaluated on, for inspection and for `benchmarks/rag_lora_sweep.py`."""
    write_json(path, {"train": [asdict(p) for p in train_pairs], "held_out": [asdict(p) for p in eval_pairs]})


def read_pairs(path: str | Path) -> tuple[list[RagPair], list[RagPair]]:
    data = json.loads(Path(path).read_text())

    def pair(row: dict) -> RagPair:
        return RagPair(row["question"], tuple(Fragment(**f) for f in row["fragments"]), row["answer"], row["prompt"])

    return [pair(r) for r in data["train"]], [pair(r) for r in data["held_out"]]


def copy_accuracy(model, vocab_size: int, length: int = 40, sequences: int = 16, seed: int = 0) -> float:
    """Top-1 accuracy on the second half of random token sequences shown twice (the induction-head test).

    A model that can copy from its context (induction heads) scores near 1; one that cannot scores near 0,
    and then no fine-tuning on a few hundred pairs will make it quote answer spans from retrieved fragments.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(min(100, vocab_size // 2), vocab_size, (sequences, length), generator=generator)
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


def save_lora(peft_model, tokenizer, folder: str | Path, base_model_id: str) -> None:
    """Write the LoRA (safetensors + adapter_config.json naming the base by its id) and the tokenizer."""
    peft_model.peft_config["default"].base_model_name_or_path = base_model_id
    peft_model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)  # LoRA leaves embeddings as they are
    tokenizer.save_pretrained(folder)


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
    from transformers.trainer_utils import get_last_checkpoint

    from pocketlm.training.callbacks import MetricsWriterCallback

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
    last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    return model.eval(), tokenizer, trainer.state.log_history
