"""Resolve a data set by name: the local mirror first, the Hugging Face Hub where the mirror lacks it.

The mirror (`POCKETLM_DATA_DIR`, default `../shared/data`) is read-only; nothing here writes to it.
Every loader returns the same schema whichever place the data came from, so callers never branch on it:

* classification sets -> `datasets.Dataset` with `text` (str) and `label` (`ClassLabel` with names);
* SQuAD -> `datasets.Dataset` in the Hub's `squad` schema (`id, title, context, question, answers`);
* the RAG dev set -> `(passages, questions)` as lists of dicts (mirror only: it has no Hub twin).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pocketlm.errors import PocketLMError
from pocketlm.settings import data_dir, hub_offline

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "validation", "test")


class DatasetNotFoundError(PocketLMError, FileNotFoundError):
    """A data set is neither in the local mirror nor reachable on the Hub."""


class DatasetFormatError(PocketLMError, ValueError):
    """A data file exists but does not have the expected shape (a column, a field, a line)."""


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named data set lives: its mirror folder and, if it has one, its Hub twin."""

    folder: str
    kind: str  # "classification" | "squad" | "corpus" | "rag"
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=dict)
    """Our split name -> the Hub's (slicing allowed) where they differ."""
    hub_columns: dict[str, str] = field(default_factory=dict)
    """The Hub's column name -> ours, where they differ."""


DATASETS: dict[str, DatasetSpec] = {
    "wikitext-2-raw": DatasetSpec("wikitext-2-raw", "corpus", "Salesforce/wikitext", "wikitext-2-raw-v1"),
    "wikipedia-en-2014": DatasetSpec("wikipedia-en-2014", "corpus"),
    "squad": DatasetSpec("squad-v1.1", "squad", "rajpurkar/squad"),
    "squad-rag-dev": DatasetSpec("squad-rag-dev", "rag"),
    "sst2": DatasetSpec("sst2", "classification", "stanfordnlp/sst2", hub_columns={"sentence": "text"}),
    "ag_news": DatasetSpec(
        "ag_news", "classification", "fancyzhx/ag_news",
        hub_splits={"train": "train[:95%]", "validation": "train[95%:]"},
    ),
    "trec": DatasetSpec(
        "trec", "classification", "CogComp/trec",
        hub_splits={"train": "train[:90%]", "validation": "train[90%:]"},
        hub_columns={"coarse_label": "label"},
    ),
    "sentiment-labelled-sentences": DatasetSpec("sentiment-labelled-sentences", "classification"),
}
ALIASES = {
    "squad-v1.1": "squad",
    "squad_v1.1": "squad",
    "wikitext": "wikitext-2-raw",
    "sst-2": "sst2",
    "agnews": "ag_news",
    "ag-news": "ag_news",
    "uci-sentiment": "sentiment-labelled-sentences",
    "uci_sentiment": "sentiment-labelled-sentences",
}


