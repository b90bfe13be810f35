"""Prepare the pretraining corpus: clean → byte-level BPE tokenizer → fixed-length chunks as JSONL.

    python training_scripts/prepare_corpus.py                      # WikiText-2 articles + SQuAD train paragraphs
    python training_scripts/prepare_corpus.py --corpus_dir my_texts/ --vocab_size 8000 --chunk_length 512 --stride 256

Writes `tokenizer/`, `train.jsonl`, `validation.jsonl` (`{"id", "input_ids"}` per chunk) and `stats.json` to
`--output_dir`, and prints coverage, chunk count and memory, plus a table for other stride/length ratios.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pocketlm.cli import parse_args_with_presets, run
from pocketlm.data.corpus import (
    default_corpus,
    default_prepared_dir,
    format_bytes,
    prepare_corpus,
    read_text_folder,
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


def main() -> None:
    (args,) = parse_args_with_presets([PrepareArguments], description=__doc__.splitlines()[0])
    try:
        ratios = [float(r) for r in args.stride_ratios.split(",") if r.strip()]
    except ValueError:
        raise SystemExit(f"error: --stride_ratios must be comma-separated numbers, got {args.stride_ratios!r}") from None
    if args.corpus_dir is None:
        documents = default_corpus(include_squad=args.include_squad is not False)
    else:
        documents = read_text_folder(args.corpus_dir)
        if args.include_squad:
            from pocketlm.data.registry import squad_json_path

            documents += squad_documents(squad_json_path("train"))
    output_dir = args.output_dir or default_prepared_dir()
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
    print(f"\nCoverage against memory for the train split ({prepared.train.tokens:,} tokens, length {args.chunk_length}):")
    print(stride_table_markdown(stride_table(prepared.train.tokens, args.chunk_length, ratios)))


if __name__ == "__main__":
    run(main)
