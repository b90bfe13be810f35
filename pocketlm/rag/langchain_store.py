"""The RAG index in users' own LangChain chains: a `BaseRetriever`, a `VectorStore` and the encoder as `Embeddings`.

They wrap `RagRetriever`, so a chain gets the same ranking as the agent (hybrid dense + BM25, the query
adapter) unless asked otherwise. A passage comes out as a `Document` whose `id` is the passage id (the
one answers cite: `val-00-012`, `notes.md#3`) and whose metadata holds `id`, `title` and `score`.

    retriever = RagRetriever.from_pretrained("pocketlm/rag-index").as_langchain(k=3)
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore

from pocketlm.errors import ConfigError
from pocketlm.rag.corpus import Passage
from pocketlm.rag.embeddings import encode
from pocketlm.rag.prompt import Fragment

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from pocketlm.rag.retriever import RagRetriever


def fragment_document(fragment: Fragment) -> Document:
    return Document(fragment.text, id=fragment.id,
                    metadata={"id": fragment.id, "title": fragment.title, "score": fragment.score})


class PassageRetriever(BaseRetriever):
    """`RagRetriever` as a LangChain retriever: `invoke(question)` → the top-`k` passages as `Document`s."""

    retriever: Any
    """The `RagRetriever` searched."""
    k: int = 3

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [fragment_document(f) for f in self.retriever.retrieve(query, self.k)]


class EncoderEmbeddings(Embeddings):
    """A sentence-transformers encoder as LangChain `Embeddings`: unit-length vectors, as the index holds."""

    def __init__(self, encoder: "SentenceTransformer", name: str = ""):
        self.encoder, self.name = encoder, name

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return encode(self.encoder, list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class PassageVectorStore(VectorStore):
    """The index as a LangChain vector store: search it, add documents to it (all or nothing), get by id.

    Searching goes through the wrapped `RagRetriever`; with `lexical_weight=0` that is plain cosine
    similarity (and `similarity_search_with_relevance_scores` gives `(1 + cosine) / 2`), otherwise the hybrid ranking and its
    fused scores.
    """

    def __init__(self, retriever: "RagRetriever"):
        self.retriever = retriever

    @property
    def embeddings(self) -> Embeddings:
        return EncoderEmbeddings(self.retriever.encoder, self.retriever.index.config.get("encoder", ""))

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.get("ids") or [doc.id or f"doc-{uuid.uuid4().hex[:12]}" for doc in documents]
        if len(ids) != len(documents):
            raise ConfigError(f"{len(ids)} ids for {len(documents)} documents")
        passages = [Passage(str(i), str(doc.metadata.get("title", "")), doc.page_content) for i, doc in zip(ids, documents)]
        self.retriever.add_passages(passages)
        return [p.id for p in passages]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return [(fragment_document(f), f.score) for f in self.retriever.retrieve(query, k)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k)]

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        wanted = set(ids)
        return [fragment_document(Fragment(p.id, p.title, p.text)) for p in self.retriever.index.passages if p.id in wanted]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if self.retriever.lexical is not None:
            raise NotImplementedError("hybrid scores are fused z-scores, not relevances; use lexical_weight=0")
        return lambda similarity: (1.0 + similarity) / 2.0  # cosine in [-1, 1] → relevance in [0, 1]

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None, *,
                   ids: list[str] | None = None, lexical_weight: float = 0.0, **kwargs: Any) -> PassageVectorStore:
        """A new flat index over `texts`; `embedding` must be `EncoderEmbeddings` (the retriever embeds queries
        with the same sentence-transformers encoder)."""
        from pocketlm.rag.index import IndexSpec, PassageIndex
        from pocketlm.rag.retriever import RagRetriever

        if not isinstance(embedding, EncoderEmbeddings):
            raise ConfigError(f"PassageVectorStore embeds with a sentence-transformers encoder: pass EncoderEmbeddings, "
                              f"not {type(embedding).__name__}")
        texts = list(texts)
        if not texts:
            raise ConfigError("from_texts needs at least one text")
        metadatas = metadatas or [{} for _ in texts]
        ids = ids or [f"doc-{n}" for n in range(1, len(texts) + 1)]
        passages = [Passage(str(i), str(m.get("title", "")), t) for i, m, t in zip(ids, metadatas, texts, strict=True)]
        vectors = encode(embedding.encoder, texts)
        index = PassageIndex.build(vectors, passages, IndexSpec("flat"), encoder=embedding.name)
        return cls(RagRetriever(embedding.encoder, index, None, lexical_weight))