def spec(name: str) -> DatasetSpec:
    """The spec of a named data set; an unknown name raises an error listing the known ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        known = ", ".join(sorted(DATASETS))
        raise DatasetNotFoundError(f"unknown data set {name!r}; known: {known} (or a folder of train/validation/test CSVs)")
    return DATASETS[key]


def local_folder(name: str) -> Path | None:
    """The mirror folder of a named data set, or None when the mirror does not have it."""
    folder = data_dir() / spec(name).folder
    return folder if folder.is_dir() else None


def _not_found(name: str, what: str) -> DatasetNotFoundError:
    s = spec(name)
    where_hub = f"the Hub ({s.hub_id})" if s.hub_id else "the Hub (it has no Hub copy)"
    why = " — the Hub is offline (HF_HUB_OFFLINE=1)" if s.hub_id and hub_offline() else ""
    return DatasetNotFoundError(
        f"{what} of data set {name!r} not found in the local mirror ({data_dir() / s.folder}) nor on {where_hub}{why}"
    )


def _hub_load(name: str, split: str) -> "datasets.Dataset":
    import datasets

    s = spec(name)
    if s.hub_id is None or hub_offline():
        raise _not_found(name, f"split {split!r}")
    try:
        ds = datasets.load_dataset(s.hub_id, s.hub_config, split=s.hub_splits.get(split, split))
    except Exception as err:  # the Hub raises many types (connection, missing split...); name both places
        raise _not_found(name, f"split {split!r}") from err
    for theirs, ours in s.hub_columns.items():
        if theirs in ds.column_names:
            ds = ds.rename_column(theirs, ours)
    return ds


# ---------------------------------------------------------------- classification


def _classification_csv(folder: Path, split: str) -> Path:
    path = folder / f"{split}.csv"
    if not path.is_file():
        raise DatasetNotFoundError(f"no {split}.csv in {folder}")
    return path


def load_classification(name: str, split: str, label_column: str = "label") -> "datasets.Dataset":
    """A labelled text set as `text` + `label` (a `ClassLabel`), from the mirror or the Hub.

    `name` is a known data set (`sst2`, `ag_news`, `trec`, `sentiment-labelled-sentences`) or a folder
    holding `<split>.csv` files with a `text` column, a label column and `labels.txt` (label names, one per
    line, in index order; `fine_labels.txt` for a column named `fine_label`).
    """
    import datasets

    if split not in SPLITS:
        raise DatasetFormatError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    as_path = Path(name).expanduser()
    if as_path.is_dir():
        folder = as_path
    else:
        if spec(name).kind != "classification":
            raise DatasetFormatError(f"data set {name!r} is not a text-classification set")
        folder = local_folder(name)
        if folder is None:
            ds = _hub_load(name, split)
            if label_column != "label" or "label" not in ds.column_names:
                raise DatasetFormatError(f"data set {name!r} has no column {label_column!r} (columns: {', '.join(ds.column_names)})")
            return ds.select_columns(["text", "label"])

    path = _classification_csv(folder, split)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for needed in ("text", label_column):
            if needed not in columns:
                raise DatasetFormatError(f"{path}: no column {needed!r} (columns: {', '.join(columns)})")
        rows = list(reader)
    names_file = folder / f"{label_column.removesuffix('label')}labels.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    else:
        names = sorted({row[label_column] for row in rows})
    index = {label: i for i, label in enumerate(names)}
    labels = []
    for line_no, row in enumerate(rows, start=2):
        if row[label_column] not in index:
            raise DatasetFormatError(f"{path}:{line_no}: label {row[label_column]!r} is not in {names_file.name} ({', '.join(names)})")
        labels.append(index[row[label_column]])
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"text": [row["text"] for row in rows], "label": labels}, features=features)


# ---------------------------------------------------------------- SQuAD


def read_squad_json(path: str | Path) -> list[dict]:
    """Flatten a SQuAD v1.1-format JSON file into one record per question, in the Hub's `squad` schema."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"SQuAD file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        records = []
        for article in raw["data"]:
            for paragraph in article["paragraphs"]:
                for qa in paragraph["qas"]:
                    records.append(
                        {
                            "id": str(qa["id"]),
                            "title": article.get("title", ""),
                            "context": paragraph["context"],
                            "question": qa["question"],
                            "answers": {
                                "text": [a["text"] for a in qa["answers"]],
                                "answer_start": [int(a["answer_start"]) for a in qa["answers"]],
                            },
                        }
                    )
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err
    except (KeyError, TypeError) as err:
        raise DatasetFormatError(f"{path}: not in SQuAD format (data[].paragraphs[].qas[]): missing {err}") from err
    return records


def squad_json_path(split: str) -> Path | None:
    """The mirror's SQuAD JSON file for a split (`train`, `validation`), or None if absent."""
    folder = local_folder("squad")
    path = folder / f"{split}.json" if folder else None
    return path if path and path.is_file() else None


def load_squad(split: str) -> "datasets.Dataset":
    """SQuAD v1.1 `train` or `validation` in the Hub's `squad` schema, from the mirror or the Hub."""
    import datasets

    path = squad_json_path(split)
    if path is None:
        return _hub_load("squad", split)
    return datasets.Dataset.from_list(read_squad_json(path))


# ---------------------------------------------------------------- corpus and RAG


def corpus_folder() -> Path:
    """The mirror's folder of WikiText-2 articles (one plain-text file per article)."""
    folder = local_folder("wikitext-2-raw")
    if folder is None or not (folder / "articles").is_dir():
        raise _not_found("wikitext-2-raw", "the articles folder")
    return folder / "articles"


def wikipedia_shards() -> list[Path]:
    """The mirror's Wikipedia articles (about 2014): 12 gzip text shards, read in name order (mirror only)."""
    folder = local_folder("wikipedia-en-2014")
    shards = sorted(folder.glob("wiki-*.txt.gz")) if folder else []
    if not shards:
        raise _not_found("wikipedia-en-2014", "the wiki-*.txt.gz shards")
    return shards


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict]:
    """Read a JSON-lines file; a malformed line or a missing field raises an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                rows.append(parse_jsonl_row(line, required, lambda: f"{path}:{line_no}"))
    return rows


def parse_jsonl_row(line: str | bytes, required: Sequence[str], where: Callable[[], str]) -> dict:
    """One JSON-lines row, checked: a JSON object with the `required` fields. Errors name `where()` (file:line),
    which is only called on failure (a lazy reader finds its line number by reading the file up to the row)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(f"{where()}: not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise DatasetFormatError(f"{where()}: expected a JSON object")
    missing = [key for key in required if key not in row]
    if missing:
        raise DatasetFormatError(f"{where()}: missing field(s) {', '.join(missing)}")
    return row


def load_rag_dev() -> tuple[list[dict], list[dict]]:
    """The RAG dev set: 913 passages (`id, title, text`) and 300 questions (`id, question, answers, passage_id`)."""
    folder = local_folder("squad-rag-dev")
    if folder is None:
        raise _not_found("squad-rag-dev", "passages.jsonl and qa.jsonl")
    passages = read_jsonl(folder / "passages.jsonl", required=("id", "text"))
    questions = read_jsonl(folder / "qa.jsonl", required=("id", "question", "answers", "passage_id"))
    return passages, questions
