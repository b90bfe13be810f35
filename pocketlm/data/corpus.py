"""Corpus preparation for pretraining: read → clean → split by document → tokenize → fixed-length chunks.

The corpus never has to fit in memory. Documents are read lazily into a `datasets` Arrow table on disk
(memory-mapped), cleaned and tokenized by `Dataset.map(num_proc=…)`, and cut into chunks by a `ChunkWriter`
that streams them to JSONL. With `streaming=True` nothing is cached on disk either: the source is read as an
`IterableDataset`, once per pass (split, tokenizer training, chunking), for corpora larger than the disk cache.

* `clean_text` transliterates to ASCII with `anyascii` ("Beyoncé" → "Beyonce", "naïve" → "naive"), then
  drops whatever is still not ASCII — so accents keep their letters instead of vanishing.
* `CorpusSource` says where the raw documents come from, in a fixed order: a folder of `*.txt` articles,
  SQuAD's unique paragraphs grouped back into one document per article, documents already in memory, and
  *extra* training text (the mirror's Wikipedia shards). `default_source` is the default corpus: the
  mirror's WikiText-2 articles plus SQuAD train.
* `held_out_names` holds out whole base documents for validation (chosen by a hash of the document name), so
  overlapping chunks never leak the same text into both splits. Extra text is never held out: the
  validation set, and the perplexities measured on it, stay those of the base corpus.
* Documents are joined with the EOS token; `chunk_starts` says where the fixed-length chunks start (every
  `stride` tokens). `stride < length` overlaps chunks (more contexts per token, more memory); `stride >
  length` skips tokens (less memory, lower coverage). `ChunkStats` reports coverage (share of corpus tokens
  that land in some chunk), chunk count and the memory the chunks take as int64 ids.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from anyascii import anyascii

from pocketlm.data.chunks import ChunkWriter, read_chunks_jsonl, write_chunks_jsonl  # noqa: F401 (their home is chunks.py)
from pocketlm.errors import PocketLMError
from pocketlm.io import write_dir
from pocketlm.settings import runs_dir

BYTES_PER_TOKEN_ID = 8
"""Chunks become int64 tensors (what `torch.tensor` and the collator make), so each id costs 8 bytes in memory."""


def default_prepared_dir() -> Path:
    """Where `training_scripts/prepare_corpus.py` writes, and `training_scripts/pretrain.py` reads, by default."""
    return runs_dir() / "corpus"


class CorpusError(PocketLMError, ValueError):
    """The corpus cannot be prepared: a missing or empty folder, or too little text for one chunk."""


@dataclass(frozen=True)
class Document:
    name: str
    """A stable name (file name, SQuAD article title): the train/validation split is a hash of it."""
    text: str


# ---------------------------------------------------------------- cleaning and reading


def clean_text(text: str) -> str:
    """Transliterate to ASCII, drop what has no ASCII form, and normalise line ends.

    `anyascii` maps almost every character to its closest ASCII spelling (é → e, “ → ", ½ → 1/2, 北京 →
    BeiJing); the final `encode("ascii", "ignore")` is a safety net for anything it leaves behind.
    """
    text = anyascii(text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.encode("ascii", "ignore").decode("ascii").strip()


def _text_files(folder: Path) -> Iterator[Document]:
    for path in sorted(folder.rglob("*.txt")):
        yield Document(str(path.relative_to(folder)), path.read_text(encoding="utf-8", errors="replace"))


def _squad_articles(squad_json: str | Path) -> Iterator[Document]:
    """SQuAD repeats each paragraph once per question; keeping each once, in order, gives plain article text."""
    from pocketlm.data.registry import read_squad_json

    paragraphs: dict[str, list[str]] = {}
    seen: set[str] = set()
    for record in read_squad_json(squad_json):
        if record["context"] not in seen:
            seen.add(record["context"])
            paragraphs.setdefault(record["title"], []).append(record["context"])
    for title, parts in paragraphs.items():
        yield Document(f"squad/{title}", "\n\n".join(parts))


def _wikipedia_articles(shard: str | Path) -> Iterator[Document]:
    """The articles of one gzip shard of the mirror's Wikipedia: each opens with a `= Title =` line that
    follows a blank line (or starts the file), as the shard's SOURCE.md describes."""
    title, lines, after_blank = None, [], True
    with gzip.open(shard, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if after_blank and line.startswith("= ") and line.endswith(" ="):
                if title is not None:
                    yield Document(f"wikipedia/{title}", "\n".join(lines))
                title, lines = line[2:-2].strip(), []
            lines.append(line)
            after_blank = not line.strip()
    if title is not None:
        yield Document(f"wikipedia/{title}", "\n".join(lines))


@dataclass(frozen=True)
class CorpusSource:
    """Where a corpus's raw documents come from, read lazily and always in the same order.

    The *base* documents (the text folder's files, then SQuAD's articles, then `documents`) are split into
    train and validation; the *extra* ones (`extra_shards`, Wikipedia gzip shards) only add training text.
    `max_words` (0 = no limit) stops reading after the document that brings the count of words
    (whitespace-separated, in the raw text) to that many — base documents first. Frozen and small, so
    `datasets` can pickle it into the process that writes the Arrow table.
    """

    text_folder: str | None = None
    squad_json: str | None = None
    documents: tuple[Document, ...] = ()
    extra_shards: tuple[str, ...] = ()
    max_words: int = 0

    def check(self) -> None:
        """Raise `CorpusError` naming what is missing, before any slow work."""
        if self.text_folder is not None:
            folder = Path(self.text_folder).expanduser()
            if not folder.is_dir():
                raise CorpusError(f"corpus folder not found: {folder}")
            if next(folder.rglob("*.txt"), None) is None:
                raise CorpusError(f"corpus folder {folder} has no non-empty .txt files")
        for path in ([self.squad_json] if self.squad_json else []) + list(self.extra_shards):
            if not Path(path).is_file():
                raise CorpusError(f"corpus file not found: {path}")
        if self.max_words < 0:
            raise CorpusError(f"--max_words must be 0 (no limit) or positive, got {self.max_words}")

    def raw_documents(self) -> Iterator[dict]:
        """`{"name", "text", "extra", "words"}` per document, text as read (cleaning is a later step)."""
        words = 0
        for extra, document in self._documents():
            if self.max_words and words >= self.max_words:
                return
            count = len(document.text.split())
            words += count
            yield {"name": document.name, "text": document.text, "extra": extra, "words": count}

    def _documents(self) -> Iterator[tuple[bool, Document]]:
        if self.text_folder is not None:
            yield from ((False, doc) for doc in _text_files(Path(self.text_folder).expanduser()))
        if self.squad_json is not None:
            yield from ((False, doc) for doc in _squad_articles(self.squad_json))
        yield from ((False, doc) for doc in self.documents)
        for shard in self.extra_shards:
            yield from ((True, doc) for doc in _wikipedia_articles(shard))


EXTRA_CORPORA = ("wikipedia-en-2014",)
"""Corpora that `--extra_corpus` adds as training text."""


def default_source(include_squad: bool = True, text_folder: str | Path | None = None, extra_corpus: str | None = None,
                   max_words: int = 0) -> CorpusSource:
    """The default corpus (the mirror's WikiText-2 articles, or `text_folder`; plus SQuAD train's paragraphs),
    optionally followed by an extra corpus from the mirror as training text."""
    from pocketlm.data.registry import DatasetNotFoundError, corpus_folder, squad_json_path, wikipedia_shards

    squad = None
    if include_squad:
        squad = squad_json_path("train")
        if squad is None:
            raise DatasetNotFoundError("SQuAD train JSON not found in the data mirror (squad-v1.1/train.json)")
    shards: list[Path] = []
    if extra_corpus is not None:
        if extra_corpus not in EXTRA_CORPORA:
            raise CorpusError(f"--extra_corpus must be one of {', '.join(EXTRA_CORPORA)}, got {extra_corpus!r}")
        shards = wikipedia_shards()
    return CorpusSource(
        text_folder=str(text_folder if text_folder is not None else corpus_folder()),
        squad_json=str(squad) if squad else None,
        extra_shards=tuple(map(str, shards)),
        max_words=max_words,
    )


def _cleaned(source: CorpusSource) -> list[Document]:
    source.check()
    documents = [Document(row["name"], clean_text(row["text"])) for row in source.raw_documents()]
    return [doc for doc in documents if doc.text]


def read_text_folder(folder: str | Path) -> list[Document]:
    """Every `*.txt` file under `folder` (sorted, recursive) as a cleaned document, in memory; empty ones are
    skipped. For small folders: `prepare_corpus` reads a `CorpusSource(text_folder=…)` lazily instead.

    Raises `CorpusError` naming the folder when it does not exist or holds no non-empty text file.
    """
    documents = _cleaned(CorpusSource(text_folder=str(folder)))
    if not documents:
        raise CorpusError(f"corpus folder {Path(folder).expanduser()} has no non-empty .txt files")
    return documents


def squad_documents(squad_json: str | Path) -> list[Document]:
    """The unique context paragraphs of a SQuAD JSON file, one cleaned document per article (title), in memory."""
    return _cleaned(CorpusSource(squad_json=str(squad_json)))


# ---------------------------------------------------------------- splitting and chunking


def _unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from `parts` (stable across runs and machines, unlike `hash()`)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def held_out_names(lengths: Sequence[tuple[str, int]], validation_ratio: float, seed: int = 0) -> set[str]:
    """The documents to hold out, from (name, characters) pairs: whole documents until they hold
    `validation_ratio` of the characters (always leaving one for training).

    Documents are visited in the order of a hash of their name, so the split is deterministic, independent
    of file order, and keeps every article entirely on one side. Needs only names and lengths, never texts.
    """
    if not 0 <= validation_ratio < 1:
        raise CorpusError(f"--validation_ratio must be in [0, 1), got {validation_ratio}")
    total = sum(length for _, length in lengths)
    held_out: set[str] = set()
    held_chars = 0
    for name, length in sorted(lengths, key=lambda pair: _unit_hash(seed, pair[0])):
        if held_chars >= validation_ratio * total or len(held_out) == len(lengths) - 1:
            break
        held_out.add(name)
        held_chars += length
    return held_out


def chunk_starts(n_tokens: int, length: int, stride: int) -> range:
    """Start offsets of the full `length`-token chunks taken every `stride` tokens (a partial tail is dropped)."""
    if length < 2:
        raise CorpusError(f"--chunk_length must be at least 2, got {length}")
    if stride < 1:
        raise CorpusError(f"--stride must be at least 1, got {stride}")
    return range(0, max(n_tokens - length + 1, 0), stride)


@dataclass(frozen=True)
class ChunkStats:
    tokens: int
    chunks: int
    covered_tokens: int
    length: int
    stride: int

    @property
    def coverage(self) -> float:
        """Share of the stream's tokens that land in at least one chunk."""
        return self.covered_tokens / self.tokens if self.tokens else 0.0

    @property
    def copies_per_token(self) -> float:
        """How many chunks hold an average token: above 1, overlap shows tokens again in other contexts."""
        return self.chunks * self.length / self.tokens if self.tokens else 0.0

    @property
    def memory_bytes(self) -> int:
        """Memory of the chunks as int64 token ids (overlap stores shared tokens again)."""
        return self.chunks * self.length * BYTES_PER_TOKEN_ID

    def as_dict(self) -> dict:
        return {
            **asdict(self), "coverage": self.coverage, "copies_per_token": self.copies_per_token,
            "memory_bytes": self.memory_bytes,
        }


def chunk_stats(n_tokens: int, length: int, stride: int) -> ChunkStats:
    """Chunk count, coverage and memory of chunking an `n_tokens` stream — without building the chunks."""
    starts = chunk_starts(n_tokens, length, stride)
    if not starts:
        return ChunkStats(n_tokens, 0, 0, length, stride)
    last_end = starts[-1] + length
    # Each chunk covers [start, start + length); with gaps (stride > length) only `length` of every stride.
    covered = last_end if stride <= length else len(starts) * length
    return ChunkStats(n_tokens, len(starts), covered, length, stride)


PREPARED_NAMES = {"tokenizer", "train.jsonl", "validation.jsonl", "stats.json", "stride_table.md"}
"""What `prepare_corpus` (and the script's table) write: a folder holding only these may be replaced whole."""


def format_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


# ---------------------------------------------------------------- the whole preparation


@dataclass
class PreparedCorpus:
    """What `prepare_corpus` wrote and measured; `stats.json` in the output folder holds the same."""

    output_dir: Path
    train: ChunkStats
    validation: ChunkStats
    documents: dict[str, int]
    vocab_size: int
    words: int = 0
    """Words (whitespace-separated, raw text) of every document read, extra text included."""
    extra_words: int = 0
    """Of those, the words of the `--extra_corpus` documents (training text only)."""
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "train": self.train.as_dict(),
            "validation": self.validation.as_dict(),
            "documents": self.documents,
            "vocab_size": self.vocab_size,
            "words": self.words,
            "extra_words": self.extra_words,
            "seconds": round(self.seconds, 2),
        }


