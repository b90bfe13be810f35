"""Data: resolution of named data sets (mirror first, then the Hub), corpus preparation, collators, tokenisation."""

from pocketlm.data.registry import (
    DatasetFormatError,
    DatasetNotFoundError,
    corpus_folder,
    load_classification,
    load_rag_dev,
    load_squad,
    read_jsonl,
    read_squad_json,
    squad_json_path,
)

__all__ = [
    "DatasetFormatError",
    "DatasetNotFoundError",
    "corpus_folder",
    "load_classification",
    "load_rag_dev",
    "load_squad",
    "read_jsonl",
    "read_squad_json",
    "squad_json_path",
]
