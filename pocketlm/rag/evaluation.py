"""Measuring the loop: retrieval recall@k, OPQ against flat, and answer exact match / F1.

EM and F1 follow the official SQuAD v1.1 script (lower-case, drop punctuation and articles, token-overlap F1,
best over the gold answers); it is a few lines, and `evaluate.load("squad")` would fetch the script from the
Hub, which these machines cannot reach.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from pocketlm.rag.index import PassageIndex, recall_at_k

KS = (1, 5, 10)


def ranked_ids(index: PassageIndex, query_vectors: np.ndarray, k: int = max(KS)) -> list[list[str]]:
    _, rows = index.search(query_vectors, k)
    return [[index.passages[r].id for r in row if r >= 0] for row in rows]


def retrieval_report(index: PassageIndex, query_vectors: np.ndarray, gold_ids: Sequence[str]) -> dict[str, float]:
    """Recall@1/5/10 against the gold passages."""
    return recall_at_k(ranked_ids(index, query_vectors), list(gold_ids), KS)


def agreement_with_exact(approx: PassageIndex, exact: PassageIndex, query_vectors: np.ndarray) -> dict[str, float]:
    """FAISS's "1-recall@k": how often the exact (flat) nearest passage is in the approximate index's top k."""
    nearest = [ids[0] for ids in ranked_ids(exact, query_vectors, 1)]
    return {f"1-{name}_vs_flat": v for name, v in recall_at_k(ranked_ids(approx, query_vectors), nearest, KS).items()}


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(a) for a in answers))


def f1(prediction: str, answers: Sequence[str]) -> float:
    def score(gold: str) -> float:
        pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if not pred_tokens or not gold_tokens:
            return float(pred_tokens == gold_tokens)
        if common == 0:
            return 0.0
        precision, recall = common / len(pred_tokens), common / len(gold_tokens)
        return 2 * precision * recall / (precision + recall)

    return max((score(a) for a in answers), default=0.0)


def answer_report(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 (0–100, as SQuAD reports them)."""
    n = max(len(predictions), 1)
    return {
        "exact_match": 100 * sum(exact_match(p, a) for p, a in zip(predictions, answers)) / n,
        "f1": 100 * sum(f1(p, a) for p, a in zip(predictions, answers)) / n,
    }


def markdown_table(rows: Sequence[dict], columns: Sequence[str], formats: dict[str, str] | None = None) -> str:
    """A Markdown table of `rows` (dicts) with the given columns; numbers formatted by `formats[column]`."""
    formats = formats or {}

    def cell(row: dict, column: str) -> str:
        value = row.get(column, "")
        if isinstance(value, float):
            return format(value, formats.get(column, ".3f"))
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def extractive_answers(reader_path: str, questions: Sequence[str], contexts: Sequence[Sequence[str]]) -> list[str]:
    """Best span over each question's contexts (highest p(start)·p(end)), read by pocketlm's PyTorch QA engine
    (transformers 5 removed the question-answering pipeline)."""
    from pocketlm.inference.qa_torch import TorchQuestionAnswerer

    reader = TorchQuestionAnswerer.from_pretrained(reader_path)
    answers = []
    for question, passages in zip(questions, contexts):
        spans = reader.answer_batch([question] * len(passages), list(passages)) if passages else []
        answers.append(max(spans, key=lambda s: s.score).text if spans else "")
    return answers