def _clean_batch(batch: dict) -> dict:
    """`Dataset.map` step: clean each text, drop the documents left empty, and record their lengths."""
    cleaned = [clean_text(text) for text in batch["text"]]
    keep = [i for i, text in enumerate(cleaned) if text]
    return {
        "name": [batch["name"][i] for i in keep], "text": [cleaned[i] for i in keep],
        "extra": [batch["extra"][i] for i in keep], "words": [batch["words"][i] for i in keep],
        "chars": [len(cleaned[i]) for i in keep],
    }


def _tokenize_batch(batch: dict, tokenizer) -> dict:
    """`Dataset.map` step: each document's token ids followed by EOS (where one document ends and the next begins).

    The fast tokenizer's backend, called directly, encodes the batch in parallel and does not warn that an
    article is longer than `model_max_length` (it is meant to be: chunking comes next).
    """
    encoded = tokenizer.backend_tokenizer.encode_batch(batch["text"], add_special_tokens=False)
    return {"input_ids": [[*enc.ids, tokenizer.eos_token_id] for enc in encoded]}


def _generate_documents(source: CorpusSource) -> Iterator[dict]:
    yield from source.raw_documents()


@contextmanager
def _quiet_datasets():
    """No `datasets` progress bars: the script prints one line per step, and errors stay one line."""
    import datasets

    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()


