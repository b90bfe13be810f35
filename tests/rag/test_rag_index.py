"""FAISS indexes (flat, OPQ), their pickle-free persistence, recall@k, and the published index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pocketlm.errors import ConfigError
from pocketlm.rag.corpus import read_passages_and_questions
from pocketlm.rag.embeddings import encode
from pocketlm.rag.index import IndexSpec, PassageIndex, build_faiss_index, index_nbytes, recall_at_k


@pytest.fixture(scope="module")
def passages_and_vectors(rag_files, rag_encoder):
    passages, questions = read_passages_and_questions(*rag_files)
    return passages, questions, encode(rag_encoder, [p.text for p in passages])


def test_recall_at_k_counts_gold_within_the_first_k():
    ranked = [["a", "b", "c"], ["c", "a", "b"], ["x", "y", "z"]]
    assert recall_at_k(ranked, ["a", "a", "a"], (1, 2, 3)) == {"recall@1": 1 / 3, "recall@2": 2 / 3, "recall@3": 2 / 3}


def test_flat_index_is_exact_cosine_and_finds_gold_passages(passages_and_vectors, rag_encoder):
    passages, questions, vectors = passages_and_vectors
    index = PassageIndex.build(vectors, passages, IndexSpec("flat"), "minilm")
    queries = encode(rag_encoder, [q.question for q in questions])
    scores, rows = index.search(queries, 5)
    np.testing.assert_allclose(scores[:, 0], (queries @ vectors.T).max(axis=1), rtol=1e-5)
    ranked = [[passages[r].id for r in row] for row in rows]
    # MiniLM finds most gold paragraphs among 50 passages of two articles (0.643 @1 over all 913).
    assert recall_at_k(ranked, [q.passage_id for q in questions], (5,))["recall@5"] >= 0.7


def test_opq_index_compresses_codes_and_agrees_with_flat(passages_and_vectors):
    passages, _, vectors = passages_and_vectors
    tiled = np.concatenate([vectors] * 6)  # 300 vectors: enough to train 4-bit sub-quantisers
    spec = IndexSpec("opq", opq_dim=32, pq_m=8, pq_bits=4)
    opq, flat = build_faiss_index(tiled, spec), build_faiss_index(tiled, IndexSpec("flat"))
    assert spec.factory_string(384) == "OPQ8_32,PQ8x4"
    assert opq.sa_code_size() == 4  # 8 sub-quantisers x 4 bits per vector, against 1,536 bytes in flat
    _, approx = opq.search(vectors[:20], 10)
    _, exact = flat.search(vectors[:20], 1)
    assert np.mean([exact[i, 0] % len(vectors) in approx[i] % len(vectors) for i in range(20)]) >= 0.8
    assert index_nbytes(opq) < index_nbytes(flat)


def test_opq_refuses_too_few_training_vectors(passages_and_vectors):
    _, _, vectors = passages_and_vectors
    with pytest.raises(ConfigError, match="too few"):
        build_faiss_index(vectors, IndexSpec("opq", opq_dim=64, pq_m=16, pq_bits=8))
    with pytest.raises(ConfigError, match="multiple"):
        IndexSpec("opq", opq_dim=60, pq_m=16)


def test_saved_index_reloads_without_pickle_and_searches_identically(passages_and_vectors, tmp_path):
    passages, _, vectors = passages_and_vectors
    index = PassageIndex.build(vectors, passages, IndexSpec("flat"), "minilm")
    index.save(tmp_path, "flat.faiss")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat.faiss", "index_config.json", "passages.jsonl"]
    config = json.loads((tmp_path / "index_config.json").read_text())["flat.faiss"]
    assert config["count"] == len(passages) and config["size_bytes"] == index_nbytes(index.index)
    assert (tmp_path / "flat.faiss").read_bytes()[:4] == b"IxFI"  # FAISS's own format (IndexFlatIP), not a pickle
    loaded = PassageIndex.load(tmp_path, "flat.faiss")
    assert [p.id for p in loaded.passages] == [p.id for p in passages]
    np.testing.assert_array_equal(loaded.search(vectors[:5], 3)[1], index.search(vectors[:5], 3)[1])


def test_published_index_holds_both_indexes_adapter_and_measured_card(rag_index_repo):
    from pocketlm.hub import resolve

    folder = Path(resolve(rag_index_repo))
    names = {p.name for p in folder.iterdir()}
    assert {"flat.faiss", "opq.faiss", "passages.jsonl", "index_config.json", "query_adapter", "README.md", "metrics.json", "retrieval_eval.json"} <= names
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 < metrics["flat_stock_recall@5"] <= 1 and "opq_adapter_recall@1" in metrics
    card = (folder / "README.md").read_text()
    assert "OPQ8_32,PQ8x4" in card and "recall@5" in card
