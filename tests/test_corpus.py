"""Corpus preparation: cleaning, reading, splitting, chunking, coverage, and the prepare script's errors."""

import json
import runpy
import sys

import pytest

from pocketlm.data.corpus import (
    CorpusError,
    Document,
    chunk_stats,
    clean_text,
    make_chunks,
    prepare_corpus,
    read_text_folder,
    split_documents,
    squad_documents,
    stride_table,
    token_stream,
)
from pocketlm.data.registry import squad_json_path


def test_clean_text_transliterates_then_drops_non_ascii():
    assert clean_text("Beyoncé’s naïve café — “hi”\r\n") == "Beyonce's naive cafe - \"hi\""
    cleaned = clean_text("Zürich 北京 \U0001F600 ½ end")
    assert cleaned.isascii() and cleaned.startswith("Zurich BeiJing") and cleaned.endswith("1/2 end")


def test_read_text_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(CorpusError, match=f"corpus folder not found: {tmp_path / 'nope'}"):
        read_text_folder(tmp_path / "nope")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(CorpusError, match=f"{tmp_path} has no non-empty .txt files"):
        read_text_folder(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("Café text")
    assert read_text_folder(tmp_path) == [Document("sub/a.txt", "Cafe text")]


def test_squad_paragraphs_are_unique_and_grouped_by_article():
    documents = squad_documents(squad_json_path("train"))
    assert len(documents) == 44  # the mirror's 44 SQuAD-train articles
    beyonce = next(doc for doc in documents if doc.name == "squad/Beyonc\u00e9")
    assert "Beyonce Giselle Knowles-Carter" in beyonce.text and beyonce.text.isascii()
    paragraphs = [p for doc in documents for p in doc.text.split("\n\n")]
    assert len(paragraphs) == len(set(paragraphs))


def test_split_keeps_documents_whole_and_is_deterministic():
    documents = [Document(f"doc{i}", "x" * (100 + i)) for i in range(50)]
    train, validation = split_documents(documents, 0.1)
    assert {d.name for d in train} | {d.name for d in validation} == {d.name for d in documents}
    assert not {d.name for d in train} & {d.name for d in validation}
    share = sum(len(d.text) for d in validation) / sum(len(d.text) for d in documents)
    assert 0.1 <= share < 0.13
    assert {d.name for d in validation} == {d.name for d in split_documents(list(reversed(documents)), 0.1)[1]}


def test_token_stream_separates_documents_with_eos(tiny_tokenizer):
    stream = token_stream(tiny_tokenizer, [Document("a", "Hello world."), Document("b", "Second one.")])
    eos = tiny_tokenizer.eos_token_id
    assert stream.count(eos) == 2 and stream[-1] == eos
    first = stream[: stream.index(eos)]
    assert tiny_tokenizer.decode(first) == "Hello world."


@pytest.mark.parametrize("length,stride", [(8, 8), (8, 3), (8, 11), (8, 16), (5, 1)])
def test_chunk_stats_match_the_chunks(length, stride):
    stream = list(range(103))
    chunks = make_chunks(stream, length, stride)
    stats = chunk_stats(len(stream), length, stride)
    assert stats.chunks == len(chunks) and all(len(c) == length for c in chunks)
    assert stats.covered_tokens == len({t for c in chunks for t in c})
    assert stats.memory_bytes == len(chunks) * length * 8
    assert chunks[1][0] == stride


def test_stride_trades_coverage_against_memory():
    rows = stride_table(100_000, 512, [0.5, 1, 2])
    assert [r["chunks"] for r in rows] == [389, 195, 98]
    assert rows[0]["coverage"] == rows[1]["coverage"] > 0.99 and 0.49 < rows[2]["coverage"] < 0.51
    assert rows[0]["memory_bytes"] > rows[1]["memory_bytes"] > rows[2]["memory_bytes"]


def test_prepare_corpus_writes_tokenizer_chunks_and_stats(tmp_path, corpus_texts):
    from transformers import AutoTokenizer

    documents = [Document(f"a{i}", clean_text(text)) for i, text in enumerate(corpus_texts)]
    prepared = prepare_corpus(documents, tmp_path, vocab_size=400, chunk_length=64, stride=32, validation_ratio=0.2)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert len(tokenizer) == 400 and tokenizer.mask_token == "<mask>"
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    validation = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert [c["id"] for c in train] == list(range(len(train))) == list(range(prepared.train.chunks))
    assert train[1]["input_ids"][:32] == train[0]["input_ids"][32:]  # stride 32 overlaps half a chunk
    assert len(validation) == prepared.validation.chunks and prepared.validation.stride == 64  # never overlapping
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["train"]["chunks"] == len(train) and stats["documents"]["validation"] >= 1


def test_corpus_too_small_for_one_chunk(tmp_path):
    with pytest.raises(CorpusError, match="too small: its train split has .* fewer than one chunk of 512"):
        prepare_corpus([Document("a", "A short text."), Document("b", "Another.")], tmp_path, vocab_size=300)


def _run_prepare(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["prepare_corpus.py", *args])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path("training_scripts/prepare_corpus.py", run_name="__main__")
    return exit_.value.code, capsys.readouterr()


def test_prepare_script_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    code, out = _run_prepare(monkeypatch, capsys, "--corpus_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"))
    assert code == 2 and out.err == f"error: corpus folder not found: {tmp_path / 'missing'}\n"
    (tmp_path / "empty").mkdir()
    code, out = _run_prepare(monkeypatch, capsys, "--corpus_dir", str(tmp_path / "empty"))
    assert code == 2 and out.err == f"error: corpus folder {tmp_path / 'empty'} has no non-empty .txt files\n"
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "a.txt").write_text("Just one sentence here.")
    code, out = _run_prepare(monkeypatch, capsys, "--corpus_dir", str(tmp_path / "small"), "--output_dir", str(tmp_path / "o"))
    assert code == 2 and out.err.startswith("error: the corpus is too small") and out.err.count("\n") == 1


def test_prepare_script_prints_coverage_chunks_memory(tmp_path, monkeypatch, capsys, corpus_texts):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(corpus_texts[:6]):
        (folder / f"{i}.txt").write_text(text)
    code, out = _run_prepare(
        monkeypatch, capsys, "--corpus_dir", str(folder), "--output_dir", str(tmp_path / "o"),
        "--vocab_size", "300", "--chunk_length", "128", "--stride", "64", "--stride_ratios", "0.5,1,2",
    )
    assert code == 0, out.err
    assert "chunks of 128 (stride 64), coverage" in out.out and "memory" in out.out
    table = [line for line in out.out.splitlines() if line.startswith("| ")]
    assert len(table) == 5 and table[2].startswith("| 0.5 | 64 |")  # header, separator, 3 ratios
    saved = (tmp_path / "o" / "stride_table.md").read_text().splitlines()
    assert saved == table
    # --table_only rebuilds the table from stats.json alone (no tokenizer training, no chunk writing).
    (tmp_path / "o" / "stride_table.md").unlink()
    code, out = _run_prepare(monkeypatch, capsys, "--output_dir", str(tmp_path / "o"), "--stride_ratios", "0.5,1,2", "--table_only")
    assert code == 0 and (tmp_path / "o" / "stride_table.md").read_text().splitlines() == table
    code, out = _run_prepare(monkeypatch, capsys, "--output_dir", str(tmp_path / "none"), "--table_only")
    assert code == 2 and out.err == f"error: --table_only needs {tmp_path / 'none' / 'stats.json'}: prepare the corpus first\n"
