"""Build, measure and publish `pocketlm/rag-index`: flat + OPQ FAISS indexes, passages, query adapter, card."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pocketlm.benchmarking import markdown_table
from pocketlm.errors import ConfigError
from pocketlm.hub import ModelCardInfo, publish
from pocketlm.io import write_json
from pocketlm.rag.corpus import rag_dev, read_passages_and_questions, wikitext_distractors
from pocketlm.rag.embeddings import encode, encoder_id, load_encoder
from pocketlm.rag.evaluation import KS, agreement_with_exact, retrieval_report
from pocketlm.rag.index import IndexSpec, PassageIndex, recall_at_k
from pocketlm.rag.query_adapter import QueryAdapter
from pocketlm.rag.retriever import ADAPTER_FOLDER, INDEX_FILES, RagRetriever, embed_queries

EVAL_NAME = "retrieval_eval.json"


@dataclass
class IndexBuildConfig:
    passages: str | None = field(default=None, metadata={"help": "passages.jsonl to index (default: the mirror's squad-rag-dev passages)"})
    qa: str | None = field(default=None, metadata={"help": "qa.jsonl of questions to measure recall with (default: the squad-rag-dev questions)"})
    encoder: str = field(default="minilm", metadata={"help": "minilm (384-d, default), mpnet (768-d, optional extra), a Hub id or a path"})
    max_distractors: int | None = field(default=None, metadata={"help": "WikiText paragraphs to add (default: all, about 3,100)"})
    min_words: int = field(default=40, metadata={"help": "shortest WikiText paragraph kept as a distractor"})
    opq_dim: int = field(default=128, metadata={"help": "OPQ output dimension (see pocketlm.rag.index for the choice)"})
    pq_m: int = field(default=32, metadata={"help": "PQ sub-quantisers (bytes per vector at 8 bits)"})
    pq_bits: int = field(default=8, metadata={"help": "bits per PQ sub-quantiser code"})
    ivf_nlist: int = field(default=0, metadata={"help": "IVF lists for the OPQ index (0: none)"})
    nprobe: int = field(default=8, metadata={"help": "IVF lists probed per query"})
    query_adapter: str | None = field(default=None, metadata={"help": "folder of a trained query adapter to publish with the index"})
    batch_size: int = field(default=64, metadata={"help": "encoding batch size"})
    seed: int = field(default=0, metadata={"help": "seed of the distractor sample and of OPQ/PQ training"})

    def opq_spec(self) -> IndexSpec:
        return IndexSpec("opq", self.opq_dim, self.pq_m, self.pq_bits, self.ivf_nlist, self.nprobe)


@dataclass
class BuiltIndexes:
    """One build: the corpus, the encoder, both indexes over the same vectors, the optional query adapter."""

    config: IndexBuildConfig
    passages: list
    questions: list
    n_own: int  # passages from the RAG set itself; the rest are WikiText distractors
    encoder: object
    encoder_name: str
    adapter: QueryAdapter | None
    vectors: object
    embed_s: float
    indexes: dict[str, PassageIndex]

    @property
    def n_distractors(self) -> int:
        return len(self.passages) - self.n_own

    @property
    def compression(self) -> float:
        return self.indexes["flat"].size_mb / self.indexes["opq"].size_mb


@dataclass
class IndexEvaluation:
    """Sizes and recall of every (index, queries) pair, as table rows and as the card's flat metrics."""

    size_rows: list[dict]
    recall_rows: list[dict]
    metrics: dict
    hybrid_name: str  # the row label of `RagRetriever`'s default: the dense queries fused with BM25

    def tables(self) -> tuple[str, str]:
        columns = ["index", "queries", "recall@1", "recall@5", "recall@10", "1-recall@1_vs_flat", "1-recall@5_vs_flat"]
        size_table = markdown_table(self.size_rows, ["index", "factory", "size_MB", "build_s"],
                                    {"size_MB": ".3f", "build_s": ".2f"})
        return size_table, markdown_table(self.recall_rows, columns, ".3f")