@contextmanager
def _one_thread_per_process(num_proc: int):
    """With several map processes, let each tokenize on one thread: forked from a parent whose tokenizer
    already used all cores, they would otherwise warn, and oversubscribe the CPU (unless the user chose)."""
    unset = num_proc > 1 and "TOKENIZERS_PARALLELISM" not in os.environ
    if unset:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if unset:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)


TOKENIZE_BATCH_DOCUMENTS = 32
"""Documents per tokenizer call, and per batch of token ids read back as Python lists. A batch's encodings
(ids, offsets, token strings) briefly take ~100 bytes a token; at `datasets`' default of 1,000 documents one
batch would be the whole default corpus (164 long articles)."""


class _Pipeline:
    """The steps of one preparation over a `datasets` table: on disk (`Dataset`, mapped with `num_proc`
    processes) or streamed (`IterableDataset`, recomputed on every pass, nothing cached)."""

    def __init__(self, source: CorpusSource, work_dir: Path, num_proc: int, streaming: bool):
        import datasets

        self.num_proc, self.streaming = num_proc, streaming
        features = datasets.Features({"name": datasets.Value("string"), "text": datasets.Value("string"),
                                      "extra": datasets.Value("bool"), "words": datasets.Value("int64")})
        if streaming:
            raw = datasets.IterableDataset.from_generator(_generate_documents, features=features, gen_kwargs={"source": source})
        else:  # a fresh cache folder and fingerprint: nothing is reused from an earlier run on changed files
            raw = datasets.Dataset.from_generator(_generate_documents, features=features, gen_kwargs={"source": source},
                                                  cache_dir=str(work_dir), fingerprint=uuid.uuid4().hex)
        self.documents = self.map(raw, _clean_batch, remove_columns=list(features))

    def map(self, table, function: Callable, **kwargs):
        import datasets

        if not isinstance(table, datasets.Dataset):
            return table.map(function, batched=True, **kwargs)
        with _one_thread_per_process(self.num_proc):
            return table.map(function, batched=True, num_proc=self.num_proc if self.num_proc > 1 else None,
                             new_fingerprint=uuid.uuid4().hex, **kwargs)

    @staticmethod
    def rows(table, columns: list[str], batch_size: int = 1000) -> Iterator[dict]:
        """The rows of `table` restricted to `columns`, read a batch at a time (Arrow pages or a stream)."""
        for batch in table.select_columns(columns).iter(batch_size=batch_size):
            yield from (dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns)))

    def tokenized(self, tokenizer):
        import datasets

        features = datasets.Features({"name": datasets.Value("string"), "extra": datasets.Value("bool"),
                                      "input_ids": datasets.Sequence(datasets.Value("int32"))})
        return self.map(self.documents, _tokenize_batch, fn_kwargs={"tokenizer": tokenizer}, features=features,
                        remove_columns=["text", "words", "chars"], batch_size=TOKENIZE_BATCH_DOCUMENTS,
                        **({} if self.streaming else {"writer_batch_size": TOKENIZE_BATCH_DOCUMENTS}))


