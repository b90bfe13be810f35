"""Language-model metrics shared by the pretraining loop, the generation report and the benchmark."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

GENERATION_PROMPTS = (
    "The",
    "In 1998, the",
    "The city is known for",
    "During the war,",
    "The album was released",
)
"""Fixed prompts for the samples generated after each epoch and in the generation report: the same prompts
every time, so distinct-n and perplexity compare across epochs and settings."""


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams / all word n-grams, pooled over `texts`.

    1.0 means no n-gram repeats; a model stuck in loops scores near 0. Words are whitespace-separated, so
    the number does not depend on the tokenizer.
    """
    total, unique = 0, set()
    for text in texts:
        words = text.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """Token-weighted perplexity: exp(total negative log-likelihood / total tokens); inf when there are none."""
    if n_tokens <= 0:
        return float("inf")
    return math.exp(min(nll_sum / n_tokens, 700.0))


def bits_per_byte(nll_sum: float, n_bytes: float) -> float:
    """Bits per UTF-8 byte of the predicted text: total NLL (nats) / (ln 2 × bytes).

    Unlike perplexity it does not depend on the tokenizer: a model with a larger vocabulary has fewer, harder tokens
    to predict over the same bytes, so runs with different tokenizers compare in bits per byte, never in perplexity.
    """
    return nll_sum / (math.log(2) * n_bytes) if n_bytes > 0 else float("inf")


def token_byte_lengths(tokenizer):
    """A tensor: for each token id, how many UTF-8 bytes of text it stands for (0 for special tokens).

    For a byte-level BPE tokenizer (GPT-2's, pocketlm's) each character of a token's string is one byte, so the
    lengths are exact and a sequence's bytes are the sum over its tokens. Other tokenizers are measured by decoding
    each token alone, which can miscount a token that is part of a multi-byte character.
    """
    import torch

    special = set(tokenizer.all_special_ids)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and type(backend.decoder).__name__ == "ByteLevel"
    lengths = []
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if token_id in special or token is None:
            lengths.append(0)
        elif byte_level:
            lengths.append(len(token))
        else:
            lengths.append(len(tokenizer.decode([token_id]).encode("utf-8")))
    return torch.tensor(lengths, dtype=torch.long)


def token_nll(model, input_ids, attention_mask=None, labels=None):
    """Per-sequence summed next-token NLL and token counts: `(nll (B,), count (B,))` as float tensors.

    Summing per sequence (not averaging per batch) is what makes the perplexity token-weighted, and lets
    data-parallel workers gather exact totals. Works with `TransformerLM` and any transformers causal LM.
    """
    import torch.nn.functional as F

    labels = input_ids if labels is None else labels
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    logits = out["logits"] if isinstance(out, dict) else out.logits
    targets = labels[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(attention_mask[:, 1:] == 0, -100)
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=-100, reduction="none")
    return nll.sum(dim=1), (targets != -100).sum(dim=1).float()


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a list of measurements (what every benchmark table reports)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1]}
