"""The query adapter learns a correction the stock query vectors need, and it carries over to unseen passages."""

import numpy as np
import pytest

from pocketlm.rag.query_adapter import AdapterTrainingConfig, QueryAdapter, retrieval_recall, train_query_adapter


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def skewed_queries():
    """300 passages (unit vectors, dim 32) and two noisy queries per passage, all pushed along one shared direction.

    The shared push is what a query encoder's systematic bias looks like: with the stock (identity) query path
    it favours whichever passages lie along that direction over the gold one. Training uses the queries of
    passages 0–199; the test the queries of passages 200–299, which training never saw.
    """
    rng = np.random.default_rng(0)
    passages = _unit(rng.normal(size=(300, 32)))
    push = _unit(rng.normal(size=(1, 32)))
    gold = np.repeat(np.arange(300), 2)
    queries = _unit(passages[gold] + 2.0 * push + 0.5 * _unit(rng.normal(size=(600, 32))))
    seen = gold < 200
    return passages, (queries[seen], gold[seen]), (queries[~seen], gold[~seen])


def test_the_trained_adapter_beats_the_identity_on_unseen_passages(skewed_queries):
    passages, (train_q, train_gold), (test_q, test_gold) = skewed_queries
    config = AdapterTrainingConfig(bottleneck=16, epochs=20, batch_size=64, learning_rate=1e-2, seed=0)
    adapter, history = train_query_adapter(train_q, train_gold, passages, config)

    identity = retrieval_recall(QueryAdapter(32, 16).transform(test_q), passages, test_gold)
    assert identity == retrieval_recall(test_q, passages, test_gold)  # an untrained adapter is the identity
    adapted = retrieval_recall(adapter.transform(test_q), passages, test_gold)
    assert identity["recall@1"] < 0.6 and adapted["recall@1"] >= max(0.9, identity["recall@1"] + 0.3), (identity, adapted)
    assert adapted["mrr@10"] > identity["mrr@10"] and adapted["recall@5"] >= identity["recall@5"]
    assert history[-1]["loss"] < history[1]["loss"]
