"""Corpus preparation for pretraining: clean → split by document → tokenize → fixed-length chunks.

The steps, each a small function so tests and the benchmark reuse them:

* `clean_text` transliterates to ASCII with `anyascii` ("Beyoncé" → "Beyonce", "naïve" → "naive"), then
  drops whatever is still not ASCII — so accents keep their letters instead of vanishing.
* `read_text_folder` / `default_corpus` give `Document`s: the mirror's WikiText-2 articles plus the unique
  paragraphs of SQuAD train, grouped back into one document per SQuAD article.
* `split_documents` holds out whole documents for validation (chosen by a hash of the document name), so
  overlapping chunks never leak the same text into both splits.
* `token_stream` joins documents with the EOS token; `chunk_starts` / `make_chunks` cut fixed-length
  chunks every `stride` tokens. `stride < length` overlaps chunks (more contexts per token, more memory);
  `stride > length` skips tokens (less memory, lower coverage). `ChunkStats` reports coverage (share of
  corpus tokens that land in some chunk), chunk count and the memory the chunks take as int64 ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from anyascii import anyascii

from pocketlm.errors import PocketLMError
from pocketlm.io import atomic_write_text
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


def read_text_folder(folder: str | Path) -> list[Document]:
    """Every `*.txt` file under `folder` (sorted, recursive) as a cleaned document; empty ones are skipped.

    Raises `CorpusError` naming the folder when it does not exist or holds no non-empty text file.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise CorpusError(f"corpus folder not found: {folder}")
    documents = []
    for path in sorted(folder.rglob("*.txt")):
        text = clean_text(path.read_text(encoding="utf-8", errors="replace"))
        if text:
            documents.append(Document(str(path.relative_to(folder)), text))
    if not documents:
        raise CorpusError(f"corpus folder {folder} has no non-empty .txt files")
    return documents


def squad_documents(squad_json: str | Path) -> list[Document]:
    """The unique context paragraphs of a SQuAD JSON file, one cleaned document per article (title).

    SQuAD repeats each paragraph once per question; keeping each once, in order, gives plain article text.
    """
    from pocketlm.data.registry import read_squad_json

    paragraphs: dict[str, list[str]] = {}
    seen: set[str] = set()
    for record in read_squad_json(squad_json):
        if record["context"] not in seen:
            seen.add(record["context"])
            paragraphs.setdefault(record["title"], []).append(record["context"])
    documents = [Document(f"squad/{title}", clean_text("\n\n".join(parts))) for title, parts in paragraphs.items()]
    return [doc for doc in documents if doc.text]


def default_corpus(include_squad: bool = True) -> list[Document]:
    """The default pretraining corpus: WikiText-2 articles from the mirror plus SQuAD train's paragraphs."""
    from pocketlm.data.registry import DatasetNotFoundError, corpus_folder, squad_json_path

    documents = read_text_folder(corpus_folder())
    if include_squad:
        path = squad_json_path("train")
        if path is None:
            raise DatasetNotFoundError("SQuAD train JSON not found in the data mirror (squad-v1.1/train.json)")
        documents += squad_documents(path)
    return documents


# ---------------------------------------------------------------- splitting and chunking


