"""Tokenisation for sequence classification: truncate to 128 tokens, pad per batch (not per data set).

Padding is left to transformers' `DataCollatorWithPadding`, so each batch is only as long as its longest
sentence (SST-2 averages ~25 tokens: padding to 128 would make every step ~4× dearer). With
`--train_sampling_strategy group_by_length` the Trainer's `LengthGroupedSampler` batches sentences of similar length together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pocketlm.data.registry import load_classification
from pocketlm.errors import ConfigError

if TYPE_CHECKING:
    import datasets

MAX_LENGTH = 128


@dataclass
class ClassificationDataArguments:
    """Which labelled set to use and how much of it (the scripts' data arguments)."""

    dataset: str = field(
        default="sst2",
        metadata={"help": "sst2, ag_news, trec, sentiment-labelled-sentences, or a folder of train/validation/test CSVs"})
    label_column: str = field(default="label", metadata={"help": "the CSV column holding the labels (e.g. fine_label for TREC)"})
    max_seq_length: int = field(default=MAX_LENGTH, metadata={"help": "tokens kept per text (longer texts are truncated)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "train on a random subset of this many examples"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "evaluate on a random subset of this many examples"})

    def __post_init__(self):
        if self.max_seq_length < 8:
            raise ConfigError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        for flag in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, flag)
            if value is not None and value < 1:
                raise ConfigError(f"--{flag} must be at least 1, got {value}")


def subset(dataset: "datasets.Dataset", n: int | None, seed: int) -> "datasets.Dataset":
    """A seeded random subset of `n` rows (all rows when `n` is None or larger than the set)."""
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def label_names(dataset: "datasets.Dataset") -> list[str]:
    return list(dataset.features["label"].names)


def tokenize_classification(dataset: "datasets.Dataset", tokenizer, max_length: int = MAX_LENGTH) -> "datasets.Dataset":
    """`text` + `label` → `input_ids`, `attention_mask` (+ `token_type_ids`) and `labels`, truncated, unpadded."""

    def encode(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        encoded["labels"] = batch["label"]
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenising", load_from_cache_file=False)


def load_tokenized_splits(
    args: ClassificationDataArguments, tokenizer, splits: tuple[str, ...] = ("train", "validation"), seed: int = 42
) -> tuple[dict[str, "datasets.Dataset"], list[str]]:
    """Load, subset and tokenise the named splits; returns them by name and the label names.

    Errors in the data set name or label column surface here, before any model is loaded.
    """
    raw = {split: load_classification(args.dataset, split, args.label_column) for split in splits}
    limits = {"train": args.max_train_samples}
    tokenized = {
        split: tokenize_classification(subset(ds, limits.get(split, args.max_eval_samples), seed), tokenizer, args.max_seq_length)
        for split, ds in raw.items()
    }
    return tokenized, label_names(raw[splits[0]])


def padding_collator(tokenizer, pad_to_multiple_of: int | None = None):
    """Dynamic padding per batch (`pad_to_multiple_of=8` suits fp16 tensor cores on GPUs)."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
