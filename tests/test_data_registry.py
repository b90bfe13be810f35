"""Named data sets resolve from the mirror, in one schema; what is missing is named clearly."""

import pytest

from pocketlm.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    load_classification,
    load_rag_dev,
    load_squad,
    read_jsonl,
    read_squad_json,
)


@pytest.mark.parametrize(
    "name, rows, classes",
    [("sst2", 872, 2), ("ag_news", 1000, 4), ("trec", 501, 6), ("sentiment-labelled-sentences", 300, 2)],
)
def test_classification_sets_load_from_the_mirror(name, rows, classes):
    ds = load_classification(name, "validation")
    assert ds.num_rows == rows and ds.column_names == ["text", "label"]
    assert ds.features["label"].num_classes == classes
    assert set(ds["label"]) == set(range(classes))


def test_sst2_labels_follow_labels_txt():
    ds = load_classification("sst2", "train")
    assert ds.features["label"].names == ["negative", "positive"]
    first = ds[0]
    assert first["text"].startswith("a stirring , funny") and first["label"] == 1


def test_a_folder_of_csvs_is_a_data_set(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    ds = load_classification(str(tmp_path), "train")
    assert ds.features["label"].names == ["neg", "pos"] and ds["label"] == [1, 0]


def test_unknown_data_set_and_missing_column_are_named(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="unknown data set 'imdb'"):
        load_classification("imdb", "train")
    (tmp_path / "train.csv").write_text("sentence,label\ngood,pos\n")
    with pytest.raises(DatasetFormatError, match="no column 'text'"):
        load_classification(str(tmp_path), "train")
    with pytest.raises(DatasetFormatError, match="no column 'topic'"):
        load_classification("trec", "train", label_column="topic")


def test_missing_mirror_names_both_places(tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETLM_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        load_classification("sst2", "train")
    assert str(tmp_path / "sst2") in str(err.value) and "stanfordnlp/sst2" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="has no Hub copy"):
        load_rag_dev()


def test_squad_in_hub_schema():
    ds = load_squad("validation")
    assert ds.num_rows == 4961
    ex = ds[0]
    start, text = ex["answers"]["answer_start"][0], ex["answers"]["text"][0]
    assert ex["context"][start : start + len(text)] == text


def test_bad_files_are_named_with_their_line(tmp_path):
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(DatasetFormatError, match=r"qa.jsonl:2: not valid JSON"):
        read_jsonl(bad)
    with pytest.raises(DatasetFormatError, match=r"qa.jsonl:1: missing field\(s\) question"):
        read_jsonl(bad, required=("id", "question"))
    squad = tmp_path / "s.json"
    squad.write_text('{"data": [{"title": "t"}]}')
    with pytest.raises(DatasetFormatError, match="not in SQuAD format"):
        read_squad_json(squad)


def test_rag_dev_set():
    passages, questions = load_rag_dev()
    assert len(passages) == 913 and len(questions) == 300
    ids = {p["id"] for p in passages}
    assert all(q["passage_id"] in ids for q in questions)