def _unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from `parts` (stable across runs and machines, unlike `hash()`)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_documents(
    documents: Sequence[Document], validation_ratio: float, seed: int = 0
) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents until they hold `validation_ratio` of the characters; the rest is train.

    Documents are visited in the order of a hash of their name, so the split is deterministic, independent
    of file order, and keeps every article entirely on one side.
    """
    if not 0 <= validation_ratio < 1:
        raise CorpusError(f"--validation_ratio must be in [0, 1), got {validation_ratio}")
    total = sum(len(doc.text) for doc in documents)
    held_out: set[str] = set()
    held_chars = 0
    for doc in sorted(documents, key=lambda d: _unit_hash(seed, d.name)):
        if held_chars >= validation_ratio * total or len(held_out) == len(documents) - 1:
            break
        held_out.add(doc.name)
        held_chars += len(doc.text)
    train = [doc for doc in documents if doc.name not in held_out]
    validation = [doc for doc in documents if doc.name in held_out]
    return train, validation


def token_stream(tokenizer, documents: Iterable[Document]) -> list[int]:
    """Tokenize each document and join them into one stream, each followed by the EOS token.

    EOS between documents tells the model where one text ends, so a chunk that spans two documents does
    not teach it to continue one article with the next.
    """
    texts = [doc.text for doc in documents]
    # The fast tokenizer's backend, called directly, encodes in parallel batches and does not warn that an
    # article is longer than `model_max_length` (it is meant to be: chunking comes next).
    encoded = [enc.ids for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    stream: list[int] = []
    for ids in encoded:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)
    return stream


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


def make_chunks(stream: Sequence[int], length: int, stride: int) -> list[list[int]]:
    """Cut `stream` into `length`-token chunks every `stride` tokens."""
    return [list(stream[start : start + length]) for start in chunk_starts(len(stream), length, stride)]


PREPARED_NAMES = {"tokenizer", "train.jsonl", "validation.jsonl", "stats.json", "stride_table.md"}
"""What `prepare_corpus` (and the script's table) write: a folder holding only these may be replaced whole."""


def write_chunks_jsonl(path: str | Path, chunks: Sequence[Sequence[int]]) -> None:
    """One `{"id": i, "input_ids": [...]}` line per chunk; the id drives the collator's static masks."""
    lines = (json.dumps({"id": i, "input_ids": list(chunk)}, separators=(",", ":")) for i, chunk in enumerate(chunks))
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_chunks_jsonl(path: str | Path) -> list[dict]:
    """Chunks written by `write_chunks_jsonl` (or any JSONL with `id` and `input_ids`)."""
    from pocketlm.data.registry import read_jsonl

    return read_jsonl(path, required=("id", "input_ids"))


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

    def as_dict(self) -> dict:
        return {
            "output_dir": str(self.output_dir),
            "train": self.train.as_dict(),
            "validation": self.validation.as_dict(),
            "documents": self.documents,
            "vocab_size": self.vocab_size,
        }


def prepare_corpus(
    documents: Sequence[Document],
    output_dir: str | Path,
    vocab_size: int = 8000,
    chunk_length: int = 512,
    stride: int | None = None,
    validation_ratio: float = 0.05,
    seed: int = 0,
) -> PreparedCorpus:
    """Split, train the BPE tokenizer on the train documents, chunk, and write everything to `output_dir`.

    Writes `tokenizer/` (transformers format), `train.jsonl`, `validation.jsonl` and `stats.json`. The
    validation chunks never overlap (stride = length) so every held-out token counts once in the perplexity.
    The folder is built aside and swapped in whole: a kill leaves the previous corpus or the new one, never
    chunks of one tokenizer beside the other.
    """
    from pocketlm.data.tokenizer import train_bpe_tokenizer
    from pocketlm.io import write_dir, write_json

    stride = stride or chunk_length
    chunk_starts(0, chunk_length, stride)  # validates length and stride before the slow work
    if not documents:
        raise CorpusError("the corpus has no documents")
    output_dir = Path(output_dir)
    foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in PREPARED_NAMES and not p.name.startswith(".")) if output_dir.is_dir() else []
    if foreign:  # the swap replaces the whole folder: never one that holds anything else
        raise CorpusError(f"{output_dir} holds other files ({', '.join(foreign[:3])}): choose an empty or new --output_dir")
    train_docs, validation_docs = split_documents(documents, validation_ratio, seed)
    tokenizer = train_bpe_tokenizer((doc.text for doc in train_docs), vocab_size=vocab_size, model_max_length=chunk_length)
    splits, chunks = {}, {}
    for split, docs, split_stride in (("train", train_docs, stride), ("validation", validation_docs, chunk_length)):
        stream = token_stream(tokenizer, docs)
        stats = chunk_stats(len(stream), chunk_length, split_stride)
        if split == "train" and stats.chunks == 0 or split == "validation" and validation_ratio > 0 and stats.chunks == 0:
            raise CorpusError(
                f"the corpus is too small: its {split} split has {len(stream)} tokens, fewer than one chunk of "
                f"{chunk_length} (lower --chunk_length{' or raise --validation_ratio' if split == 'validation' else ''}, or add text)"
            )
        chunks[split], splits[split] = make_chunks(stream, chunk_length, split_stride), stats
    prepared = PreparedCorpus(
        output_dir, splits["train"], splits["validation"],
        {"train": len(train_docs), "validation": len(validation_docs)}, len(tokenizer),
    )

    def write(folder: Path) -> None:
        for split, split_chunks in chunks.items():
            write_chunks_jsonl(folder / f"{split}.jsonl", split_chunks)
        tokenizer.save_pretrained(folder / "tokenizer")
        write_json(folder / "stats.json", prepared.as_dict())

    write_dir(output_dir, write)
    return prepared


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
