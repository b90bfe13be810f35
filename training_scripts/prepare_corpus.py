"""Prepare the pretraining corpus: clean → byte-level BPE tokenizer → fixed-length chunks as JSONL.

    python training_scripts/prepare_corpus.py                      # WikiText-2 articles + SQuAD train paragraphs
    python training_scripts/prepare_corpus.py --corpus_dir my_texts/ --vocab_size 8000 --chunk_length 512 --stride 256

Writes `tokenizer/`, `train.jsonl`, `validation.jsonl` (`{"id", "input_ids"}` per chunk) and `stats.json` to
`--output_dir`, and prints coverage, chunk count and memory, plus a table for other stride/length ratios
(saved as `stride_table.md`; `--table_only` rebuilds it from an existing `stats.json` without re-preparing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pocketlm.cli import parse_args_with_presets, run
from pocketlm.data.corpus import (
    CorpusError,
    default_corpus,
    default_prepared_dir,
    format_bytes,
    prepare_corpus,
    read_text_folder,
    save_stride_table,
    squad_documents,
    stride_table,
    stride_table_markdown,
)


@dataclass
class PrepareArguments:
    corpus_dir: str | None = field(
        default=None, metadata={"help": "folder of plain-text articles (*.txt); default: the mirror's WikiText-2 articles"}
    )
    include_squad: bool | None = field(
        default=None, metadata={"help": "add SQuAD train's unique paragraphs (default: yes for the default corpus only)"}
    )
    output_dir: str | None = field(default=None, metadata={"help": "default: $POCKETLM_RUNS_DIR/corpus"})
    vocab_size: int = field(default=8000, metadata={"help": "BPE vocabulary size, special tokens included"})
    chunk_length: int = field(default=512, metadata={"help": "tokens per chunk"})
    stride: int | None = field(
        default=None, metadata={"help": "tokens between chunk starts (default: chunk_length; smaller overlaps, larger skips)"}
    )
    validation_ratio: float = field(default=0.05, metadata={"help": "share of characters held out, as whole documents"})
    seed: int = 0
    stride_ratios: str = field(
        default="0.25,0.5,0.75,1,1.5,2", metadata={"help": "stride/length ratios for the printed coverage-vs-memory table"}
    )
    table_only: bool = field(
        default=False, metadata={"help": "only rebuild the coverage-vs-memory table from --output_dir's stats.json"}
    )


def main() -> None:
    (args,) = parse_args_with_presets([PrepareArguments], description=__doc__.splitlines()[0])
    try:
        ratios = [float(r) for r in args.stride_ratios.split(",") if r.strip()]
    except ValueError:
        raise SystemExit(f"error: --stride_ratios must be comma-separated numbers, got {args.stride_ratios!r}") from None
    output_dir = Path(args.output_dir or default_prepared_dir())
    if args.table_only:
        stats_path = output_dir / "stats.json"
        if not stats_path.is_file():
            raise CorpusError(f"--table_only needs {stats_path}: prepare the corpus first")
        train = json.loads(stats_path.read_text())["train"]
        print_stride_table(output_dir, train["tokens"], train["length"], ratios)
        return
    if args.corpus_dir is None:
        documents = default_corpus(include_squad=args.include_squad is not False)
    else:
        documents = read_text_folder(args.corpus_dir)
        if args.include_squad:
            from pocketlm.data.registry import squad_json_path

            documents += squad_documents(squad_json_path("train"))
    print(f"{len(documents)} documents, {sum(len(d.text) for d in documents):,} characters after cleaning", flush=True)
    prepared = prepare_corpus(
        documents, output_dir, vocab_size=args.vocab_size, chunk_length=args.chunk_length,
        stride=args.stride, validation_ratio=args.validation_ratio, seed=args.seed,
    )
    for split, stats in (("train", prepared.train), ("validation", prepared.validation)):
        print(
            f"{split}: {prepared.documents[split]} documents, {stats.tokens:,} tokens -> {stats.chunks:,} chunks of "
            f"{stats.length} (stride {stats.stride}), coverage {stats.coverage:.1%}, memory {format_bytes(stats.memory_bytes)}"
        )
    print(f"tokenizer (vocab {prepared.vocab_size}) and chunks written to {prepared.output_dir}")
    print_stride_table(output_dir, prepared.train.tokens, args.chunk_length, ratios)


def print_stride_table(output_dir: Path, n_tokens: int, length: int, ratios: list[float]) -> None:
    table = stride_table_markdown(stride_table(n_tokens, length, ratios))
    print(f"\nCoverage against memory for the train split ({n_tokens:,} tokens, length {length}):")
    print(table)
    print(f"(saved to {save_stride_table(output_dir, table)})")


if __name__ == "__main__":
    run(main)
