"""Corpus preparation: cleaning, reading, splitting, chunking, coverage, lazy chunk files, identity with the
in-memory preparation it replaced, the extra Wikipedia corpus, and the prepare script's errors."""

import json
import pickle
import runpy
import shutil
import sys

import pytest

from pocketlm.data.chunks import ChunkFile, ChunkWriter, read_chunks_jsonl, write_chunks_jsonl
from pocketlm.data.corpus import (
    CorpusError,
    CorpusSource,
    Document,
    chunk_starts,
    chunk_stats,
    clean_text,
    held_out_names,
    prepare_corpus,
    read_text_folder,
    squad_documents,
    stride_table,
)
from pocketlm.data.registry import DatasetFormatError, corpus_folder, squad_json_path, wikipedia_shards


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
    lengths = [(f"doc{i}", 100 + i) for i in range(50)]
    held_out = held_out_names(lengths, 0.1)
    assert held_out < {name for name, _ in lengths}
    share = sum(n for name, n in lengths if name in held_out) / sum(n for _, n in lengths)
    assert 0.1 <= share < 0.13
    assert held_out == held_out_names(list(reversed(lengths)), 0.1)
    assert held_out_names(lengths[:2], 0.9) == held_out_names(lengths[:2], 0.5) and len(held_out_names(lengths[:2], 0.9)) == 1


@pytest.mark.parametrize("length,stride", [(8, 8), (8, 3), (8, 11), (8, 16), (5, 1)])
def test_chunk_writer_cuts_the_stream_as_slicing_would(tmp_path, length, stride):
    """Fed in uneven pieces, the writer writes exactly the slices of the whole stream; the stats agree."""
    stream = list(range(103))
    pieces = [stream[a:b] for a, b in zip([0, 1, 9, 30, 31, 77], [1, 9, 30, 31, 77, 103])]
    with ChunkWriter(tmp_path / "c.jsonl", length, stride) as writer:
        for piece in pieces:
            writer.add(piece)
            assert len(writer._pending) < length + max(map(len, pieces))  # never the whole stream
    chunks = [row["input_ids"] for row in read_chunks_jsonl(tmp_path / "c.jsonl")]
    assert chunks == [stream[s : s + length] for s in chunk_starts(len(stream), length, stride)]
    stats = chunk_stats(writer.tokens, length, stride)
    assert stats.chunks == writer.chunks == len(chunks) and all(len(c) == length for c in chunks)
    assert stats.covered_tokens == len({t for c in chunks for t in c})
    assert stats.memory_bytes == len(chunks) * length * 8


def test_chunk_writer_leaves_no_file_when_aborted(tmp_path):
    (tmp_path / "c.jsonl").write_text("old\n")
    with pytest.raises(RuntimeError), ChunkWriter(tmp_path / "c.jsonl", 4, 4) as writer:
        writer.add(range(10))
        raise RuntimeError("interrupted")
    assert (tmp_path / "c.jsonl").read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]


