"""BM25 over the indexed passages, and its fusion with the dense scores: the retriever's hybrid mode.

Why: SQuAD-style questions reuse the rare words of the passage that answers them ("Which NFL team
represented the AFC at Super Bowl 50?"), and a 22M-parameter sentence encoder blurs exactly those words
(names, numbers, titles). BM25 keeps them. Fusing both ranks the gold passage first far more often than
either alone, at a cost of well under a millisecond per query — measured in `benchmarks/rag_retriever.py`
(docs/rag.md has the table).

BM25 comes from `bm25s` (sparse-matrix BM25, numpy only). Its index is rebuilt from the passages when the
retriever loads (a fraction of a second for thousands of passages), so the published index folder holds no
extra file — nothing pickled, nothing that can drift from `passages.jsonl`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HYBRID_WEIGHT = 0.7
"""Weight of the BM25 z-score against the dense one. Chosen by `benchmarks/rag_retriever.py` on held-out
SQuAD-*train* articles (best MRR@10; 0.5–1.0 are all within a point), never on the dev questions."""

CANDIDATES = 50
"""How many passages each side (dense, BM25) proposes; the fused top-k is taken from their union."""


class LexicalIndex:
    """BM25 (Lucene variant, English stop words removed) over a fixed list of passage texts."""

    def __init__(self, texts: Sequence[str]):
        import bm25s

        self._bm25s = bm25s
        self.size = len(texts)
        self.bm25 = bm25s.BM25()
        self.bm25.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 score of every passage for every query, shape `(len(queries), passages)`."""
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False, return_ids=False)
        if not tokens:
            return np.zeros((0, self.size), np.float32)
        return np.stack([self.bm25.get_scores(query_tokens) for query_tokens in tokens]).astype(np.float32)


def _zscore(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (values - reference.mean()) / (reference.std() + 1e-6)


def fuse(
    dense_scores: np.ndarray, dense_rows: np.ndarray, lexical_scores: np.ndarray, weight: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hybrid top-k: `z(dense) + weight * z(bm25)` over the union of both sides' candidates.

    `dense_scores`/`dense_rows` are FAISS's top candidates per query (rows -1 where it found fewer);
    `lexical_scores` is BM25 over all passages. Each side is z-normalised by the statistics of its own
    candidate list, so cosine similarities (~0.2–0.8) and BM25 scores (0–30) become comparable; a passage
    only BM25 proposed gets the weakest dense candidate's score, a safe lower bound for an approximate
    index whose other scores are unknown. Returns fused scores and rows, shape `(queries, k)`, padded
    with -inf / -1 when fewer than k passages exist.
    """
    n_queries = dense_scores.shape[0]
    candidates = dense_rows.shape[1]
    out_scores = np.full((n_queries, k), -np.inf, np.float32)
    out_rows = np.full((n_queries, k), -1, np.int64)
    for q in range(n_queries):
        found = dense_rows[q] >= 0
        d_rows, d_scores = dense_rows[q][found], dense_scores[q][found]
        lexical = lexical_scores[q]
        l_rows = np.argpartition(-lexical, min(candidates, lexical.size) - 1)[:candidates] if lexical.size else d_rows
        pool = np.union1d(d_rows, l_rows).astype(np.int64)
        if pool.size == 0:
            continue
        dense = np.full(pool.size, d_scores.min() if d_scores.size else 0.0, np.float32)
        dense[np.searchsorted(pool, np.sort(d_rows))] = d_scores[np.argsort(d_rows)]
        fused = _zscore(dense, d_scores if d_scores.size > 1 else dense) + weight * _zscore(lexical[pool], lexical[l_rows])
        best = np.argsort(-fused, kind="stable")[:k]
        out_scores[q, : best.size] = fused[best]
        out_rows[q, : best.size] = pool[best]
    return out_scores, out_rows
