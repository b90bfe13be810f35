"""Fixtures of the RAG tests: a few dozen real passages and questions, the real MiniLM, a published index.

Everything is real (FAISS, sentence-transformers, peft, LangChain) and small: 50 dev passages of two
articles plus 10 WikiText distractors, 19 questions, an index published into the session's test hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_models import publish_random_qa_model

from pocketlm import RAG_INDEX


@pytest.fixture(scope="session")
def rag_encoder():
    from pocketlm.rag.embeddings import load_encoder

    return load_encoder("minilm")


@pytest.fixture(scope="session")
def query_adapter_dir(tmp_path_factory) -> Path:
    """A query adapter trained for 3 epochs on 2 SQuAD-train articles (one of them held out): real data, real training."""
    from pocketlm.rag.adapter_training import AdapterExperimentConfig, train_and_save_adapter

    folder = tmp_path_factory.mktemp("query-adapter")
    config = AdapterExperimentConfig(max_articles=2, held_out_fraction=0.5, epochs=3, measure_on_dev=False, output_dir=str(folder))
    train_and_save_adapter(config)
    return folder


@pytest.fixture(scope="session")
def rag_index_repo(rag_files, query_adapter_dir) -> str:
    """`pocketlm/rag-index` published in the test hub: 60 passages, flat + a small OPQ index, the adapter."""
    from pocketlm.rag.builder import IndexBuildConfig, build_and_publish_index

    passages_path, qa_path = rag_files
    config = IndexBuildConfig(
        passages=str(passages_path), qa=str(qa_path), max_distractors=10, opq_dim=32, pq_m=8, pq_bits=4,
        query_adapter=str(query_adapter_dir),
    )
    build_and_publish_index(config, RAG_INDEX)
    return RAG_INDEX


RAG_READER = "pocketlm-tests/rag-reader"


@pytest.fixture(scope="session")
def rag_reader_repo() -> str:
    """An extractive reader for the agent: a 2-layer BERT QA model (random weights, seeded) with MiniLM's real
    tokenizer, published in the test hub. Its spans are arbitrary but real: tests check where they come from,
    their scores and the abstention, not whether they are right."""
    return publish_random_qa_model(RAG_READER, "tiny reader (test fixture)")