def test_chunk_file_reads_rows_lazily_like_the_whole_file(tmp_path):
    path = tmp_path / "c.jsonl"
    write_chunks_jsonl(path, ([i, i + 1, i + 2] for i in range(5)))
    path.write_text(path.read_text() + "\n")  # a trailing blank line is not a chunk
    chunks = ChunkFile(path)
    parsed = [json.loads(line) for line in path.read_text().splitlines() if line]
    assert len(chunks) == 5 and list(chunks) == parsed and chunks[-1] == parsed[-1]
    assert chunks.__getitems__([3, 0]) == [parsed[3], parsed[0]]  # what DataLoader asks for a batch
    assert list(chunks[1:3]) == parsed[1:3] and len(chunks[:0]) == 0
    assert list(pickle.loads(pickle.dumps(chunks))) == parsed  # into DataLoader workers
    with pytest.raises(IndexError):
        chunks[5]
    path.write_text('{"id": 0, "input_ids": [1]}\n\n{"id": 1, "input_ids": [2\n{"input_ids": [3]}\n')
    broken = ChunkFile(path)
    assert broken[0] == {"id": 0, "input_ids": [1]}
    with pytest.raises(DatasetFormatError, match=f"{path}:3: not valid JSON"):
        broken[1]
    with pytest.raises(DatasetFormatError, match=f"{path}:4: missing field\\(s\\) id"):
        broken[2]


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
    assert not (tmp_path / "o" / "train.jsonl").exists()
    code, out = _run_prepare(monkeypatch, capsys, "--extra_corpus", "c4", "--output_dir", str(tmp_path / "o"))
    assert code == 2 and out.err == "error: --extra_corpus must be one of wikipedia-en-2014, got 'c4'\n"
    for flag, value, message in (("--num_proc", "0", "--num_proc must be at least 1, got 0"),
                                 ("--max_words", "-1", "--max_words must be 0 (no limit) or positive, got -1"),
                                 ("--streaming", "true --num_proc 2", "--streaming reads the corpus in one process: "
                                  "drop --num_proc, or drop --streaming to use several")):
        code, out = _run_prepare(monkeypatch, capsys, "--corpus_dir", str(tmp_path / "small"), flag, *value.split(),
                                 "--output_dir", str(tmp_path / "o"))
        assert code == 2 and out.err == f"error: {message}\n"
    code, out = _run_prepare(monkeypatch, capsys, "--corpus_dir", str(tmp_path / "small"), "--tokenizer", str(tmp_path / "none"),
                             "--chunk_length", "4", "--validation_ratio", "0", "--output_dir", str(tmp_path / "o"))
    assert code == 2 and out.err.startswith(f"error: --tokenizer {tmp_path / 'none'}: cannot load a tokenizer there") and out.err.count("\n") == 1


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


# ---------------------------------------------------------------- identity with the in-memory preparation


