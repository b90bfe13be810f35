"""Pick the answer span of an extractive QA model from its start/end logits — numpy only.

One implementation for every path: the PyTorch evaluation, the ONNX evaluation and benchmark, and the
torch-free server all call `best_span`. It must therefore never import torch or transformers.

A long context is split into several *features* (windows with a document stride); each feature has its
own logits and its own token offsets. `best_span` looks at every feature of one example and returns the
best span overall, as text plus character offsets into the original context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Offset = tuple[int, int] | None
"""A token's (start, end) character offsets in the context, or None for tokens outside the context
(question, special tokens, padding): those can never start or end an answer."""

MAX_ANSWER_TOKENS = 30
"""Longest answer span considered, in tokens (the SQuAD convention of transformers' `run_qa.py`)."""


@dataclass(frozen=True)
class Answer:
    text: str
    start: int
    """Character offset of the answer in the context (inclusive)."""
    end: int
    """Character offset of the end of the answer in the context (exclusive): `context[start:end] == text`."""
    score: float
    """p(start) * p(end), the softmaxes taken over the context tokens of the window the span came from."""


NO_ANSWER = Answer(text="", start=0, end=0, score=0.0)


def context_offsets(offsets: Sequence[tuple[int, int]], sequence_ids: Sequence[int | None], context_sequence: int = 1) -> list[Offset]:
    """Keep the offsets of the tokens of sequence `context_sequence` (the context, after the question); None elsewhere.

    `offsets` and `sequence_ids` are what a `tokenizers.Encoding` (or a fast tokenizer's
    `offset_mapping` / `sequence_ids(i)`) gives for one feature.
    """
    return [tuple(offset) if seq == context_sequence else None for offset, seq in zip(offsets, sequence_ids)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def best_span(
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    offsets: Sequence[Sequence[Offset]],
    context: str,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
) -> Answer:
    """The best answer span over all features of one example.

    `start_logits[f]`, `end_logits[f]` are the logits of feature `f` (1-D, possibly longer than its
    offsets because of padding: the padding is ignored) and `offsets[f]` its tokens' context offsets.
    Spans are ranked by start logit + end logit, as transformers' `run_qa.py` post-processing does (raw logits
    are comparable across the windows of one example); unlike its n-best heuristic, every valid span
    (start <= end, at most `max_answer_tokens` tokens, both ends in the context) is scored, so the search is
    exact. An example with no context token at all gets `NO_ANSWER`.
    """
    best: tuple[float, int, int, int] | None = None  # (logit sum, feature, start token, end token)
    band = np.arange(max_answer_tokens)
    for feature, (starts, ends, feature_offsets) in enumerate(zip(start_logits, end_logits, offsets)):
        positions = np.flatnonzero([offset is not None for offset in feature_offsets])
        if positions.size == 0:
            continue
        start_scores = np.asarray(starts, dtype=np.float64)[positions]
        end_scores = np.asarray(ends, dtype=np.float64)[positions]
        # Row i holds the ends i, i+1, ... i+max_answer_tokens-1 (indices into `positions`): positions increase,
        # so no valid end lies further, and the search costs O(n · max_answer_tokens), not O(n²). Scanned row by
        # row, the candidates come in the same (start, end) order as the full matrix's, so ties break alike.
        ends_at = np.arange(positions.size)[:, None] + band[None, :]
        inside = ends_at < positions.size
        ends_at = np.minimum(ends_at, positions.size - 1)
        length = positions[ends_at] - positions[:, None]  # token distance end - start
        totals = np.where(inside & (length < max_answer_tokens), start_scores[:, None] + end_scores[ends_at], -np.inf)
        i, k = np.unravel_index(int(np.argmax(totals)), totals.shape)
        if best is None or totals[i, k] > best[0]:
            best = (float(totals[i, k]), feature, int(positions[i]), int(positions[ends_at[i, k]]))
    if best is None:
        return NO_ANSWER
    _, feature, start_token, end_token = best
    feature_offsets = offsets[feature]
    positions = np.flatnonzero([offset is not None for offset in feature_offsets])
    log_p_start = _log_softmax(np.asarray(start_logits[feature], dtype=np.float64)[positions])
    log_p_end = _log_softmax(np.asarray(end_logits[feature], dtype=np.float64)[positions])
    score = float(np.exp(log_p_start[np.searchsorted(positions, start_token)] + log_p_end[np.searchsorted(positions, end_token)]))
    char_start, char_end = feature_offsets[start_token][0], feature_offsets[end_token][1]
    return Answer(text=context[char_start:char_end], start=char_start, end=char_end, score=score)
