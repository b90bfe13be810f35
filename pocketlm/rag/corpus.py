"""The passages and questions the RAG lab indexes, trains on and evaluates with.

* the index: the RAG dev passages (913 SQuAD-dev paragraphs) plus WikiText-2 paragraphs as distractors;
* training (query adapter, generator LoRA): SQuAD *train* only — its 44 articles share none with the dev set;
* evaluation: any `passages.jsonl` + `qa.jsonl` pair in the mirror's format.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from pocketlm.data import corpus_folder, load_rag_dev, read_jsonl, read_squad_json, squad_json_path
from pocketlm.data.registry import DatasetFormatError, DatasetNotFoundError


@dataclass(frozen=True)
class Passage:
    """One retrievable fragment; `id` is what answers cite."""

    id: str
    title: str
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: tuple[str, ...]
    passage_id: str


def passages_from_rows(rows: list[dict]) -> list[Passage]:
    return [Passage(str(r["id"]), str(r.get("title", "")), str(r["text"])) for r in rows]


def _answers(value) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(map(str, value))


def questions_from_rows(rows: list[dict]) -> list[Question]:
    return [Question(str(r["id"]), str(r["question"]), _answers(r["answers"]), str(r["passage_id"])) for r in rows]


def read_passages_and_questions(passages_path: str | Path, qa_path: str | Path) -> tuple[list[Passage], list[Question]]:
    """Read a `passages.jsonl` + `qa.jsonl` pair in the mirror's format; errors name the file and the line."""
    passages = passages_from_rows(read_jsonl(passages_path, required=("id", "text")))
    questions = questions_from_rows(read_jsonl(qa_path, required=("id", "question", "answers", "passage_id")))
    if not passages:
        raise DatasetFormatError(f"{passages_path}: no passages")
    if not questions:
        raise DatasetFormatError(f"{qa_path}: no questions")
    known = {p.id for p in passages}
    for q in questions:
        if q.passage_id not in known:
            raise DatasetFormatError(f"{qa_path}: question {q.id!r} names passage_id {q.passage_id!r}, which is not in {passages_path}")
        if not q.answers:
            raise DatasetFormatError(f"{qa_path}: question {q.id!r} has no answers")
    return passages, questions


def rag_dev() -> tuple[list[Passage], list[Question]]:
    """The mirror's RAG dev set: 913 passages, 300 questions with a gold `passage_id`."""
    passages, questions = load_rag_dev()
    return passages_from_rows(passages), questions_from_rows(questions)


def wikitext_distractors(max_count: int | None = None, min_words: int = 40, seed: int = 0) -> list[Passage]:
    """WikiText-2 paragraphs (one per line in the mirror's articles) of at least `min_words` words.

    Headings (`== X ==`) and short lines are skipped. With `max_count`, a seeded random sample is kept, so a
    smaller index is still spread over all 120 articles.
    """
    paragraphs = []
    for article_no, path in enumerate(sorted(corpus_folder().glob("*.txt"))):
        lines = path.read_text(encoding="utf-8").splitlines()
        title = lines[0].strip() if lines else path.stem
        for line_no, line in enumerate(lines[1:], start=1):
            text = line.strip()
            if text.startswith("=") or len(text.split()) < min_words:
                continue
            paragraphs.append(Passage(f"wiki-{article_no:03d}-{line_no:03d}", title, text))
    if max_count is not None and max_count < len(paragraphs):
        paragraphs = sorted(random.Random(seed).sample(paragraphs, max_count), key=lambda p: p.id)
    return paragraphs


@dataclass(frozen=True)
class SquadTrainSet:
    """SQuAD train as retrieval training data: unique paragraphs and (question, paragraph index, answers)."""

    passages: list[Passage]
    questions: list[str]
    positives: list[int]
    """Index into `passages` of each question's gold paragraph."""
    answers: list[str]
    titles: list[str]
    """Each question's article, to hold out whole articles (as the dev set does)."""


def squad_train_set() -> SquadTrainSet:
    """SQuAD v1.1 train from the mirror (never the dev/evaluation questions)."""
    path = squad_json_path("train")
    if path is None:
        raise DatasetNotFoundError("SQuAD train.json is not in the local mirror (see pocketlm.data.squad_json_path)")
    records = read_squad_json(path)
    index: dict[str, int] = {}
    passages: list[Passage] = []
    questions, positives, answers, titles = [], [], [], []
    for record in records:
        context = record["context"]
        if context not in index:
            index[context] = len(passages)
            passages.append(Passage(f"train-{len(passages):05d}", record["title"], context))
        questions.append(record["question"])
        positives.append(index[context])
        answers.append(record["answers"]["text"][0])
        titles.append(record["title"])
    return SquadTrainSet(passages, questions, positives, answers, titles)


def split_by_title(titles: list[str], held_out_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split item indices into (train, held-out) by whole articles, so held-out topics are unseen ones."""
    unique = sorted(set(titles))
    random.Random(seed).shuffle(unique)
    n_held = max(1, round(len(unique) * held_out_fraction))
    held = set(unique[:n_held])
    train = [i for i, t in enumerate(titles) if t not in held]
    held_out = [i for i, t in enumerate(titles) if t in held]
    return train, held_out
