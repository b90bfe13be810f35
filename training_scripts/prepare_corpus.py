"""Prepare the pretraining corpus: clean → byte-level BPE tokenizer → fixed-length chunks as JSONL.

    python training_scripts/prepare_corpus.py                      # WikiText-2 articles + SQuAD train paragraphs
    python training_scripts/prepare_corpus.py --corpus_dir my_texts/ --vocab_size 8000 --chunk_length 512 --stride 256
    python training_scripts/prepare_corpus.py --extra_corpus wikipedia-en-2014 --num_proc 2 \
        --tokenizer runs/corpus/tokenizer --output_dir runs/corpus-large  # + 50k Wikipedia articles, same tokenizer

The corpus is never held in memory: documents go through a memory-mapped `datasets` table (cleaned and
tokenized by `--num_proc` processes; `--streaming` keeps no Arrow copy on disk) into chunks written as they
are cut. With `--extra_corpus`, its text only adds training chunks: validation stays the base corpus's
held-out documents, so perplexities compare with runs on the default corpus.

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
    EXTRA_CORPORA,
    default_prepared_dir,
    default_source,
    format_bytes,
    prepare_corpus,
    save_stride_table,
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
    extra_corpus: str | None = field(
        default=None,
        metadata={"help": f"add this mirror corpus as training text only ({', '.join(EXTRA_CORPORA)}); validation stays the base corpus's"},
    )
    max_words: int = field(default=0, metadata={"help": "stop reading after this many words (base corpus first); 0 = all"})
    tokenizer: str | None = field(
        default=None, metadata={"help": "reuse this tokenizer (folder or hub id) instead of training one; --vocab_size is then ignored"}
    )
    num_proc: int = field(default=1, metadata={"help": "processes that clean and tokenize (not with --streaming)"})
    streaming: bool = field(
        default=False, metadata={"help": "read the corpus as a stream on every pass, keeping no Arrow copy on disk (slower)"}
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
    include_squad = args.include_squad if args.include_squad is not None else args.corpus_dir is None
    source = default_source(include_squad, args.corpus_dir, args.extra_corpus, args.max_words)
    prepared = prepare_corpus(
        source, output_dir, vocab_size=args.vocab_size, chunk_length=args.chunk_length,
        stride=args.stride, validation_ratio=args.validation_ratio, seed=args.seed,
        tokenizer=args.tokenizer, num_proc=args.num_proc, streaming=args.streaming,
        log=lambda message: print(message, flush=True),
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
