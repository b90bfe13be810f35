"""Evaluate the RAG loop on a `passages.jsonl` + `qa.jsonl` pair (the mirror's squad-rag-dev format).

    python training_scripts/evaluate_rag.py --passages ../shared/data/squad-rag-dev/passages.jsonl \
        --qa ../shared/data/squad-rag-dev/qa.jsonl

Builds a flat index over the passages, prints and writes recall@1/5/10 and answer EM/F1 (extractive with
`pocketlm/minilm-squad` when published, and generative) to `--output_dir` as results.json and results.md.
A missing file or a malformed line is reported in one line naming the file and the line.
"""

from __future__ import annotations

from pocketlm.cli import parse_args_with_presets, run
from pocketlm.rag.evaluate_loop import LoopEvalConfig, evaluate_loop


def main(args: list[str] | None = None) -> int:
    (config,) = parse_args_with_presets((LoopEvalConfig,), args=args, description=__doc__)
    if config.k < 1:
        raise SystemExit("error: --k must be at least 1")
    if not config.lexical_weight >= 0:
        raise SystemExit("error: --lexical_weight must be >= 0 (0: dense retrieval only)")
    results = evaluate_loop(config)
    print(results["markdown"])
    return 0


if __name__ == "__main__":
    run(main)