def build_and_publish_index(config: IndexBuildConfig, repo_id: str, push_to_hub: bool = False, token: str | None = None) -> tuple[Path, str]:
    """Embed, build both indexes, evaluate on the 300 dev questions, publish; returns the folder and a report."""
    built = build_indexes(config)
    evaluation = evaluate_indexes(built)
    size_table, recall_table = evaluation.tables()
    summary = {
        "encoder": built.encoder_name,
        "passages": len(built.passages),
        "questions": len(built.questions),
        "embed_seconds": round(built.embed_s, 2),
        "config": asdict(config),
        "sizes": evaluation.size_rows,
        "recall": evaluation.recall_rows,
    }
    report = (
        f"{len(built.passages)} passages ({built.n_distractors} WikiText distractors), {built.encoder_name}, "
        f"{built.vectors.shape[1]}-d; embedding took {built.embed_s:.1f} s\n\n{size_table}\n"
        f"OPQ is {built.compression:.1f}x smaller than flat.\n\n{recall_table}"
    )

    def save(folder: Path) -> None:
        for kind, ix in built.indexes.items():
            ix.save(folder, INDEX_FILES[kind])
        if built.adapter is not None:
            built.adapter.save(folder / ADAPTER_FOLDER, encoder=built.encoder_name,
                               trained_from=str(config.query_adapter))
        write_json(folder / EVAL_NAME, summary)

    card = _index_card(built, evaluation, repo_id)
    folder = publish(repo_id, save, card, push_to_hub=push_to_hub, token=token)
    return folder, report


def build_indexes(config: IndexBuildConfig) -> BuiltIndexes:
    """Read the passages (+ distractors), check the adapter fits the encoder *before* the long embedding
    step, embed every passage once and build the exact and the compressed index from the same vectors."""
    if (config.passages is None) != (config.qa is None):
        raise ConfigError("give both --passages and --qa, or neither (for the mirror's squad-rag-dev set)")
    passages, questions = read_passages_and_questions(config.passages, config.qa) if config.passages else rag_dev()
    n_own = len(passages)
    if config.max_distractors != 0:
        passages = passages + wikitext_distractors(config.max_distractors, config.min_words, config.seed)
    encoder = load_encoder(config.encoder)
    name = encoder_id(config.encoder)
    adapter = QueryAdapter.load(config.query_adapter) if config.query_adapter else None
    if adapter is not None and adapter.dim != encoder.get_embedding_dimension():
        raise ConfigError(f"--query_adapter is {adapter.dim}-d but {name} gives {encoder.get_embedding_dimension()}-d vectors")

    started = time.perf_counter()
    vectors = encode(encoder, [p.text for p in passages], config.batch_size, show_progress=True, cache=True)
    embed_s = time.perf_counter() - started
    indexes = {
        "flat": PassageIndex.build(vectors, passages, IndexSpec("flat"), name),
        "opq": PassageIndex.build(vectors, passages, config.opq_spec(), name, config.seed),
    }
    return BuiltIndexes(config, passages, questions, n_own, encoder, name, adapter, vectors, embed_s, indexes)


