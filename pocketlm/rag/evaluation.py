"""Measuring the loop: retrieval recall@k, OPQ against flat, and answer exact match / F1.

EM and F1 are the official SQuAD v1.1 ones, from `pocketlm.inference.squad_metrics` (the QA lab's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pocketlm.inference.squad_metrics import squad_scores
from pocketlm.rag.index import PassageIndex, recall_at_k

if TYPE_CHECKING:
    from pocketlm.rag.prompt import Fragment

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


def answer_report(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM and F1 (0–100) by the official SQuAD v1.1 rules (`pocketlm.inference.squad_metrics`)."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    scores = squad_scores(dict(enumerate(predictions)), enumerate(answers))
    return {"exact_match": scores["exact_match"], "f1": scores["f1"]}


def extractive_answers(reader_path: str, questions: Sequence[str], fragments: Sequence[Sequence["Fragment"]]) -> list[str]:
    """The span the agent would answer for each question over its fragments (`pocketlm.rag.answer.select_span`
    over the reader's best span per fragment), read by pocketlm's PyTorch QA engine, never abstaining."""
    from pocketlm.inference.qa_torch import TorchQuestionAnswerer
    from pocketlm.rag.answer import read_fragments, select_span

    reader = TorchQuestionAnswerer.from_pretrained(reader_path)
    return [select_span(read_fragments(reader, question, list(frs))).text for question, frs in zip(questions, fragments)]
