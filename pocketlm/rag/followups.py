"""A follow-up question set built from the dev data, to measure conversation-aware retrieval.

For each RAG dev question (the *first* question), another SQuAD-dev question about the same paragraph is
rewritten to lean on the first: the longest name it shares with the first question or the article title
("Super Bowl 50", "Genghis Khan") becomes "it" ("its" before "'s"). "When was Super Bowl 50 played?" after
"Which NFL team won Super Bowl 50?" becomes "When was it played?", which alone names nothing findable.
Deterministic (file order, one follow-up per first question, only those the rule can rewrite), generated
by code from the mirror's files, so nothing is committed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pocketlm.data import read_squad_json, squad_json_path
from pocketlm.rag.conversation import salient_terms
from pocketlm.rag.corpus import Question, rag_dev


@dataclass(frozen=True)
class FollowUp:
    first: Question
    """The question asked before, as in the dev set."""
    question: str
    """The second question, rewritten to lean on the first."""
    original: str
    """The second question as SQuAD has it."""
    answers: tuple[str, ...]
    passage_id: str


def lean_on(question: str, first_question: str, title: str) -> str | None:
    """`question` with the longest name it shares whole with `first_question` or `title` replaced by a pronoun
    (a "the" before it goes too); None when they share no name of 3 characters or more."""
    known = f" {first_question} {title.replace('_', ' ')} ".lower()
    shared = [p for p in salient_terms(question) if len(p) >= 3 and re.search(rf"(?<!\w){re.escape(p.lower())}(?!\w)", known)]
    if not shared:
        return None
    name = re.escape(max(shared, key=len))
    rewritten, count = re.subn(rf"(?<!\w)(?:the )?{name}['’]s\b", "its", question, count=1, flags=re.I)
    if not count:
        rewritten, count = re.subn(rf"(?<!\w)(?:the )?{name}(?!\w)", "it", question, count=1, flags=re.I)
    return rewritten if count else None


def follow_up_set() -> list[FollowUp]:
    """One follow-up per RAG dev question whose paragraph has another question the rule can rewrite."""
    passages, questions = rag_dev()
    by_id = {p.id: p for p in passages}
    path = squad_json_path("validation")
    if path is None:
        raise FileNotFoundError("the follow-up set needs the mirror's SQuAD validation.json")
    by_context: dict[str, list[dict]] = {}
    for record in read_squad_json(path):
        by_context.setdefault(record["context"], []).append(record)
    follow_ups = []
    for first in questions:
        passage = by_id[first.passage_id]
        for record in by_context.get(passage.text, []):
            if record["id"] == first.id:
                continue
            rewritten = lean_on(record["question"], first.question, passage.title)
            if rewritten:
                answers = tuple(dict.fromkeys(record["answers"]["text"]))
                follow_ups.append(FollowUp(first, rewritten, record["question"], answers, first.passage_id))
                break
    return follow_ups