def prepare_corpus(
    documents: Iterable[Document] | CorpusSource,
    output_dir: str | Path,
    vocab_size: int = 8000,
    chunk_length: int = 512,
    stride: int | None = None,
    validation_ratio: float = 0.05,
    seed: int = 0,
    *,
    tokenizer: str | Path | None = None,
    num_proc: int = 1,
    streaming: bool = False,
    log: Callable[[str], object] | None = None,
) -> PreparedCorpus:
    """Read and clean, split, train the BPE tokenizer on the train documents, chunk, and write to `output_dir`.

    `documents` is a `CorpusSource` (read lazily: the corpus need not fit in memory) or documents in memory.
    Writes `tokenizer/` (transformers format), `train.jsonl`, `validation.jsonl` and `stats.json`. The
    validation chunks never overlap (stride = length) so every held-out token counts once in the perplexity.
    `tokenizer` (a folder or hub id) reuses that tokenizer instead of training one (`vocab_size` is then its
    own); `num_proc` processes clean and tokenize; `streaming` keeps nothing on disk but the outputs.
    Intermediate Arrow files live in a temporary folder inside `output_dir`, removed at the end.
    """
    stride = stride or chunk_length
    chunk_starts(0, chunk_length, stride)  # validates length and stride before the slow work
    if not 0 <= validation_ratio < 1:
        raise CorpusError(f"--validation_ratio must be in [0, 1), got {validation_ratio}")
    if num_proc < 1:
        raise CorpusError(f"--num_proc must be at least 1, got {num_proc}")
    if streaming and num_proc > 1:
        raise CorpusError("--streaming reads the corpus in one process: drop --num_proc, or drop --streaming to use several")
    source = documents if isinstance(documents, CorpusSource) else CorpusSource(documents=tuple(documents))
    source.check()
    tokenizer = _load_tokenizer(tokenizer) if tokenizer is not None else None
    output_dir = Path(output_dir)
    foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in PREPARED_NAMES and not p.name.startswith(".")) if output_dir.is_dir() else []
    if foreign:  # the swap replaces the whole folder: never one that holds anything else
        raise CorpusError(f"{output_dir} holds other files ({', '.join(foreign[:3])}): choose an empty or new --output_dir")
    prepared: list[PreparedCorpus] = []

    def build(folder: Path) -> None:
        work_dir = Path(tempfile.mkdtemp(prefix=".prepare-", dir=folder))
        try:
            with _quiet_datasets():
                started = time.perf_counter()  # after the imports: `seconds` times the preparation, not start-up
                pipeline = _Pipeline(source, work_dir, num_proc, streaming)
                prepared.append(_prepare(source, output_dir, folder, pipeline, tokenizer, vocab_size, chunk_length,
                                         stride, validation_ratio, seed, log or (lambda message: None), started))
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    # Built aside and swapped in whole: a kill leaves the previous corpus or the new one, never chunks of one
    # tokenizer beside the other.
    write_dir(output_dir, build)
    return prepared[0]


