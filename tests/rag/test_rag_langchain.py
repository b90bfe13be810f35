"""The retriever as a LangChain `BaseRetriever` and the index as a `VectorStore`, in LCEL chains (real MiniLM, FAISS)."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.prompts import PromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from langchain_core.vectorstores import VectorStore

from pocketlm.rag.langchain_store import EncoderEmbeddings, PassageVectorStore

QUESTION = "Which NFL team won Super Bowl 50?"


@pytest.fixture(scope="module")
def retriever(rag_files, rag_encoder):
    from pocketlm.rag.corpus import read_passages_and_questions
    from pocketlm.rag.embeddings import encode
    from pocketlm.rag.index import IndexSpec, PassageIndex
    from pocketlm.rag.retriever import RagRetriever

    passages, _ = read_passages_and_questions(*rag_files)
    index = PassageIndex.build(encode(rag_encoder, [p.text for p in passages], cache=True), passages, IndexSpec("flat"), "minilm")
    return RagRetriever(rag_encoder, index)


def cited_context(documents: list[Document]) -> str:
    return "\n".join(f"[{doc.id}] {doc.page_content}" for doc in documents)


def test_an_lcel_chain_runs_on_the_retriever(retriever):
    docs = retriever.as_langchain(k=2)
    assert isinstance(docs, BaseRetriever)
    prompt = PromptTemplate.from_template("{context}\n\nQuestion: {question}\nAnswer:")
    chain = {"context": docs | RunnableLambda(cited_context), "question": RunnablePassthrough()} | prompt
    rendered = chain.invoke(QUESTION).to_string()
    expected = retriever.retrieve(QUESTION, 2)
    assert [line.split("]")[0][1:] for line in rendered.split("\n\n")[0].split("\n")] == [f.id for f in expected]
    assert expected[0].text in rendered and rendered.endswith(f"Question: {QUESTION}\nAnswer:")
    found = docs.invoke(QUESTION)
    assert found[0].metadata == {"id": expected[0].id, "title": expected[0].title, "score": expected[0].score}
    assert [d.id for d in docs.batch([QUESTION, "Toyota"])[0]] == [f.id for f in expected]


def test_the_index_is_a_vector_store_that_adds_and_finds_documents(retriever):
    import copy

    store = copy.copy(retriever).as_vector_store()  # adding swaps new indexes into the copy only
    assert isinstance(store, VectorStore)
    assert [d.id for d in store.similarity_search(QUESTION, k=3)] == [f.id for f in retriever.retrieve(QUESTION, 3)]
    ids = store.add_texts(["The Kestrel Point lighthouse was kept by Elsa Brandt from 1887."], [{"title": "keeper"}],
                          ids=["keeper.md#1"])
    assert ids == ["keeper.md#1"] and len(retriever.index.passages) + 1 == len(store.retriever.index.passages)
    assert store.as_retriever(search_kwargs={"k": 1}).invoke("Who kept the lighthouse?")[0].id == "keeper.md#1"
    assert store.get_by_ids(["keeper.md#1"])[0].metadata["title"] == "keeper"
    with pytest.raises(NotImplementedError, match="lexical_weight=0"):
        store.similarity_search_with_relevance_scores(QUESTION)


def test_from_texts_builds_a_cosine_store(rag_encoder):
    texts = ["Basil is sown in April.", "The harbour railway opened in 1902.", "Rye bread is sold on Saturdays."]
    store = PassageVectorStore.from_texts(texts, EncoderEmbeddings(rag_encoder, "minilm"), ids=["a", "b", "c"])
    from pocketlm.rag.embeddings import encode

    (doc, relevance), *_ = store.similarity_search_with_relevance_scores("When did the railway open?", k=3)
    cosine = float(encode(rag_encoder, ["When did the railway open?"])[0] @ encode(rag_encoder, [texts[1]])[0])
    assert doc.id == "b" and relevance == pytest.approx((1 + cosine) / 2, abs=1e-5)
    chain = store.as_retriever(search_kwargs={"k": 1}) | RunnableLambda(cited_context)
    assert chain.invoke("When is basil sown?") == "[a] Basil is sown in April."
