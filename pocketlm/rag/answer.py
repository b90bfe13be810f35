"""Grounded answers: the extractive reader's best span over the retrieved fragments, or an honest abstention.

Why a reader and not the generator: the tiny LM paraphrases and invents, while an extractive reader
(`pocketlm/minilm-squad`) can only return words that are in a fragment, so every answer has a source the user
can check. The reader finds the best span of each fragment on its own, scored p(start)·p(end) within that
fragment (`pocketlm.inference.qa_postprocess.best_span`), so a fragment without the answer still offers a
confident-looking span. `select_span` therefore weighs each fragment's span by the retriever too: it keeps the
span with the highest log(reader score) + `RETRIEVAL_WEIGHT` × (the fragment's retrieval score). Below
`ABSTAIN_BELOW` (the chosen span's reader score) the agent says "not found in the fragments" instead, and shows
the fragments.

`RETRIEVAL_WEIGHT` (the F1-best weight) and `ABSTAIN_BELOW` are chosen on half of the dev questions by
`benchmarks/rag_answers.py`, which reports the other half.

The threshold is `choose_threshold`'s: the highest whose abstentions are still mostly right, i.e. at least
`MIN_ABSTENTION_PRECISION` of the spans it withholds would have been wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pocketlm.inference.squad_metrics import f1_score
from pocketlm.rag.prompt import Fragment

ABSTAIN_BELOW = 0.026
"""Reader score under which the agent abstains: chosen by `benchmarks/rag_answers.py` on half of the dev
questions (`choose_threshold`, abstention precision >= 0.8), for the published reader `pocketlm/minilm-squad`
(`--preset full`); rerun the benchmark for another reader and put its choice here."""
RETRIEVAL_WEIGHT = 0.5
"""Weight of the fragment's retrieval score against log(reader score) in `select_span`; chosen by
`benchmarks/rag_answers.py` (F1 on half of the dev questions, among `RETRIEVAL_WEIGHTS`) for the same reader: a
weak reader leans on the retriever (the `make demo` reader chose 2.0), a stronger one wants less."""
RETRIEVAL_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
MIN_ABSTENTION_PRECISION = 0.8
WRONG_BELOW_F1 = 0.5
"""A withheld span counts as wrong (so abstaining on it was right) when its best token F1 against the gold
answers is under this."""


@dataclass(frozen=True)
class ReaderSpan:
    """The reader's best span over the fragments: its text, score, the fragment it lies in and where."""

    text: str
    score: float
    fragment: Fragment | None
    start: int = 0
    end: int = 0


NO_SPAN = ReaderSpan("", 0.0, None)


def read_fragments(reader, question: str, fragments: Sequence[Fragment]) -> list[ReaderSpan]:
    """The best span of each fragment by the extractive reader (any `pocketlm.inference.qa_engine.QuestionAnswerer`),
    in fragment order."""
    if not fragments:
        return []
    spans = reader.answer_batch([question] * len(fragments), [f.text for f in fragments])
    return [ReaderSpan(s.text, float(s.score), f, s.start, s.end) for s, f in zip(spans, fragments)]


def select_span(candidates: Sequence[ReaderSpan], retrieval_weight: float = RETRIEVAL_WEIGHT) -> ReaderSpan:
    """The candidate with the highest log(reader score) + `retrieval_weight` × retrieval score (NO_SPAN if none)."""
    usable = [c for c in candidates if c.text.strip() and c.fragment is not None]
    if not usable:
        return NO_SPAN
    return max(usable, key=lambda c: np.log(max(c.score, 1e-12)) + retrieval_weight * c.fragment.score)


def span_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best SQuAD token F1 (0-1) of `prediction` against any gold answer."""
    return max((f1_score(prediction, gold) for gold in answers), default=0.0)


def choose_threshold(scores: Sequence[float], wrong: Sequence[bool], min_precision: float = MIN_ABSTENTION_PRECISION) -> float:
    """The highest score threshold whose abstentions (score < threshold) are at least `min_precision` wrong spans.

    Candidates are the observed scores (abstaining below one of them withholds every lower span); 0.0 — never
    abstain — when even the lowest-scored span was right more often than that.
    """
    order = np.argsort(np.asarray(scores, dtype=float), kind="stable")
    sorted_scores = np.asarray(scores, dtype=float)[order]
    wrong_sorted = np.asarray(wrong, dtype=bool)[order]
    precision = np.cumsum(wrong_sorted) / np.arange(1, len(order) + 1)  # abstaining on the i+1 lowest
    chosen = 0.0
    for i in range(len(order)):
        # abstain below the next score up, i.e. withhold spans 0..i (ties withheld together)
        if i + 1 < len(order) and sorted_scores[i + 1] == sorted_scores[i]:
            continue
        if precision[i] >= min_precision:
            chosen = float(sorted_scores[i + 1]) if i + 1 < len(order) else float(np.nextafter(sorted_scores[i], np.inf))
    return chosen


def abstention_report(scores: Sequence[float], f1s: Sequence[float], threshold: float) -> dict[str, float]:
    """What abstaining below `threshold` does to a set of answered questions (F1 per question in 0-1)."""
    scores, f1s = np.asarray(scores, dtype=float), np.asarray(f1s, dtype=float)
    answered = scores >= threshold
    withheld = ~answered
    wrong = f1s < WRONG_BELOW_F1
    return {
        "threshold": float(threshold),
        "f1": 100 * float(np.where(answered, f1s, 0.0).mean()) if len(f1s) else 0.0,
        "f1_without_abstaining": 100 * float(f1s.mean()) if len(f1s) else 0.0,
        "answered_f1": 100 * float(f1s[answered].mean()) if answered.any() else 0.0,
        "coverage": float(answered.mean()) if len(f1s) else 0.0,
        "abstentions": int(withheld.sum()),
        "abstention_precision": float(wrong[withheld].mean()) if withheld.any() else float("nan"),
        "wrong_answered": int((wrong & answered).sum()),
    }
