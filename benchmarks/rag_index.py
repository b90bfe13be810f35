"""Benchmark the RAG index: flat vs OPQ settings, 384-d MiniLM vs 768-d mpnet, with and without the query adapter.

    python benchmarks/rag_index.py --query_adapter $POCKETLM_RUNS_DIR/query-adapter
    python benchmarks/rag_index.py --encoders minilm --max_distractors 100        # a quick look

For each encoder: embedding throughput (passages/s, measured uncached on 128 passages), then for the flat
index and each OPQ setting: size (MB, serialised), compression vs flat, build time, query time (300 dev
questions: batched ms/query and one-by-one p50 ms), recall@1/5/10 against the gold passages, and how often
the exact nearest passage is in the OPQ top-k. Writes rag_index.{json,md,png} under benchmarks/results/rag_index/
(or `--output_dir`). FAISS and torch run with their default threads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from pocketlm.benchmarking import markdown_table, write_results
from pocketlm.errors import PocketLMError
from pocketlm.rag.corpus import rag_dev, wikitext_distractors
from pocketlm.rag.embeddings import encode, encoder_id, load_encoder
from pocketlm.rag.evaluation import agreement_with_exact, retrieval_report
from pocketlm.rag.index import IndexSpec, PassageIndex
from pocketlm.rag.query_adapter import QueryAdapter
from pocketlm.settings import REPO_ROOT

SPECS = [
    IndexSpec("flat"),
    IndexSpec("opq", opq_dim=64, pq_m=8),
    IndexSpec("opq", opq_dim=64, pq_m=16),
    IndexSpec("opq", opq_dim=128, pq_m=32),
    IndexSpec("opq", opq_dim=96, pq_m=48),
    IndexSpec("opq", opq_dim=192, pq_m=48),
    IndexSpec("opq", opq_dim=128, pq_m=64),
    IndexSpec("opq", opq_dim=256, pq_m=64),
    IndexSpec("opq", opq_dim=64, pq_m=16, ivf_nlist=64, nprobe=8),
]
"""The flat baseline and OPQ settings from 8 to 64 bytes per vector and 2 to 8 dimensions per sub-quantiser; the
last adds IVF (64 lists ≈ √4,000)."""


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of `repeats` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def bench_encoder(name: str, passages, questions, adapter_dir: str | None, repeats: int, specs: list[IndexSpec]) -> list[dict]:
    encoder = load_encoder(name)
    texts = [p.text for p in passages]
    sample_s, _ = timed(lambda: encode(encoder, texts[:128]), 1)
    started = time.perf_counter()
    vectors = encode(encoder, texts, show_progress=True, cache=True)
    full_s = time.perf_counter() - started
    gold = [q.passage_id for q in questions]
    query_texts = [q.question for q in questions]
    query_s, stock = timed(lambda: encode(encoder, query_texts), 1)
    query_sets = {"stock": stock}
    if adapter_dir and QueryAdapter.exists(adapter_dir):
        adapter = QueryAdapter.load(adapter_dir)
        if adapter.dim == vectors.shape[1]:
            query_sets["adapter"] = adapter.transform(stock)
    common = {
        "encoder": encoder_id(name), "dim": int(vectors.shape[1]), "passages": len(passages),
        "embed_passages_per_s": 128 / sample_s, "embed_all_s": round(full_s, 2), "embed_query_ms": 1000 * query_s / len(questions),
    }
    rows, flat = [], None
    for spec in specs:
        build_s, index = timed(lambda: PassageIndex.build(vectors, passages, spec, common["encoder"]), repeats)
        if spec.kind == "flat":
            flat = index
        batch_s, _ = timed(lambda: index.search(stock, 10), repeats)
        single = [timed(lambda q=q: index.search(q[None], 10), 1)[0] for q in stock]
        row = {
            **common, "index": index.config["factory"], "bytes_per_vector": spec.pq_m * spec.pq_bits // 8 if spec.kind == "opq" else 4 * vectors.shape[1],
            "size_MB": index.size_mb, "compression": flat.size_mb / index.size_mb, "build_s": build_s,
            "query_batch_ms": 1000 * batch_s / len(stock), "query_single_p50_ms": 1000 * statistics.median(single),
        }
        for queries_name, query_vectors in query_sets.items():
            row.update({f"{queries_name}_{k}": v for k, v in retrieval_report(index, query_vectors, gold).items()})
            if spec.kind == "opq":
                row.update({f"{queries_name}_{k}": v for k, v in agreement_with_exact(index, flat, query_vectors).items()})
        row["recall@5_vs_flat_ratio"] = row["stock_recall@5"] / rows[0]["stock_recall@5"] if rows else 1.0
        rows.append(row)
        print(f"{name} {row['index']}: {row['size_MB']:.3f} MB, R@5 {row['stock_recall@5']:.3f}", flush=True)
    # The reference setting: stock MiniLM, flat index over the 913 dev passages alone.
    own = [i for i, p in enumerate(passages) if not p.id.startswith("wiki-")]
    dev_only = PassageIndex.build(vectors[own], [passages[i] for i in own], IndexSpec("flat"), common["encoder"])
    reference = {**common, "index": "Flat (913 dev passages only)", "passages": len(own)}
    for queries_name, query_vectors in query_sets.items():
        reference.update({f"{queries_name}_{k}": v for k, v in retrieval_report(dev_only, query_vectors, gold).items()})
    return rows + [reference]


def plot(rows: list[dict], figure) -> None:
    figure.set_size_inches(7, 4.5)
    ax = figure.add_subplot()
    for encoder in sorted({r["encoder"] for r in rows}):
        points = [r for r in rows if r["encoder"] == encoder and "size_MB" in r]
        ax.plot([r["size_MB"] for r in points], [r["stock_recall@5"] for r in points], "o", label=encoder)
        for r in points:
            ax.annotate(r["index"].replace(",PQ", "\nPQ"), (r["size_MB"], r["stock_recall@5"]), fontsize=6)
    ax.set_xscale("log")
    ax.set_xlabel("index size (MB, log scale)")
    ax.set_ylabel("recall@5 (300 dev questions)")
    ax.set_title(f"RAG index: size vs recall ({rows[0]['passages']} passages)")
    ax.grid(alpha=0.3)
    ax.legend()


def figures(rows: list[dict]) -> dict[str, str]:
    """Per encoder and index: size, compression and recall@5 against flat; the query adapter's recall@1."""
    lines = {}
    for row in rows:
        label = f"{row['encoder']}, {row['index']}"
        if row["index"] == "Flat":
            lines[label] = f"{row['size_MB']:.3f} MB, " + ", ".join(f"recall@{k} {row[f'stock_recall@{k}']:.3f}" for k in (1, 5, 10))
        elif "size_MB" in row:
            lines[label] = (f"{row['size_MB']:.3f} MB ({row['compression']:.1f}× smaller than flat), recall@5 "
                            f"{row['stock_recall@5']:.3f} ({row['recall@5_vs_flat_ratio']:.2f}× flat)")
        else:  # the reference setting: flat over the dev passages alone
            lines[label] = ", ".join(f"recall@{k} {row[f'stock_recall@{k}']:.3f}" for k in (1, 5, 10))
        if "adapter_recall@1" in row:
            lines[label] += f"; query adapter recall@1 {row['stock_recall@1']:.3f} → {row['adapter_recall@1']:.3f}"
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="minilm,mpnet", help="comma-separated: minilm (384-d), mpnet (768-d, optional extra)")
    parser.add_argument("--max_distractors", type=int, default=None, help="WikiText distractors (default: all)")
    parser.add_argument("--query_adapter", default=None, help="a trained query adapter folder (for the 384-d rows)")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    parser.add_argument("--opq", default=None,
                        help="only these OPQ settings, as M_DIM (e.g. 32_128,16_64); default: the whole sweep")
    parser.add_argument("--output_dir", default=str(REPO_ROOT / "benchmarks" / "results" / "rag_index"))
    args = parser.parse_args(argv)
    specs = SPECS
    if args.opq:
        try:
            chosen = [tuple(int(x) for x in item.split("_")) for item in args.opq.split(",")]
            specs = [IndexSpec("flat")] + [IndexSpec("opq", opq_dim=dim, pq_m=m) for m, dim in chosen]
        except (ValueError, PocketLMError) as err:
            parser.error(f"--opq takes M_DIM settings such as 32_128,16_64 ({err})")
    passages, questions = rag_dev()
    passages = passages + wikitext_distractors(args.max_distractors)
    rows, skipped = [], {}
    for name in [n.strip() for n in args.encoders.split(",") if n.strip()]:
        try:
            rows += bench_encoder(name, passages, questions, args.query_adapter, args.repeats, specs)
        except PocketLMError as err:  # the optional 768-d encoder may not be installed: say so in the results
            skipped[name] = str(err)
            print(f"skipped {name}: {err}", file=sys.stderr)
    if not rows:
        raise SystemExit("error: no encoder could be benchmarked: " + "; ".join(skipped.values()))
    columns = ["encoder", "index", "size_MB", "compression", "build_s", "query_batch_ms", "query_single_p50_ms",
               "stock_recall@1", "stock_recall@5", "stock_recall@10", "stock_1-recall@5_vs_flat", "recall@5_vs_flat_ratio"]
    adapter_columns = ["encoder", "index", "stock_recall@1", "adapter_recall@1", "stock_recall@5", "adapter_recall@5", "stock_recall@10", "adapter_recall@10"]
    recall = ".3f"  # recall@k of 300 questions: steps of 1/300
    formats = {column: recall for column in columns + adapter_columns if "recall" in column}
    encoders = markdown_table(
        [r for r in rows if r["index"] == "Flat"],
        ["encoder", "dim", "passages", "embed_passages_per_s", "embed_query_ms", "size_MB", "build_s", "query_batch_ms", "stock_recall@1", "stock_recall@5", "stock_recall@10"],
        formats | {"embed_passages_per_s": ".1f", "embed_query_ms": ".1f", "size_MB": ".3f", "build_s": ".3f", "query_batch_ms": ".4f"},
    )
    formats |= {"size_MB": ".3f", "compression": ".1f", "build_s": ".3f", "query_batch_ms": ".4f", "query_single_p50_ms": ".3f"}
    markdown = (
        f"# RAG index benchmark\n\n## Encoders\n\n{encoders}\n"
        f"## Indexes\n\n{markdown_table([r for r in rows if 'size_MB' in r], columns, formats)}\n"
        f"## Query adapter\n\n{markdown_table([r for r in rows if 'adapter_recall@1' in r], adapter_columns, formats)}"
        + "".join(f"\nSkipped {name}: {why}\n" for name, why in skipped.items())
    )
    write_results("rag_index", {"rows": rows, "skipped": skipped, "args": vars(args)}, markdown, figures=figures(rows),
                  plot=lambda figure: plot([r for r in rows if "size_MB" in r], figure), output_dir=args.output_dir)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
