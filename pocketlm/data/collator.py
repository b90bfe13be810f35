"""`CustomDataCollator`: batches chunks for causal-LM training, with dynamic or static input masking.

What masking means for a causal LM (a decision; BERT's masked-LM objective does not apply as such): a
masked *input* position is replaced by `<mask>` while the *labels* keep every original token, so the model
still learns to predict each next token — but from a context with holes in it. This is noisy-context
augmentation (like token dropout / word-level noising): it discourages leaning on any single previous
token and regularises a small model that sees the same small corpus for several epochs. Because the
labels are untouched, the loss stays a plain next-token loss and validation (run with `mode="none"`) is
the ordinary perplexity of clean text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import torch

MODES = ("dynamic", "static", "none")


class CustomDataCollator:
    """Pad a list of chunks into a batch and mask some input tokens; usable as any transformers `data_collator`.

    Each feature is a dict with `input_ids` (a list of token ids) and, for static masking, an `id`. The
    batch holds `input_ids` (masked), `attention_mask` and `labels` (the original ids, -100 on padding).

    Modes, and the memory-versus-variety-of-contexts trade-off between them:

    * `"dynamic"` — every batch draws a fresh `mlm_probability` (15 %) of the maskable tokens. By default
      from the global torch RNG (which `Trainer` seeds); with `dynamic_seed`, batch number n draws from a
      generator seeded by (dynamic_seed, n), so a resumed run that sets `batches_drawn` back to the batches
      it consumed masks exactly as an uninterrupted one (a loader's prefetching cannot shift the stream). Each epoch therefore shows the model a new
      noisy version of every chunk: the most variety of contexts. It costs no memory, only a random draw
      per batch.
    * `"static"` — a fixed `static_chunk_fraction` (10 %) of whole chunks is masked, each always at the
      same positions (`mlm_probability` of its tokens), every epoch. Which chunks and which positions is
      derived from a hash of the chunk `id` and `seed`, and recomputed when the chunk is batched. Classic
      static masking (BERT's original recipe) stores the masked copies — duplicating the data set once per
      mask pattern; deriving the pattern from the id gives the same fixed masks for zero extra memory. The
      price is variety: the model sees one noisy view of 10 % of the chunks, repeated, instead of new noise.
    * `"none"` — no masking (validation, and plain pretraining).

    Special tokens (EOS/BOS, padding, `<mask>` itself, anything in `special_token_ids`) are never masked.
    With transformers' `Trainer`, set `remove_unused_columns=False` so the `id` column reaches the collator.
    """

    def __init__(
        self,
        tokenizer=None,
        mode: str = "dynamic",
        mlm_probability: float = 0.15,
        static_chunk_fraction: float = 0.10,
        seed: int = 0,
        mask_token_id: int | None = None,
        pad_token_id: int | None = None,
        special_token_ids: Iterable[int] | None = None,
        id_key: str = "id",
        dynamic_seed: int | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"masking mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0 <= mlm_probability <= 1 or not 0 <= static_chunk_fraction <= 1:
            raise ValueError("mlm_probability and static_chunk_fraction must lie in [0, 1]")
        self.mode = mode
        self.mlm_probability = mlm_probability
        self.static_chunk_fraction = static_chunk_fraction
        self.seed = seed
        self.id_key = id_key
        self.dynamic_seed = dynamic_seed
        self.batches_drawn = 0
        """Batches collated so far; with `dynamic_seed`, the number that seeds the next batch's masks."""
        self.mask_token_id = mask_token_id if mask_token_id is not None else getattr(tokenizer, "mask_token_id", None)
        self.pad_token_id = pad_token_id if pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
        if mode != "none" and self.mask_token_id is None:
            raise ValueError("masking needs a mask token: pass a tokenizer with one, or mask_token_id")
        if self.pad_token_id is None:
            self.pad_token_id = getattr(tokenizer, "eos_token_id", None) or 0
        specials = set(special_token_ids or ())
        if tokenizer is not None:
            specials.update(tokenizer.all_special_ids)
        specials.update(i for i in (self.mask_token_id, self.pad_token_id) if i is not None)
        self.special_token_ids = torch.tensor(sorted(specials), dtype=torch.long)

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        longest = max(lengths)
        labels = torch.full((len(features), longest), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, (feature, n) in enumerate(zip(features, lengths)):
            labels[row, :n] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            attention_mask[row, :n] = 1
        input_ids = labels.masked_fill(attention_mask == 0, self.pad_token_id)
        if self.mode != "none":
            maskable = attention_mask.bool() & ~torch.isin(input_ids, self.special_token_ids)
            if self.mode == "dynamic":
                chosen = torch.rand(input_ids.shape, generator=self._batch_generator()) < self.mlm_probability
            else:
                chosen = torch.stack([self._static_mask(self._chunk_id(f), longest) for f in features])
            input_ids = input_ids.masked_fill(chosen & maskable, self.mask_token_id)
        self.batches_drawn += 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _batch_generator(self) -> torch.Generator | None:
        if self.dynamic_seed is None:
            return None
        return torch.Generator().manual_seed(_hash64(f"dynamic:{self.dynamic_seed}:{self.batches_drawn}"))

    def _chunk_id(self, feature: dict[str, Any]):
        if self.id_key not in feature:
            raise KeyError(
                f"static masking needs a chunk id in each feature ({self.id_key!r}); with transformers' Trainer "
                "set remove_unused_columns=False"
            )
        return feature[self.id_key]

    def _static_mask(self, chunk_id, length: int) -> torch.Tensor:
        """The fixed mask of one chunk: all False unless the chunk is among the masked fraction.

        A generator seeded by a hash of (seed, id) draws the choice and the positions, so they are identical
        in every epoch, every process and every run, and nothing is stored.
        """
        generator = torch.Generator().manual_seed(_hash64(f"{self.seed}:{chunk_id}"))
        if torch.rand((), generator=generator) >= self.static_chunk_fraction:
            return torch.zeros(length, dtype=torch.bool)
        return torch.rand(length, generator=generator) < self.mlm_probability


def _hash64(key: str) -> int:
    """A stable 63-bit seed from a string (Python's `hash()` changes between processes)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") & (2**63 - 1)