def evaluate_indexes(built: BuiltIndexes) -> IndexEvaluation:
    """Recall@k of each index with the stock (and adapted) query vectors, how closely OPQ follows the exact
    index, and the hybrid (dense + BM25) ranking that `RagRetriever` serves by default."""
    indexes = built.indexes
    gold = [q.passage_id for q in built.questions]
    texts = [q.question for q in built.questions]
    query_sets = {"stock": embed_queries(built.encoder, None, texts)}
    if built.adapter is not None:
        query_sets["adapter"] = embed_queries(built.encoder, built.adapter, texts)

    size_rows = [
        {"index": kind, "factory": ix.config["factory"], "size_MB": ix.size_mb, "build_s": ix.config["build_seconds"]}
        for kind, ix in indexes.items()
    ]
    recall_rows, metrics = [], {}
    for queries_name, query_vectors in query_sets.items():
        for kind, ix in indexes.items():
            row = {"index": kind, "queries": queries_name, **retrieval_report(ix, query_vectors, gold)}
            if kind == "opq":
                row.update(agreement_with_exact(ix, indexes["flat"], query_vectors))
            recall_rows.append(row)
            metrics.update({f"{kind}_{queries_name}_{k}": v for k, v in row.items() if k.startswith(("recall", "1-recall"))})
    # What `RagRetriever` does by default: the same queries, fused with BM25 (see pocketlm.rag.lexical).
    hybrid_name = f"{'adapter' if built.adapter is not None else 'stock'}+bm25"
    for kind, ix in indexes.items():
        ranked = RagRetriever(built.encoder, ix, built.adapter).ranked_ids(texts, max(KS))
        row = {"index": kind, "queries": hybrid_name, **recall_at_k(ranked, gold, KS)}
        recall_rows.append(row)
        metrics.update({f"{kind}_{hybrid_name}_{k}": v for k, v in row.items() if k.startswith("recall")})
    flat_mb, opq_mb = indexes["flat"].size_mb, indexes["opq"].size_mb
    metrics.update({"flat_size_MB": flat_mb, "opq_size_MB": opq_mb, "compression": flat_mb / opq_mb})
    return IndexEvaluation(size_rows, recall_rows, metrics, hybrid_name)


def _index_card(built: BuiltIndexes, evaluation: IndexEvaluation, repo_id: str) -> ModelCardInfo:
    config, name, n_passages = built.config, built.encoder_name, len(built.passages)
    size_table, recall_table = evaluation.tables()
    return ModelCardInfo(
        title="pocketlm RAG index (FAISS flat + OPQ, with a query adapter)",
        summary=(
            f"{n_passages} passages — {built.n_own} paragraphs of {'the SQuAD v1.1 RAG dev set' if config.passages is None else config.passages} and "
            f"{built.n_distractors} WikiText-2 paragraphs as distractors — embedded with `{name}` "
            f"({built.vectors.shape[1]}-d, unit length, inner product) in an exact `IndexFlatIP` and a compressed "
            f"`{built.indexes['opq'].config['factory']}` index ({built.compression:.1f}x smaller)."
            + (" A bottleneck query adapter trained on SQuAD train questions adapts the query vectors." if built.adapter else "")
        ),
        how_to_load=(
            "from pocketlm.rag.retriever import RagRetriever\n\n"
            f"retriever = RagRetriever.from_pretrained({repo_id!r}, index_type='flat')  # or 'opq'\n"
            "for fragment in retriever.retrieve('Which team won Super Bowl 50?', k=5):\n"
            "    print(fragment.id, fragment.score, fragment.text[:80])"
        ),
        pipeline_tag="sentence-similarity",
        eval_dataset="rajpurkar/squad",
        eval_dataset_name="SQuAD v1.1 RAG dev set (300 questions with a gold passage)",
        eval_split="validation",
        metrics=evaluation.metrics,
        datasets=["rajpurkar/squad", "Salesforce/wikitext"],
        base_model=name,
        library_name="sentence-transformers",
        tags=["rag", "faiss", "opq", "retrieval"],
        template="rag_index.md",
        sections={
            "Indexes": size_table + f"\nEmbedding {n_passages} passages took {built.embed_s:.1f} s (0 s when cached).",
            "Retrieval on the 300 dev questions": recall_table
            + "\n`queries`: `stock` = the frozen encoder, `adapter` = through the query adapter, "
            f"`{evaluation.hybrid_name}` = `RagRetriever`'s default, those candidates fused with BM25's. "
            "`1-recall@k_vs_flat`: share of questions whose exact (flat) nearest passage is in the OPQ top k.",
        },
    )
