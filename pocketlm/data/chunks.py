"""Fixed-length chunks of a token stream: cut them as the tokens arrive, write them as JSONL, read them lazily.

Neither side holds the corpus: `ChunkWriter` keeps at most one chunk plus one document of tokens, and
`ChunkFile` keeps only the byte offset of each line (8 bytes a chunk) and parses a chunk when it is asked for.

The file format is one `{"id": i, "input_ids": [...]}` line per chunk; the id drives the collator's static masks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from pocketlm.data.registry import DatasetNotFoundError, parse_jsonl_row


def chunk_line(chunk_id: int, chunk: Sequence[int]) -> str:
    """The JSONL line of one chunk (no newline): compact separators, ids in order."""
    return json.dumps({"id": chunk_id, "input_ids": list(chunk)}, separators=(",", ":"))


class ChunkWriter:
    """Cut a token stream fed document by document into `length`-token chunks every `stride` tokens, and
    write each chunk to `path` as soon as it is complete.

    The chunks are exactly those of slicing the whole stream at offsets 0, stride, 2·stride… (a partial tail
    is dropped), but only the tokens from the next chunk start onwards are kept, so memory stays at about
    one chunk plus the document being added, whatever the corpus size. The file appears at `path` only
    when `close()` succeeds (written aside, then renamed); use it as a context manager.
    """

    def __init__(self, path: str | Path, length: int, stride: int):
        self.path = Path(path)
        self.length, self.stride = length, stride
        self.chunks = 0
        self.tokens = 0
        self._pending: list[int] = []
        self._pending_start = 0  # stream offset of _pending[0]
        self._next_start = 0  # stream offset of the next chunk
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self._file = self._tmp.open("w", encoding="utf-8")

    def add(self, ids: Iterable[int]) -> None:
        """Append tokens to the stream and write every chunk they complete."""
        before = len(self._pending)
        self._pending.extend(ids)
        self.tokens += len(self._pending) - before
        end = self._pending_start + len(self._pending)
        while self._next_start + self.length <= end:
            offset = self._next_start - self._pending_start
            self._file.write(chunk_line(self.chunks, self._pending[offset : offset + self.length]) + "\n")
            self.chunks += 1
            self._next_start += self.stride
        # Tokens before the next start are in no future chunk (with stride > length, some were in none).
        drop = min(self._next_start - self._pending_start, len(self._pending))
        if drop > 0:
            del self._pending[:drop]
            self._pending_start += drop

    def close(self) -> None:
        self._file.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type else self.close()


def write_chunks_jsonl(path: str | Path, chunks: Iterable[Sequence[int]]) -> None:
    """Write ready-made chunks (ids 0, 1, …), streaming them to disk; the file is replaced atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for i, chunk in enumerate(chunks):
                f.write(chunk_line(i, chunk) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ChunkFile(Sequence):
    """The chunks of a JSONL file as a read-only sequence of `{"id", "input_ids"}` dicts, parsed on access.

    Opening reads the file once to record where each non-blank line starts; a chunk is read and parsed only
    when indexed, so a training run's memory does not grow with the corpus. It is a map-style data set for
    `torch.utils.data.DataLoader` (`__getitems__` reads a whole batch with one open), yields the same rows
    in the same order as parsing the whole file, and pickles small (path + offsets) into loader workers.

    Why not `datasets.load_dataset("json")`: it first converts the whole file into a cached Arrow copy (twice
    the disk, minutes for a large corpus, a cache that every process of a multi-process launch races to
    build); the offsets need one read and no cache, and give the rows the list did, byte for byte.
    """

    REQUIRED = ("id", "input_ids")

    def __init__(self, path: str | Path, offsets: np.ndarray | None = None):
        self.path = Path(path)
        if offsets is None:
            if not self.path.is_file():
                raise DatasetNotFoundError(f"file not found: {self.path}")
            offsets = self._index(self.path)
        self.offsets = offsets

    @staticmethod
    def _index(path: Path) -> np.ndarray:
        offsets = []
        position = 0
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(position)
                position += len(line)
        return np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ChunkFile(self.path, self.offsets[index])
        if not -len(self) <= index < len(self):
            raise IndexError(f"chunk {index} out of range ({len(self)} chunks in {self.path})")
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        rows = []
        with self.path.open("rb") as f:
            for index in indices:
                f.seek(int(self.offsets[index]))
                rows.append(self._parse(f.readline(), int(self.offsets[index])))
        return rows

    def __iter__(self) -> Iterator[dict]:
        with self.path.open("rb") as f:
            for offset in self.offsets:
                f.seek(int(offset))
                yield self._parse(f.readline(), int(offset))

    def _parse(self, line: bytes, offset: int) -> dict:
        return parse_jsonl_row(line, self.REQUIRED, lambda: f"{self.path}:{self._line_number(offset)}")

    def _line_number(self, offset: int) -> int:
        """Only for error messages: count the newlines before `offset` (a read of the file up to there)."""
        with self.path.open("rb") as f:
            return f.read(offset).count(b"\n") + 1


def read_chunks_jsonl(path: str | Path) -> ChunkFile:
    """Chunks written by `ChunkWriter` / `write_chunks_jsonl` (or any JSONL with `id` and `input_ids`), lazily."""
    return ChunkFile(path)
