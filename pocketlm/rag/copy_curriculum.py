"""A copy curriculum for the RAG generator: full fine-tuning that teaches a small causal LM to quote its context.

The RAG LoRA asks the generator to answer "with a short span copied from the fragments"; a model without
induction heads (tiny-lm after minutes of pretraining: `copy_accuracy` 0) cannot, whatever the LoRA learns.
So before the LoRA, the whole model is fine-tuned for a few hundred steps on two kinds of examples, mixed:

- **repeated sequences**: random tokens shown twice, the loss on the second copy only — the task on which
  induction heads form (`copy_accuracy` measures it on other random draws);
- **span copies** in the RAG prompt layout (`build_prompt`, the chain's own): WikiText paragraphs as fragments,
  one of them holding the answer, a question-like cue made from one of its sentences ("... played at what in
  Santa Clara?", or 'What comes after "played at"?'), and the answer a span copied from that sentence.

Full fine-tuning rather than a second LoRA: copying needs new attention circuits across layers (a head that
looks at the previous token, feeding one that looks for "the token after the earlier occurrence"), and a
rank-4 LoRA on a 5M-parameter model has little room for them next to the QA behaviour it must also hold. Training
all 5M weights for a few hundred short steps costs CPU-minutes; the result is saved as a model of its own, and
the RAG LoRA is then trained on top of it (`pocketlm.rag.lora_finetune.run_experiment`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pocketlm.rag.corpus import Passage
from pocketlm.rag.generator import build_prompt, load_tokenizer
from pocketlm.rag.lora_finetune import RagPair, copy_token_range, tokenize_pairs
from pocketlm.rag.prompt import Fragment

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_STRIP = "\"'()[],.;:!?"
_YEAR = re.compile(r"1\d{3}|20\d{2}")


@dataclass
class CopyCurriculumConfig:
    steps: int = 300
    """Optimizer steps; every example is seen once (steps × batch_size examples are built)."""
    learning_rate: float = 1e-3
    batch_size: int = 16
    repeat_fraction: float = 0.4
    """Share of repeated-sequence examples; the rest are span copies."""
    repeat_lengths: tuple[int, int] = (8, 48)
    """Shortest and longest random sequence (each is shown twice)."""
    fragments: int = 2
    """Fragments per span-copy prompt (the answer's paragraph and distractors), as in the LoRA's pairs."""
    max_prompt_tokens: int = 192
    """Span-copy prompts are cropped shorter than the chain's (360): copying is learnt as well on short
    contexts, and training stays at CPU-minutes."""
    seed: int = 0


@dataclass(frozen=True)
class Cue:
    """A question-like cue about one sentence and the answer span it asks for (a substring of the sentence)."""

    question: str
    answer: str
    kind: str  # "cloze" or "continuation"


def _candidate_spans(words: Sequence[str]) -> list[tuple[int, int]]:
    """Word ranges SQuAD-like answers look like: runs of capitalised words or numbers, not sentence-initial."""
    spans, start = [], None
    for i, word in enumerate([*words, ""]):
        core = word.strip(_STRIP)
        if i > 0 and core and (core[0].isupper() or core[0].isdigit()):
            start = i if start is None else start
            if word[-1:] in ",.;:)\"'":  # punctuation closes the run
                spans.append((start, i + 1))
                start = None
        elif start is not None:
            spans.append((start, i))
            start = None
    return [(s, min(e, s + 4)) for s, e in spans]


def make_cue(sentence: str, rng: random.Random) -> Cue | None:
    """A cue whose answer is a span of `sentence`: a name or number when there is one, else 1-3 words.

    Cloze cues (7 in 10) put a question word where the span was, between up to 6 words either side;
    continuation cues quote the 2-4 words before the span. None when the sentence is too short.
    """
    words = sentence.split()
    if len(words) < 6:
        return None
    named = _candidate_spans(words)
    if named and rng.random() < 0.7:
        start, end = rng.choice(named)
    else:
        start = rng.randrange(2, len(words) - 1)
        end = min(len(words), start + rng.randint(1, 3))
    answer = " ".join(words[start:end]).strip(_STRIP)
    if not answer or answer not in sentence:
        return None
    if rng.random() < 0.7:
        wh = "what year" if _YEAR.fullmatch(answer) else "how many" if answer.replace(",", "").isdigit() else "what"
        left, right = words[max(0, start - 6) : start], words[end : end + 6]
        question = " ".join([*left, wh, *right]).rstrip(_STRIP) + "?"
        return Cue(question[0].upper() + question[1:], answer, "cloze")
    left = " ".join(words[max(0, start - rng.randint(2, 4)) : start]).strip(_STRIP)
    return Cue(f'What comes after "{left}"?', answer, "continuation") if left else None


def span_copy_pairs(
    passages: Sequence[Passage],
    count: int,
    tokenizer: "PreTrainedTokenizerBase",
    max_prompt_tokens: int,
    fragments: int = 2,
    seed: int = 0,
) -> list[RagPair]:
    """`count` span-copy examples as `RagPair`s, so they train exactly like the QA pairs (`tokenize_pairs`).

    Each shows the answer's paragraph among `fragments - 1` others in a seeded order, cropped to the budget by
    `build_prompt`; an example whose answer sentence was cropped away is redrawn.
    """
    if len(passages) < fragments:
        raise ValueError(f"span copies need at least {fragments} passages, got {len(passages)}")
    rng = random.Random(seed)
    pairs, attempts = [], 0
    while len(pairs) < count:
        attempts += 1
        if attempts > 20 * count + 100:
            raise ValueError(f"could build only {len(pairs)} of {count} span-copy examples from {len(passages)} passages")
        source = rng.choice(passages)
        cue = make_cue(rng.choice(_SENTENCE_END.split(source.text.strip())), rng)
        if cue is None:
            continue
        others = rng.sample([p for p in passages if p.id != source.id], fragments - 1) if fragments > 1 else []
        shown = [Fragment(p.id, p.title, p.text) for p in [source, *others]]
        rng.shuffle(shown)
        fitted = build_prompt(tokenizer, cue.question, shown, max_prompt_tokens=max_prompt_tokens)
        kept = next(f for f in fitted.fragments if f.id == source.id)
        if cue.answer not in kept.text:
            continue
        pairs.append(RagPair(cue.question, tuple(fitted.fragments), cue.answer, fitted.text))
    return pairs


def repeated_sequence_features(vocab_size: int, count: int, lengths: tuple[int, int] = (8, 48), seed: int = 0) -> list[dict]:
    """Random token sequences shown twice; labels only on the second copy after its first token (the first is
    not predictable). Tokens are drawn from the range `copy_accuracy` uses, with another generator."""
    rng = random.Random(seed)
    low, high = copy_token_range(vocab_size)
    features = []
    for _ in range(count):
        sequence = [rng.randrange(low, high) for _ in range(rng.randint(*lengths))]
        ids = sequence + sequence
        labels = [-100] * (len(sequence) + 1) + sequence[1:]
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return features


def curriculum_features(
    passages: Sequence[Passage], tokenizer: "PreTrainedTokenizerBase", vocab_size: int, config: CopyCurriculumConfig
) -> tuple[list[dict], list[RagPair]]:
    """The mixed training set (steps × batch_size features) and the span-copy pairs in it."""
    total = config.steps * config.batch_size
    repeats = round(total * config.repeat_fraction)
    pairs = span_copy_pairs(passages, total - repeats, tokenizer, config.max_prompt_tokens, config.fragments, config.seed)
    features = repeated_sequence_features(vocab_size, repeats, config.repeat_lengths, config.seed + 1) + tokenize_pairs(pairs, tokenizer)
    random.Random(config.seed).shuffle(features)
    return features, pairs


def train_copy_curriculum(model_path: str, passages: Sequence[Passage], config: CopyCurriculumConfig, output_dir: str | Path):
    """Fully fine-tune the causal LM at `model_path` on the curriculum with transformers' `Trainer`.

    Batches group examples of similar length (short repeated sequences with each other). Writes the loss
    curve into `output_dir`; returns the model (eval mode), its tokenizer and the Trainer's log history.
    """
    import datasets
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

    from pocketlm.training.callbacks import MetricsWriterCallback

    set_seed(config.seed)
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    features, _ = curriculum_features(passages, tokenizer, model.config.vocab_size, config)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=config.steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a fraction of the steps (transformers 5)
        weight_decay=0.0,
        logging_steps=max(1, config.steps // 20),
        save_strategy="no",
        train_sampling_strategy="group_by_length",
        seed=config.seed,
        report_to=[],
        disable_tqdm=False,
    )
    tokenizer.padding_side = "right"
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(features),
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[MetricsWriterCallback(output_dir, title=f"copy curriculum (seed {config.seed})")],
    )
    trainer.train()
    return model.eval(), tokenizer, trainer.state.log_history


def save_model(model, tokenizer, folder: str | Path) -> None:
    """The fine-tuned model as safetensors with its tokenizer: a base the LoRA and `load_generator` can load."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
