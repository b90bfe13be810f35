"""The hybrid retriever: BM25 over the indexed passages fused with the dense (FAISS) candidates."""

from __future__ import annotations

import numpy as np
import pytest

from pocketlm.errors import ConfigError
from pocketlm.rag.lexical import LexicalIndex, fuse
from pocketlm.rag.retriever import RagRetriever

TEXTS = [
    "The Denver Broncos defeated the Carolina Panthers to win Super Bowl 50.",
    "Tesla moved to Colorado Springs to run high-voltage experiments.",
    "The Yuan dynasty was founded by Kublai Khan.",
]


def test_bm25_scores_every_passage_and_prefers_the_one_sharing_rare_words():
    scores = LexicalIndex(TEXTS).scores(["Who founded the Yuan dynasty?", "Broncos Panthers"])
    assert scores.shape == (2, 3)
    assert scores[0].argmax() == 2 and scores[1].argmax() == 0
    assert scores[0, 0] == 0  # no shared word (stop words do not count)


def test_fusion_lifts_a_lexical_match_the_dense_side_ranked_low_or_missed():
    dense_rows = np.array([[0, 1, -1]])  # FAISS found two candidates; passage 2 is not among them
    dense_scores = np.array([[0.61, 0.60, -np.inf]], np.float32)
    lexical = np.array([[0.0, 0.0, 12.0]], np.float32)
    scores, rows = fuse(dense_scores, dense_rows, lexical, weight=1.0, k=3)
    assert rows[0].tolist()[0] == 2 and set(rows[0].tolist()) == {0, 1, 2}
    assert np.all(np.diff(scores[0]) <= 0)
    # Without lexical evidence the dense order stands; k larger than the pool is padded with -1.
    scores, rows = fuse(dense_scores, dense_rows, np.zeros((1, 3), np.float32), weight=0.7, k=5)
    assert rows[0, :2].tolist() == [0, 1] and rows[0, 3:].tolist() == [-1, -1]


def test_hybrid_retriever_keeps_a_dense_only_mode(rag_index_repo, rag_encoder):
    hybrid = RagRetriever.from_pretrained(rag_index_repo, encoder=rag_encoder)
    dense = RagRetriever.from_pretrained(rag_index_repo, encoder=rag_encoder, lexical_weight=0)
    assert hybrid.lexical is not None and dense.lexical is None
    question = "Which NFL team represented the AFC at Super Bowl 50?"
    assert hybrid.retrieve(question, k=3)[0].id == dense.retrieve(question, k=3)[0].id  # both find it
    faiss_rows = dense.index.search(dense.embed_queries([question]), 5)[1][0].tolist()
    assert [f.id for f in dense.retrieve(question, k=5)] == [dense.index.passages[r].id for r in faiss_rows]
    fragments = hybrid.retrieve(question, k=5)
    assert len({f.id for f in fragments}) == 5 and [f.score for f in fragments] == sorted((f.score for f in fragments), reverse=True)
    with pytest.raises(ConfigError, match="lexical_weight"):
        RagRetriever(rag_encoder, dense.index, lexical_weight=-1)