def _prepare(source: CorpusSource, output_dir: Path, folder: Path, pipeline: _Pipeline, tokenizer, vocab_size: int,
             chunk_length: int, stride: int, validation_ratio: float, seed: int, log, started: float) -> PreparedCorpus:
    """The preparation itself, writing into `folder` (the staging copy of `output_dir`, which `stats.json` names)."""
    from pocketlm.data.tokenizer import train_bpe_tokenizer
    from pocketlm.io import write_json

    lengths, extra_documents, words, extra_words = [], 0, 0, 0
    for row in pipeline.rows(pipeline.documents, ["name", "chars", "extra", "words"]):  # names and sizes only
        words += row["words"]
        if row["extra"]:
            extra_documents += 1
            extra_words += row["words"]
        else:
            lengths.append((row["name"], row["chars"]))
    if not lengths:
        where = f"corpus folder {Path(source.text_folder).expanduser()}" if source.text_folder else "the corpus"
        raise CorpusError(f"{where} has no non-empty {'.txt files' if source.text_folder else 'documents'}")
    held_out = held_out_names(lengths, validation_ratio, seed)
    log(f"read and cleaned {len(lengths) + extra_documents:,} documents ({words:,} words), "
        f"{len(held_out)} held out for validation [{time.perf_counter() - started:.0f} s]")

    def is_train(row: dict) -> bool:
        return row["extra"] or row["name"] not in held_out

    if tokenizer is None:
        train_texts = (row["text"] for row in pipeline.rows(pipeline.documents, ["name", "text", "extra"]) if is_train(row))
        tokenizer = train_bpe_tokenizer(train_texts, vocab_size=vocab_size, model_max_length=chunk_length)
        log(f"trained a {len(tokenizer):,}-token BPE tokenizer on the train documents [{time.perf_counter() - started:.0f} s]")
    writers = {"train": ChunkWriter(folder / "train.jsonl", chunk_length, stride),
               "validation": ChunkWriter(folder / "validation.jsonl", chunk_length, chunk_length)}
    try:  # written aside, renamed into place only once both are complete and large enough
        tokenized = pipeline.tokenized(tokenizer)
        for row in pipeline.rows(tokenized, ["name", "extra", "input_ids"], batch_size=TOKENIZE_BATCH_DOCUMENTS):
            writers["train" if is_train(row) else "validation"].add(row["input_ids"])
        for split, writer in writers.items():
            if writer.chunks == 0 and (split == "train" or validation_ratio > 0):
                raise CorpusError(
                    f"the corpus is too small: its {split} split has {writer.tokens} tokens, fewer than one chunk of "
                    f"{chunk_length} (lower --chunk_length{' or raise --validation_ratio' if split == 'validation' else ''}, or add text)"
                )
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for writer in writers.values():
        writer.close()
    tokenizer.save_pretrained(folder / "tokenizer")
    stats = {split: chunk_stats(writer.tokens, chunk_length, writer.stride) for split, writer in writers.items()}
    prepared = PreparedCorpus(
        output_dir, stats["train"], stats["validation"],
        {"train": len(lengths) - len(held_out) + extra_documents, "validation": len(held_out)}, len(tokenizer),
        words=words, extra_words=extra_words, seconds=time.perf_counter() - started,
    )
    log(f"tokenized and wrote {stats['train'].chunks + stats['validation'].chunks:,} chunks [{prepared.seconds:.0f} s]")
    write_json(folder / "stats.json", prepared.as_dict())
    return prepared


