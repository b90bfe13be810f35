"""Users' own documents in the RAG index: plain text, Markdown, HTML and PDF, split, embedded and added.

A document becomes passages with LangChain's text splitters: Markdown by its headings
(`MarkdownHeaderTextSplitter`), then every section, plain text and PDF page by
`RecursiveCharacterTextSplitter` into chunks of about `CHUNK_CHARS` characters. HTML is first turned into
the same heading-structured text by the standard library's `html.parser` (LangChain's HTML splitters need
bs4 or lxml, which the stack does not carry), scripts and styles dropped. PDF text comes from `pypdf`.

Each passage's id cites the file and the position: `notes.md#3` is the third chunk of `notes.md` (a path
relative to the folder for the CLI, the upload's name in the Space); the title says the file, its
section headings or the PDF page. The answer cites these ids like any other passage's.

Everything a user adds is bounded (`DocumentLimits`): a file over the size cap, of an unsupported type,
binary, not UTF-8, malformed, or with no text is refused by name while the others go in; too many files or
too much text in all refuses the whole batch with a message saying the limit. Adding is all or nothing
(`RagRetriever.add_passages`): a batch that fails leaves the index as it was, and a file already in the
index is refused rather than replaced, so nothing already indexed is lost.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING

from pocketlm.errors import PocketLMError
from pocketlm.rag.corpus import Passage

if TYPE_CHECKING:
    from pocketlm.rag.retriever import RagRetriever

CHUNK_CHARS = 800
"""About a SQuAD paragraph (the passages the generator and the reader were tuned on), so a user's chunk
crops into the prompt the way the built-in passages do."""
CHUNK_OVERLAP = 100
FORMATS = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
           ".html": "html", ".htm": "html", ".pdf": "pdf"}
HEADINGS = [("#", "h1"), ("##", "h2"), ("###", "h3")]
_SNIFF_BYTES = 8192


class DocumentError(PocketLMError):
    """A document, or a batch of them, that cannot be indexed; the message names the file or the limit."""


@dataclass(frozen=True)
class DocumentLimits:
    """What users may add, counted over all their documents in the index (not per upload), so repeated
    uploads cannot grow it without bound either."""

    max_file_bytes: int = 1_000_000
    """Per file; also Gradio's upload cap in the RAG chat Space (the REST app's 2 MiB body cap bounds one upload in all)."""
    max_files: int = 20
    max_total_chars: int = 500_000
    """Extracted text over all the user's documents: about 700 chunks to embed, a few minutes at most on 2 busy cores."""

    def describe(self) -> str:
        return (f"at most {self.max_files} files of {self.max_file_bytes / 1e6:g} MB each and "
                f"{self.max_total_chars:,} characters of text in all")


@dataclass
class Refusal:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class DocumentBatch:
    """What a batch of files gave: their passages (in file order) and the files refused, with why."""

    passages: list[Passage] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"indexed {len(self.files)} file(s) as {len(self.passages)} passages"
                 + (f": {', '.join(self.files)}" if self.files else "")]
        lines += [f"refused {refusal}" for refusal in self.refused]
        return "\n".join(lines)


def document_name(passage_id: str) -> str | None:
    """The file a user passage comes from (`notes.md#3` → `notes.md`); None for a built-in passage."""
    name, sep, chunk = passage_id.rpartition("#")
    return name if sep and chunk.isdigit() else None


