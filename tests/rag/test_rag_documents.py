"""Users' own documents: real LangChain splitters, pypdf, MiniLM and FAISS; the index grows all or nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pocketlm.rag.documents import (
    DocumentError,
    DocumentLimits,
    add_documents,
    document_name,
    folder_files,
    html_to_markdown,
    split_document,
)
from pdf_fixture import minimal_pdf

LIGHTHOUSE = ["The Kestrel Point lighthouse was kept by Elsa Brandt from 1887.",
              "She trimmed the wick of the lamp every night at dusk."]
GARDEN_MD = ("# Allotment notes\n\nOur allotment is plot 14 at Millbrook.\n\n## Tomatoes\n\n"
             + "Water the tomatoes every morning before the sun is high. " * 20
             + "\n\n## Basil\n\nBasil is sown in April on a warm windowsill.\n")
TRAINS_HTML = ("<html><head><title>t</title><style>p {color: red}</style><script>var x = 'hidden';</script></head>"
               "<body><h1>Harbour railway</h1><p>The harbour railway opened in 1902 &amp; closed in 1961.</p>"
               "<h2>Fares</h2><p>A return ticket cost four pence.</p></body></html>")


@pytest.fixture()
def retriever(rag_files, rag_encoder):
    """A hybrid retriever over the 50 test passages (flat FAISS + BM25), built fresh for each test."""
    from pocketlm.rag.corpus import read_passages_and_questions
    from pocketlm.rag.embeddings import encode
    from pocketlm.rag.index import IndexSpec, PassageIndex
    from pocketlm.rag.retriever import RagRetriever

    passages, _ = read_passages_and_questions(*rag_files)
    index = PassageIndex.build(encode(rag_encoder, [p.text for p in passages], cache=True), passages, IndexSpec("flat"), "minilm")
    return RagRetriever(rag_encoder, index)


@pytest.fixture()
def documents(tmp_path) -> Path:
    """A folder of good documents in every format, plus bad ones each of its own kind."""
    folder = tmp_path / "docs"
    (folder / "garden").mkdir(parents=True)
    (folder / "garden" / "notes.md").write_text(GARDEN_MD)
    (folder / "trains.html").write_text(TRAINS_HTML)
    (folder / "keeper.pdf").write_bytes(minimal_pdf([LIGHTHOUSE, ["The second page is about tides."]]))
    (folder / "plain.txt").write_text("Millbrook bakery sells rye bread on Saturdays only.")
    (folder / "binary.txt").write_bytes(b"GIF89a\x00\x01\x02\x03" * 10)
    (folder / "latin1.md").write_bytes("Caf\xe9 menu".encode("latin-1"))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R")
    (folder / "slides.pptx").write_bytes(b"PK\x03\x04")
    (folder / "empty.txt").write_text("   \n\n")
    (folder / ".hidden.md").write_text("never read")
    return folder


def test_each_format_splits_into_passages_whose_ids_cite_file_and_position(documents):
    notes = split_document("garden/notes.md", (documents / "garden" / "notes.md").read_bytes())
    assert [p.id for p in notes] == [f"garden/notes.md#{n}" for n in range(1, len(notes) + 1)] and len(notes) >= 4
    assert notes[0].title == "garden/notes.md › Allotment notes" and "plot 14" in notes[0].text
    assert notes[-1].title == "garden/notes.md › Allotment notes › Basil" and "April" in notes[-1].text
    assert all(len(p.text) <= 800 for p in notes)  # the long Tomatoes section is cut by RecursiveCharacterTextSplitter

    html = split_document("trains.html", TRAINS_HTML.encode())
    assert [(p.id, p.title, p.text) for p in html] == [
        ("trains.html#1", "trains.html › Harbour railway", "The harbour railway opened in 1902 & closed in 1961."),
        ("trains.html#2", "trains.html › Harbour railway › Fares", "A return ticket cost four pence."),
    ]
    assert "hidden" not in html_to_markdown(TRAINS_HTML) and "color" not in html_to_markdown(TRAINS_HTML)

    pdf = split_document("keeper.pdf", (documents / "keeper.pdf").read_bytes())
    assert [(p.id, p.title) for p in pdf] == [("keeper.pdf#1", "keeper.pdf, page 1"), ("keeper.pdf#2", "keeper.pdf, page 2")]
    assert pdf[0].text == " ".join(LIGHTHOUSE)
    assert document_name("garden/notes.md#3") == "garden/notes.md" and document_name("val-00-003") is None


def test_a_folder_is_indexed_and_every_bad_file_is_refused_by_name(retriever, documents):
    before = len(retriever.index.passages)
    batch = add_documents(retriever, folder_files(documents))
    assert batch.files == ["garden/notes.md", "keeper.pdf", "plain.txt", "trains.html"]
    reasons = {r.name: r.reason for r in batch.refused}
    assert set(reasons) == {"binary.txt", "broken.pdf", "empty.txt", "latin1.md", "slides.pptx"}
    assert reasons["binary.txt"] == "binary content, not a text file"
    assert reasons["latin1.md"].startswith("not UTF-8 text")
    assert reasons["broken.pdf"].startswith("malformed PDF")
    assert reasons["empty.txt"] == "no text found in it"
    assert reasons["slides.pptx"].startswith("unsupported file type")
    assert "refused binary.txt: binary content" in batch.summary()

    assert len(retriever.index.passages) == retriever.index.index.ntotal == before + len(batch.passages)
    assert retriever.lexical.size == len(retriever.index.passages)
    top = retriever.retrieve("Who kept the Kestrel Point lighthouse?", k=3)
    assert top[0].id == "keeper.pdf#1" and "Elsa Brandt" in top[0].text
    assert retriever.retrieve("When did the harbour railway open?", k=3)[0].id == "trains.html#1"
    assert retriever.retrieve("Which NFL team won Super Bowl 50?", k=3)[0].id.startswith("val-00-")  # the old passages stay


def test_limits_refuse_the_batch_with_a_readable_message_and_leave_the_index_as_it_was(retriever, documents, tmp_path):
    passages, vectors = list(retriever.index.passages), retriever.index.index.ntotal
    files = folder_files(documents)
    with pytest.raises(DocumentError, match=r"9 files would make 9 documents in the index; the limit is at most 3 files"):
        add_documents(retriever, files, DocumentLimits(max_files=3))
    with pytest.raises(DocumentError, match=r"over 300 characters of text \(at garden/notes.md\)"):
        add_documents(retriever, files, DocumentLimits(max_total_chars=300))
    assert retriever.index.passages == passages and retriever.index.index.ntotal == vectors

    batch = add_documents(retriever, files, DocumentLimits(max_file_bytes=200))
    assert batch.files == ["plain.txt"]
    assert {r.name: r.reason for r in batch.refused}["trains.html"] == f"{len(TRAINS_HTML):,} bytes is over the 200-byte limit per file"
    # the count and text limits count what is indexed already: one more file than allowed is refused
    with pytest.raises(DocumentError, match="2 files would make 3 documents"):
        add_documents(retriever, files[:2], DocumentLimits(max_files=2))


def test_nothing_indexed_is_lost_on_a_repeat_or_a_failed_batch(retriever, documents):
    add_documents(retriever, folder_files(documents))
    passages, lexical, index = list(retriever.index.passages), retriever.lexical, retriever.index
    again = add_documents(retriever, folder_files(documents))
    assert again.files == [] and again.passages == []
    assert {r.name: r.reason for r in again.refused}["keeper.pdf"].startswith("a document of that name is already in the index")

    from pocketlm.errors import ConfigError
    from pocketlm.rag.corpus import Passage

    clash = [Passage("fresh#1", "", "A new passage."), Passage("keeper.pdf#1", "", "A passage that claims an old id.")]
    with pytest.raises(ConfigError, match=r"already in the index or repeated: \['keeper.pdf#1'\]"):
        retriever.add_passages(clash)  # embedded, then refused when the extended index is built: nothing swapped in
    assert retriever.index is index and retriever.lexical is lexical and retriever.index.passages == passages
    assert retriever.index.index.ntotal == len(passages)


def test_the_repl_takes_a_folder_and_answers_cite_its_passages(rag_index_repo, tiny_lm_repo, rag_reader_repo, documents):
    command = [sys.executable, "-m", "pocketlm.rag", "--k", "2", "--lora", "none", "--reader", rag_reader_repo,
               "--abstain_below", "0", "--documents", str(documents)]
    done = subprocess.run(command, input="Who kept the Kestrel Point lighthouse?\n", capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "indexed 4 file(s) as" in done.stdout and "refused broken.pdf: malformed PDF" in done.stdout
    answer = done.stdout.split("answer:", 1)[1]
    assert "[keeper.pdf#1]" in answer  # the fragment shown under the answer, cited by file and position


def test_the_repl_refuses_a_missing_folder_naming_the_flag(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pocketlm.rag", "--documents", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"--documents: {tmp_path / 'nope'}: not a folder" in done.stderr
    assert "Traceback" not in done.stderr