def _load_tokenizer(path: str | Path):
    """An existing fast tokenizer to chunk with (a published model's, so a new run keeps its vocabulary)."""
    from transformers import AutoTokenizer

    from pocketlm.hub import resolve

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve(str(path)))  # a folder, or a published model such as pocketlm/tiny-lm
    except (PocketLMError, OSError, ValueError) as err:
        raise CorpusError(f"--tokenizer {path}: cannot load a tokenizer there ({err})") from None
    if not tokenizer.is_fast or tokenizer.eos_token_id is None:
        raise CorpusError(f"--tokenizer {path}: needs a fast tokenizer with an EOS token")
    return tokenizer


def stride_table(n_tokens: int, length: int, ratios: Iterable[float]) -> list[dict]:
    """Coverage, chunk count and memory for several stride/length ratios over the same token stream."""
    rows = []
    for ratio in ratios:
        stats = chunk_stats(n_tokens, length, max(1, round(ratio * length)))
        rows.append({"ratio": ratio, **stats.as_dict()})
    return rows


def save_stride_table(output_dir: str | Path, table_markdown: str) -> Path:
    """Keep the printed coverage-vs-memory table beside `stats.json`, so documentation quotes a file."""
    from pocketlm.io import atomic_write_text

    path = Path(output_dir) / "stride_table.md"
    atomic_write_text(path, table_markdown + "\n")
    return path


def stride_table_markdown(rows: Sequence[dict]) -> str:
    lines = [
        "| stride / length | stride | chunks | coverage | copies per token | memory (int64 ids) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['ratio']:g} | {row['stride']} | {row['chunks']:,} | {row['coverage']:.1%} | {row['copies_per_token']:.2f} | {format_bytes(row['memory_bytes'])} |"
        )
    return "\n".join(lines)