class _HTMLText(HTMLParser):
    """Visible text of an HTML page, headings `h1`-`h3` written as Markdown headings, blocks on their own lines."""

    BLOCKS = {"p", "div", "br", "li", "tr", "section", "article", "h4", "h5", "h6", "pre", "blockquote", "table"}
    HIDDEN = {"script", "style", "head", "noscript", "template"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in ("h1", "h2", "h3"):
            self.parts.append("\n\n" + "#" * int(tag[1]) + " ")
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in ("h1", "h2", "h3") or tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def html_to_markdown(markup: str) -> str:
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    lines = [line.strip() for line in "".join(parser.parts).splitlines()]
    return html.unescape(re.sub(r"\n{3,}", "\n\n", "\n".join(lines))).strip()


def _decode_text(name: str, data: bytes) -> str:
    if b"\0" in data[:_SNIFF_BYTES]:
        raise DocumentError(f"{name}: binary content, not a text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DocumentError(f"{name}: not UTF-8 text (undecodable byte at offset {err.start})") from None


def _pdf_pages(name: str, data: bytes) -> list[str]:
    """Text of each page; a file that is not a readable PDF is refused by name."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.startswith(b"%PDF-"):
        raise DocumentError(f"{name}: not a PDF file (no %PDF header)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(f"{name}: encrypted PDF; decrypt it first")
        return [page.extract_text() or "" for page in reader.pages]
    except DocumentError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as err:
        raise DocumentError(f"{name}: malformed PDF ({type(err).__name__}: {str(err)[:120]})") from None


def split_document(name: str, data: bytes) -> list[Passage]:
    """The passages of one file (`name` decides the format and the ids); `DocumentError` naming it otherwise."""
    from langchain_core.documents import Document
    from langchain_text_splitters import MarkdownHeaderTextSplitter, RecursiveCharacterTextSplitter

    kind = FORMATS.get(Path(name).suffix.lower())
    if kind is None:
        raise DocumentError(f"{name}: unsupported file type; supported: {', '.join(sorted(FORMATS))}")
    if kind == "pdf":
        pages = _pdf_pages(name, data)
        sections = [Document(text, metadata={"title": f"{name}, page {n}"}) for n, text in enumerate(pages, 1)]
    else:
        text = _decode_text(name, data)
        if kind == "html":
            text, kind = html_to_markdown(text), "markdown"
        if kind == "markdown":
            sections = MarkdownHeaderTextSplitter(HEADINGS).split_text(text)
            for section in sections:
                headings = [section.metadata[key] for _, key in HEADINGS if key in section.metadata]
                section.metadata["title"] = " › ".join([name, *headings])
        else:
            sections = [Document(text, metadata={"title": name})]
    splitter = RecursiveCharacterTextSplitter(chunk_size=CHUNK_CHARS, chunk_overlap=CHUNK_OVERLAP)
    chunks = [chunk for chunk in splitter.split_documents(sections) if chunk.page_content.strip()]
    if not chunks:
        raise DocumentError(f"{name}: no text found in it")
    return [Passage(f"{name}#{n}", chunk.metadata["title"], " ".join(chunk.page_content.split()))
            for n, chunk in enumerate(chunks, 1)]


def read_documents(files: Sequence[tuple[str, Path]], limits: DocumentLimits = DocumentLimits(),
                   indexed: Sequence[Passage] = ()) -> DocumentBatch:
    """Split (display name, path) pairs into passages; `indexed` is what the index already holds.

    Bad files are refused by name and left out; the count and total-text limits refuse the whole batch
    (`DocumentError`), counting the user documents already in `indexed`.
    """
    present: dict[str, int] = {}
    for passage in indexed:
        if (doc := document_name(passage.id)) is not None:
            present[doc] = present.get(doc, 0) + len(passage.text)
    if len(present) + len(files) > limits.max_files:
        raise DocumentError(f"{len(files)} files would make {len(present) + len(files)} documents in the index; "
                            f"the limit is {limits.describe()}")
    batch, total, seen = DocumentBatch(), sum(present.values()), set()
    for name, path in files:
        try:
            if name in present or name in seen:
                raise DocumentError(f"{name}: a document of that name is already in the index; rename the file to add it")
            if "#" in name:
                raise DocumentError(f"{name}: '#' is not allowed in a document name (ids are NAME#CHUNK)")
            size = path.stat().st_size
            if size > limits.max_file_bytes:
                raise DocumentError(f"{name}: {size:,} bytes is over the {limits.max_file_bytes:,}-byte limit per file")
            passages = split_document(name, path.read_bytes())
        except DocumentError as err:
            batch.refused.append(Refusal(name, str(err).removeprefix(f"{name}: ")))
            continue
        seen.add(name)
        total += sum(len(p.text) for p in passages)
        if total > limits.max_total_chars:
            raise DocumentError(f"the documents hold over {limits.max_total_chars:,} characters of text (at {name}); "
                                f"the limit is {limits.describe()}")
        batch.passages += passages
        batch.files.append(name)
    return batch


def folder_files(folder: str | Path) -> list[tuple[str, Path]]:
    """Every file under `folder` (recursively, hidden ones skipped), named by its path relative to it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DocumentError(f"{folder}: not a folder")
    files = [path for path in sorted(folder.rglob("*"))
             if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)]
    return [(path.relative_to(folder).as_posix(), path) for path in files]


def add_documents(retriever: "RagRetriever", files: Sequence[tuple[str, Path]],
                  limits: DocumentLimits = DocumentLimits()) -> DocumentBatch:
    """Read, split, embed and add `files` to the retriever's index in one step (all or nothing)."""
    batch = read_documents(files, limits, retriever.index.passages)
    if batch.passages:
        retriever.add_passages(batch.passages)
    return batch
