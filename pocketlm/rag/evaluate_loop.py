"""Evaluate the whole RAG loop on any `passages.jsonl` + `qa.jsonl` pair: retrieval, then answers.

Builds a flat index over the given passages (with the published query adapter if there is one, fused with
BM25 unless `--lexical_weight 0`), reports
recall@1/5/10 of the gold `passage_id`, then EM/F1 of two readers over the top-k fragments:
extractive (`pocketlm/minilm-squad`, when published; the span the agent picks, never abstaining) and generative
(the chain's prompt and generator). The agent itself, with its abstention and follow-ups, is measured by
`benchmarks/rag_answers.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pocketlm import MINILM_SQUAD, RAG_INDEX, TINY_LM_RAG_LORA
from pocketlm.benchmarking import markdown_table
from pocketlm.hub import ArtifactNotFoundError, resolve
from pocketlm.io import atomic_write_text, write_json
from pocketlm.rag.corpus import read_passages_and_questions
from pocketlm.rag.embeddings import encode, encoder_id, load_encoder
from pocketlm.rag.evaluation import KS, answer_report, extractive_answers, recall_at_k
from pocketlm.rag.index import IndexSpec, PassageIndex
from pocketlm.rag.lexical import HYBRID_WEIGHT
from pocketlm.rag.query_adapter import QueryAdapter
from pocketlm.rag.retriever import ADAPTER_FOLDER, RagRetriever
from pocketlm.settings import runs_dir


@dataclass
class LoopEvalConfig:
    passages: str = field(metadata={"help": "passages.jsonl (id, title, text per line)"})
    qa: str = field(metadata={"help": "qa.jsonl (id, question, answers, passage_id per line)"})
    encoder: str = field(default="minilm", metadata={"help": "sentence encoder for the index"})
    query_adapter: str = field(default=RAG_INDEX, metadata={"help": "a query adapter folder, an index id holding one, or 'none'"})
    lexical_weight: float = field(default=HYBRID_WEIGHT, metadata={"help": "weight of BM25 fused with the dense scores (0: dense only)"})
    reader: str = field(default=MINILM_SQUAD, metadata={"help": "extractive QA model ('none' to skip; skipped when not published)"})
    generator_lora: str = field(default=TINY_LM_RAG_LORA, metadata={"help": "generator LoRA ('none' for the base LM alone)"})
    generator_base: str | None = field(default=None, metadata={"help": "base LM of the generator (default: the LoRA's)"})
    k: int = field(default=3, metadata={"help": "fragments given to the readers"})
    max_questions: int = field(default=0, metadata={"help": "evaluate only the first N questions (0: all)"})
    output_dir: str | None = field(default=None, metadata={"help": "where results.json / results.md go (default: $POCKETLM_RUNS_DIR/rag-eval)"})


def _adapter(name: str) -> tuple[QueryAdapter | None, str]:
    if name.lower() == "none":
        return None, "none"
    try:
        folder = Path(resolve(name))
    except ArtifactNotFoundError:
        if name != RAG_INDEX:
            raise
        return None, f"none ({RAG_INDEX} is not published)"
    for candidate in (folder, folder / ADAPTER_FOLDER):
        if QueryAdapter.exists(candidate):
            return QueryAdapter.load(candidate), str(candidate)
    if name != RAG_INDEX:
        raise ArtifactNotFoundError(f"no query adapter in {folder}")
    return None, f"none ({RAG_INDEX} holds no adapter)"


def _reader_path(name: str) -> str | None:
    if name.lower() == "none":
        return None
    try:
        return resolve(name)
    except ArtifactNotFoundError:
        if name != MINILM_SQUAD:
            raise
        return None


def evaluate_loop(config: LoopEvalConfig) -> dict:
    """Run retrieval and both readers; write `results.json` and `results.md`; return the results."""
    from pocketlm.rag.generator import ANSWER_TOKENS, build_prompt, context_length, generate_answers, load_generator

    passages, questions = read_passages_and_questions(config.passages, config.qa)
    if config.max_questions:
        questions = questions[: config.max_questions]
    encoder = load_encoder(config.encoder)
    adapter, adapter_source = _adapter(config.query_adapter)
    started = time.perf_counter()
    index = PassageIndex.build(encode(encoder, [p.text for p in passages], show_progress=True, cache=True), passages, IndexSpec("flat"), encoder_id(config.encoder))
    build_s = time.perf_counter() - started
    retriever = RagRetriever(encoder, index, adapter, config.lexical_weight)
    texts = [q.question for q in questions]
    fragments = retriever.retrieve_batch(texts, max(max(KS), config.k))
    retrieval = recall_at_k([[f.id for f in frs] for frs in fragments], [q.passage_id for q in questions], KS)
    top = [frs[: config.k] for frs in fragments]
    gold_answers = [list(q.answers) for q in questions]

    readers: dict[str, dict] = {}
    reader_path = _reader_path(config.reader)
    if reader_path:
        predictions = extractive_answers(reader_path, texts, top)
        readers["extractive"] = {"model": config.reader, **answer_report(predictions, gold_answers)}
    model, tokenizer, description = load_generator(config.generator_lora, config.generator_base)
    budget = context_length(model) - ANSWER_TOKENS
    prompts = [build_prompt(tokenizer, q, frs, max_prompt_tokens=budget).text for q, frs in zip(texts, top)]
    predictions = generate_answers(model, tokenizer, prompts)
    readers["generative"] = {"model": description, **answer_report(predictions, gold_answers)}

    results = {
        "passages": {"path": str(config.passages), "count": len(passages)},
        "qa": {"path": str(config.qa), "count": len(questions)},
        "encoder": encoder_id(config.encoder),
        "query_adapter": adapter_source,
        "lexical_weight": config.lexical_weight,
        "embed_and_build_seconds": round(build_s, 2),  # embeddings come from the cache on a rerun
        "retrieval": retrieval,
        "readers": readers,
        "k": config.k,
        "examples": [
            {"question": q.question, "gold": list(q.answers), "retrieved": [f.id for f in frs], "generative": p}
            for q, frs, p in list(zip(questions, top, predictions))[:5]
        ],
    }
    skipped = "" if reader_path else f"\nExtractive reader skipped: {config.reader} is not available.\n"
    markdown = (
        f"# RAG loop evaluation\n\n{len(passages)} passages ({config.passages}), {len(questions)} questions ({config.qa}); "
        f"encoder {encoder_id(config.encoder)}, query adapter: {adapter_source}, BM25 weight {config.lexical_weight:g} (0: dense only).\n\n## Retrieval\n\n"
        + markdown_table([retrieval], [f"recall@{k}" for k in KS], ".3f")
        + f"\n## Answers (top {config.k} fragments)\n\n"
        + markdown_table([{"reader": name, **r} for name, r in readers.items()], ["reader", "model", "exact_match", "f1"], {"exact_match": ".1f", "f1": ".1f"})
        + skipped
    )
    results["markdown"] = markdown
    output_dir = Path(config.output_dir or runs_dir() / "rag-eval")
    write_json(output_dir / "results.json", results)
    atomic_write_text(output_dir / "results.md", markdown)
    return results
