"""Benchmark the retriever's query side: stock MiniLM, + query adapter, BM25, and the hybrid fusion of both.

    python benchmarks/rag_retriever.py      # writes benchmarks/results/rag_retriever/rag_retriever.{json,md,png}

1. Choose the hybrid weight on the SQuAD-*train* articles the query adapter was not trained on (the same
   article split as `train_query_adapter.py`, over all 2,400 train paragraphs): recall@1/5/10 and MRR@10 for
   each weight; the best MRR@10 is the default (`pocketlm.rag.lexical.HYBRID_WEIGHT`).
2. Measure on the 300 dev questions — never used for a choice — in the reference setting (a flat
   index over the 913 dev passages alone) and on the published index (with the WikiText distractors): each
   retriever's recall@1/5/10, MRR@10 and ms per query, through `RagRetriever` itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from pocketlm import RAG_INDEX
from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.hub import resolve
from pocketlm.rag.corpus import Passage, rag_dev, squad_train_set, split_by_title
from pocketlm.rag.embeddings import encode, load_encoder
from pocketlm.rag.index import IndexSpec, PassageIndex, recall_at_k
from pocketlm.rag.lexical import HYBRID_WEIGHT, LexicalIndex
from pocketlm.rag.query_adapter import QueryAdapter
from pocketlm.rag.retriever import ADAPTER_FOLDER, RagRetriever
from pocketlm.settings import REPO_ROOT

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
KS = (1, 5, 10)


def ranking_metrics(ranked: list[list[str]], gold: list[str]) -> dict[str, float]:
    """Recall@1/5/10 and MRR@10 of ranked passage ids against the gold ones."""
    top = [ids[: max(KS)] for ids in ranked]
    mrr = float(np.mean([1 / (ids.index(g) + 1) if g in ids else 0.0 for ids, g in zip(top, gold)]))
    return {**recall_at_k(top, gold, KS), "mrr@10": mrr}


def bm25_ranking(passages: list[Passage], questions: list[str]) -> list[list[str]]:
    scores = LexicalIndex([p.text for p in passages]).scores(questions)
    return [[passages[r].id for r in np.argsort(-row, kind="stable")[: max(KS)]] for row in scores]


def evaluate(retriever: RagRetriever, questions: list[str], gold: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    ranked = retriever.ranked_ids(questions, max(KS))
    return {**ranking_metrics(ranked, gold), "ms_per_query": 1000 * (time.perf_counter() - started) / len(questions)}


def retrievers(encoder, index: PassageIndex, adapter: QueryAdapter, weight: float) -> dict[str, RagRetriever]:
    return {
        "stock (dense)": RagRetriever(encoder, index, None, lexical_weight=0),
        "adapter (dense)": RagRetriever(encoder, index, adapter, lexical_weight=0),
        f"stock + BM25 (w={weight:g})": RagRetriever(encoder, index, None, lexical_weight=weight),
        f"adapter + BM25 (w={weight:g})": RagRetriever(encoder, index, adapter, lexical_weight=weight),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=RAG_INDEX, help="published index (id or folder) holding the query adapter")
    parser.add_argument("--held_out_fraction", type=float, default=0.1, help="as the adapter was trained (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="article split seed, as the adapter was trained (default: %(default)s)")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "rag_retriever"))
    args = parser.parse_args(argv)

    folder = Path(resolve(args.index))
    published = PassageIndex.load(folder, "flat.faiss")
    adapter = QueryAdapter.load(folder / ADAPTER_FOLDER)
    encoder = load_encoder(published.config["encoder"])

    # 1. The weight, on held-out SQuAD-train articles.
    train = squad_train_set()
    _, held_out = split_by_title(train.titles, args.held_out_fraction, args.seed)
    train_index = PassageIndex.build(encode(encoder, [p.text for p in train.passages], show_progress=True, cache=True),
                                     train.passages, IndexSpec("flat"), published.config["encoder"])
    questions = [train.questions[i] for i in held_out]
    gold = [train.passages[train.positives[i]].id for i in held_out]
    sweep = [{"weight": w, **evaluate(RagRetriever(encoder, train_index, adapter, lexical_weight=w), questions, gold)} for w in WEIGHTS]
    sweep.append({"weight": "BM25 only", **ranking_metrics(bm25_ranking(train.passages, questions), gold)})
    chosen = max((row for row in sweep if row["weight"] != "BM25 only"), key=lambda row: row["mrr@10"])["weight"]
    print(f"held-out SQuAD-train articles: best weight {chosen} (default in pocketlm.rag.lexical: {HYBRID_WEIGHT})", flush=True)

    # 2. The dev questions, in the reference setting and on the published index.
    dev_passages, dev_questions = rag_dev()
    dev_texts, dev_gold = [q.question for q in dev_questions], [q.passage_id for q in dev_questions]
    settings = {
        "913 dev passages (reference setting)": PassageIndex.build(
            encode(encoder, [p.text for p in dev_passages], cache=True), dev_passages, IndexSpec("flat"), published.config["encoder"]),
        f"published index, flat ({len(published.passages)} passages)": published,
        f"published index, OPQ ({len(published.passages)} passages)": PassageIndex.load(folder, "opq.faiss"),
    }
    dev = []
    for setting, index in settings.items():
        for name, retriever in retrievers(encoder, index, adapter, chosen).items():
            dev.append({"setting": setting, "retriever": name, **evaluate(retriever, dev_texts, dev_gold)})
        dev.append({"setting": setting, "retriever": "BM25 only", **ranking_metrics(bm25_ranking(index.passages, dev_texts), dev_gold)})

    metric_columns = [(f"recall@{k}", f"recall@{k}") for k in KS] + [("mrr@10", "MRR@10")]
    markdown = (
        "# RAG retriever: dense, query adapter, BM25, hybrid\n\n"
        f"## Choosing the BM25 weight: {len(questions)} questions of held-out SQuAD-train articles, "
        f"{len(train.passages)} train paragraphs, adapter queries\n\n"
        + markdown_table(sweep, [("weight", "BM25 weight"), *metric_columns])
        + f"\nBest MRR@10: weight {chosen}.\n\n## The 300 dev questions\n\n"
        + markdown_table(dev, [("setting", "index"), ("retriever", "retriever"), *metric_columns, ("ms_per_query", "ms/query")])
    )

    def plot(figure) -> None:
        reference = [row for row in dev if row["setting"].startswith("913")]
        ax = figure.add_subplot(1, 2, 1)
        x = np.arange(len(reference))
        for i, k in enumerate(KS):
            ax.bar(x + (i - 1) * 0.27, [row[f"recall@{k}"] for row in reference], 0.27, label=f"recall@{k}")
        ax.set_xticks(x, [row["retriever"].replace(" + ", "\n+ ") for row in reference], fontsize=7)
        ax.set_ylim(0.5, 1.0)
        ax.axhline(0.70, color="grey", linestyle=":", linewidth=1)
        ax.set_title("300 dev questions, 913 dev passages")
        ax.legend(fontsize=7)
        ax = figure.add_subplot(1, 2, 2)
        numeric = [row for row in sweep if row["weight"] != "BM25 only"]
        for k in KS:
            ax.plot([row["weight"] for row in numeric], [row[f"recall@{k}"] for row in numeric], "o-", label=f"recall@{k}")
        ax.set_xlabel("BM25 weight (0 = dense only)")
        ax.set_title("choosing the weight: held-out SQuAD-train articles")
        ax.legend(fontsize=7)

    figures = {"BM25 weight chosen on held-out SQuAD-train articles": f"{chosen} (default in pocketlm.rag.lexical: {HYBRID_WEIGHT})",
               **{f"{row['setting']}: {row['retriever']}": ", ".join(f"{header} {row[key]:.3f}" for key, header in metric_columns)
                  for row in dev}}
    write_results("rag_retriever", {"chosen_weight": chosen, "default_weight": HYBRID_WEIGHT, "sweep": sweep, "dev": dev}, markdown,
                  figures=figures, plot=plot, output_dir=args.output_dir)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
