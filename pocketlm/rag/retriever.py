"""`RagRetriever`: a question in, the top-k fragments (id, title, text, score) out.

The published `pocketlm/rag-index` folder holds everything it needs: the flat and OPQ FAISS indexes, the
passages, the encoder's id and the query adapter. By default the retriever is hybrid: the dense (FAISS)
candidates and BM25's are fused (`pocketlm.rag.lexical`); `lexical_weight=0` is dense retrieval alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pocketlm import RAG_INDEX
from pocketlm.errors import ConfigError
from pocketlm.hub import resolve
from pocketlm.rag.corpus import Passage
from pocketlm.rag.embeddings import encode, load_encoder
from pocketlm.rag.index import PassageIndex
from pocketlm.rag.lexical import CANDIDATES, HYBRID_WEIGHT, LexicalIndex, fuse
from pocketlm.rag.prompt import Fragment
from pocketlm.rag.query_adapter import QueryAdapter

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

INDEX_FILES = {"flat": "flat.faiss", "opq": "opq.faiss"}
ADAPTER_FOLDER = "query_adapter"


def embed_queries(encoder: "SentenceTransformer", adapter: QueryAdapter | None, queries: list[str]) -> np.ndarray:
    """Unit-length query vectors: the frozen encoder's, through the query adapter when there is one."""
    if adapter is None:
        return encode(encoder, queries)
    return adapter.embed(encoder, queries)


class RagRetriever:
    """Embed the question (frozen encoder, then the query adapter if any), search FAISS, fuse with BM25."""

    def __init__(
        self, encoder: "SentenceTransformer", index: PassageIndex, adapter: QueryAdapter | None = None,
        lexical_weight: float = HYBRID_WEIGHT,
    ):
        if adapter is not None and adapter.dim != index.dim:
            raise ConfigError(f"the query adapter is {adapter.dim}-d but the index is {index.dim}-d")
        if not lexical_weight >= 0:
            raise ConfigError(f"lexical_weight must be >= 0 (0: dense retrieval only), not {lexical_weight}")
        self.encoder = encoder
        self.index = index
        self.adapter = adapter
        self.lexical_weight = lexical_weight
        self.lexical = LexicalIndex([p.text for p in index.passages]) if lexical_weight else None

    @classmethod
    def from_pretrained(
        cls, repo_id_or_path: str = RAG_INDEX, index_type: str = "flat", use_adapter: bool = True,
        encoder: "SentenceTransformer | None" = None, lexical_weight: float = HYBRID_WEIGHT,
    ) -> RagRetriever:
        """Load a published index folder; `index_type` is `flat` or `opq`; `lexical_weight=0` for dense only."""
        if index_type not in INDEX_FILES:
            raise ConfigError(f"index_type must be one of {', '.join(INDEX_FILES)}, not {index_type!r}")
        folder = Path(resolve(repo_id_or_path))
        index = PassageIndex.load(folder, INDEX_FILES[index_type])
        adapter_folder = folder / ADAPTER_FOLDER
        adapter = QueryAdapter.load(adapter_folder) if use_adapter and QueryAdapter.exists(adapter_folder) else None
        return cls(encoder or load_encoder(index.config["encoder"]), index, adapter, lexical_weight)

    def add_passages(self, passages: list[Passage]) -> None:
        """Embed `passages` (the frozen encoder: the query adapter is for queries only) and add them, all or
        nothing: the extended FAISS and BM25 indexes are built aside and swapped in at the end. Not while another
        thread searches this retriever (it could see one new index and one old): add to a `copy.copy` of it then."""
        vectors = encode(self.encoder, [p.text for p in passages])
        index = self.index.extended(vectors, passages)
        lexical = LexicalIndex([p.text for p in index.passages]) if self.lexical is not None else None
        self.index, self.lexical = index, lexical

    def as_langchain(self, k: int = 3):
        """This retriever as a LangChain `BaseRetriever` (top-`k` passages as `Document`s), for users' own chains."""
        from pocketlm.rag.langchain_store import PassageRetriever

        return PassageRetriever(retriever=self, k=k)

    def as_vector_store(self):
        """The index as a LangChain `VectorStore` (search, add documents, get by id) sharing this retriever."""
        from pocketlm.rag.langchain_store import PassageVectorStore

        return PassageVectorStore(self)

    def embed_queries(self, queries: list[str]) -> np.ndarray:
        return embed_queries(self.encoder, self.adapter, queries)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and passage rows of the top-k for each query: FAISS's, or fused with BM25's (hybrid)."""
        if self.lexical is None:
            return self.index.search(self.embed_queries(queries), k)
        dense_scores, dense_rows = self.index.search(self.embed_queries(queries), max(k, CANDIDATES))
        return fuse(dense_scores, dense_rows, self.lexical.scores(queries), self.lexical_weight, k)

    def retrieve_batch(self, queries: list[str], k: int = 5) -> list[list[Fragment]]:
        scores, rows = self.search(queries, k)
        passages = self.index.passages
        return [
            [Fragment(passages[r].id, passages[r].title, passages[r].text, float(s)) for s, r in zip(srow, rrow) if r >= 0]
            for srow, rrow in zip(scores, rows)
        ]

    def retrieve(self, query: str, k: int = 5) -> list[Fragment]:
        """The top-k fragments for one query, best first."""
        return self.retrieve_batch([query], k)[0]

    def ranked_ids(self, queries: list[str], k: int = 10) -> list[list[str]]:
        _, rows = self.search(queries, k)
        return [[self.index.passages[r].id for r in row if r >= 0] for row in rows]