def _in_memory_reference(documents, output_dir, vocab_size, chunk_length, stride, validation_ratio):
    """The preparation as it was before it streamed (kept here as the reference): the whole corpus's tokens in
    one list, sliced into chunks, serialised in one string."""
    from pocketlm.data.tokenizer import train_bpe_tokenizer

    held_out = held_out_names([(d.name, len(d.text)) for d in documents], validation_ratio)
    train = [d for d in documents if d.name not in held_out]
    validation = [d for d in documents if d.name in held_out]
    tokenizer = train_bpe_tokenizer((d.text for d in train), vocab_size=vocab_size, model_max_length=chunk_length)
    tokenizer.save_pretrained(output_dir / "tokenizer")
    for split, docs, split_stride in (("train", train, stride), ("validation", validation, chunk_length)):
        stream = []
        for enc in tokenizer.backend_tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False):
            stream += [*enc.ids, tokenizer.eos_token_id]
        chunks = [stream[s : s + chunk_length] for s in range(0, max(len(stream) - chunk_length + 1, 0), split_stride)]
        lines = (json.dumps({"id": i, "input_ids": c}, separators=(",", ":")) for i, c in enumerate(chunks))
        (output_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def article_folder(tmp_path_factory):
    """16 real WikiText-2 articles (about 200k characters, non-ASCII included), as a text folder."""
    folder = tmp_path_factory.mktemp("articles")
    for path in sorted(corpus_folder().glob("*.txt"))[:16]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.parametrize("num_proc,streaming,stride", [(2, False, 96), (1, True, 160)])
def test_prepared_chunks_are_byte_identical_to_the_in_memory_path(tmp_path, article_folder, num_proc, streaming, stride):
    """Same tokenizer, same chunks, byte for byte — with two map processes (a shard boundary mid-corpus) and
    overlapping chunks, and streamed with gaps between chunks. A subset of the default corpus is a fair
    test: nothing in the streaming path depends on the corpus size except where batches and shards end, and
    both are crossed here (`prepare_corpus` on the whole default corpus gave identical files as well)."""
    reference, prepared_dir = tmp_path / "reference", tmp_path / "prepared"
    _in_memory_reference(read_text_folder(article_folder), reference, 600, 128, stride, 0.2)
    prepared = prepare_corpus(CorpusSource(text_folder=str(article_folder)), prepared_dir, vocab_size=600,
                              chunk_length=128, stride=stride, validation_ratio=0.2, num_proc=num_proc, streaming=streaming)
    for name in ("train.jsonl", "validation.jsonl", "tokenizer/tokenizer.json"):
        assert (prepared_dir / name).read_bytes() == (reference / name).read_bytes(), name
    assert prepared.train.chunks > 50 and prepared.validation.chunks > 5
    assert [p.name for p in prepared_dir.iterdir() if p.name.startswith(".")] == []  # the Arrow work folder is gone


def test_wikipedia_shard_articles():
    from pocketlm.data.corpus import _wikipedia_articles

    articles = list(_wikipedia_articles(wikipedia_shards()[0]))
    assert len(wikipedia_shards()) == 12 and len(articles) == 4343  # the shard's `= Title =` lines after a blank
    assert articles[0].name == "wikipedia/Chen Zhili" and articles[0].text.startswith("= Chen Zhili =\n\nChen Zhili (")
    assert all(a.text.count("\n= ") == 0 for a in articles[:200])  # no article swallowed the next one's title


def test_extra_corpus_adds_training_text_and_keeps_the_validation_set(tmp_path, article_folder):
    """Wikipedia articles only add train chunks: with the same tokenizer, validation is byte for byte the
    base corpus's, so perplexities compare. `max_words` stops reading a few articles into the first shard."""
    base = prepare_corpus(CorpusSource(text_folder=str(article_folder)), tmp_path / "base", vocab_size=500,
                          chunk_length=128, validation_ratio=0.2)
    source = CorpusSource(text_folder=str(article_folder), extra_shards=tuple(map(str, wikipedia_shards()[:2])),
                          max_words=base.words + 20_000)
    more = prepare_corpus(source, tmp_path / "more", chunk_length=128, validation_ratio=0.2, tokenizer=tmp_path / "base" / "tokenizer")
    assert (tmp_path / "more" / "validation.jsonl").read_bytes() == (tmp_path / "base" / "validation.jsonl").read_bytes()
    assert more.documents["validation"] == base.documents["validation"]
    assert base.words + 20_000 <= more.words < base.words + 25_000 and more.documents["train"] > base.documents["train"] + 5
    assert (base.extra_words, more.extra_words) == (0, more.words - base.words)
    assert json.loads((tmp_path / "more" / "stats.json").read_text())["extra_words"] == more.extra_words
    assert more.train.tokens > base.train.tokens + 20_000 and more.vocab_size == base.vocab_size
    # The base documents come first in the stream, so every base chunk is also a chunk of the larger corpus.
    assert (tmp_path / "more" / "train.jsonl").read_text().startswith((tmp_path / "base" / "train.jsonl").read_text())


def test_pretraining_reads_the_chunks_lazily_and_batches_them_as_before(tmp_path, article_folder):
    """`load_prepared` hands pretraining `ChunkFile`s (8 bytes of offset per chunk in memory); a shuffled
    DataLoader over them gives the batches it gave over the parsed list, in the same order."""
    import torch
    from torch.utils.data import DataLoader

    from pocketlm.data.collator import CustomDataCollator
    from pocketlm.training.pretrain import load_prepared

    prepare_corpus(CorpusSource(text_folder=str(article_folder)), tmp_path, vocab_size=400, chunk_length=64, validation_ratio=0.2)
    tokenizer, train, validation = load_prepared(tmp_path)
    assert isinstance(train, ChunkFile) and isinstance(validation, ChunkFile) and train.offsets.nbytes == 8 * len(train)
    parsed = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]

    def batches(data):
        loader = DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0),
                            collate_fn=CustomDataCollator(tokenizer, mode="static", static_chunk_fraction=0.5, seed=1))
        return [batch["input_ids"] for batch in loader]

    lazy, eager = batches(train), batches(parsed)
    assert len(lazy) == len(eager) > 10 and all(torch.equal(a, b) for a, b in zip(lazy, eager))
