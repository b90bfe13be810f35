"""Exact match and F1 for extractive QA, exactly as the official SQuAD v1.1 `evaluate-v1.1.py` computes them.

Standard library only: `evaluate.load("squad")` would fetch its script from the Hub, which is offline here.
The normalisation (lower case, drop punctuation, drop the articles a/an/the, collapse whitespace), the token
F1 and the max over the gold answers follow the official script line for line.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official SQuAD v1.1)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], references: Iterable[tuple[str, Sequence[str]]]) -> dict[str, float]:
    """EM and F1 in percent over `references` (question id, gold answer texts), as the official script reports them.

    A question with no prediction counts as wrong (the official script prints a warning and scores it 0).
    """
    exact = f1 = 0.0
    total = 0
    for question_id, gold_answers in references:
        total += 1
        if question_id not in predictions:
            continue
        prediction = predictions[question_id]
        exact += max(exact_match_score(prediction, gold) for gold in gold_answers)
        f1 += max(f1_score(prediction, gold) for gold in gold_answers)
    if total == 0:
        raise ValueError("no questions to score")
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total, "questions": total}
