"""Follow-up questions: the retrieval query of a question that leans on the conversation.

"Where was the game played?" after "Which NFL team won Super Bowl 50?" names nothing the index can find;
the words that make it findable ("Super Bowl 50") are in the previous exchange. The rule here:

* a question *depends* on the conversation when it has a third-person pronoun ("it", "his", "they"...) or is
  short (at most `MAX_BARE_WORDS` words) and names nothing (no capitalised word but function words such as
  "Which", no number) — a longer question without a name usually carries its own topic ("What is the most
  common form of treatment for ...?"), and treating those as follow-ups made self-contained questions worse;
* the query of a dependent question is the question plus the *salient terms* of the latest exchange that has
  any: its names and numbers (capitalised words, figures) from the question and the answer, up to
  `MAX_TERMS`; older exchanges only when the latest names nothing.

A self-contained question ("Who founded Warsaw University?") is searched as typed. A dependent one keeps some
of its own matches too (`merge_retrievals`): a short question naming nothing ("Where was the war fought?") can
also be about something other than the last exchange. The alternative of always
searching with the history appended is measured against this rule by `benchmarks/rag_answers.py`: appended
history drags unrelated questions towards the previous topic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, TypeVar

from pocketlm.rag.prompt import STOPWORDS

PRONOUNS = frozenset("it its he him his she her hers they them their theirs".split())
MAX_TERMS = 8
MAX_BARE_WORDS = 5
_TOKEN = re.compile(r"[\w'’-]+")
_POSSESSIVE = re.compile(r"['’]s\b")
_NAME = re.compile(r"^(?:[A-Z][\w'’-]*|\d[\d,.]*\w*)$")
_SMALL = frozenset("of the and de von van del da la le".split())
_NOT_NAMES = STOPWORDS | frozenset("name list give tell according also there here not".split())


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _is_name(token: str) -> bool:
    return bool(_NAME.match(token)) and token.lower() not in _NOT_NAMES


def needs_context(question: str) -> bool:
    """Whether `question` seems to lean on the conversation: a pronoun, or a short question naming nothing."""
    tokens = _tokens(question)
    if any(t.lower().rstrip("'’s") in PRONOUNS or t.lower() in PRONOUNS for t in tokens):
        return True
    return len(tokens) <= MAX_BARE_WORDS and not any(_is_name(t) for t in tokens)


def salient_terms(text: str) -> list[str]:
    """Names and numbers of `text` as phrases ("Super Bowl 50", "Denver Broncos", "1,548"), in order, no repeats.

    Capitalised function words ("Which", "The", "In") are no names.
    """
    tokens = _tokens(_POSSESSIVE.sub(" ", text))
    phrases: list[str] = []
    current: list[str] = []

    def close() -> None:
        while current and current[-1].lower() in _SMALL:
            current.pop()
        if current:
            phrases.append(" ".join(current))
        current.clear()

    for token in tokens:
        if _is_name(token):
            current.append(token)
        elif current and token.lower() in _SMALL:
            current.append(token)  # "University of Warsaw"
        else:
            close()
    close()
    seen: set[str] = set()
    return [p for p in phrases if not (p.lower() in seen or seen.add(p.lower()))]


def contextual_query(question: str, history: Sequence[tuple[str, str]], max_terms: int = MAX_TERMS) -> str:
    """The retrieval query for `question` after `history` ((question, answer) pairs, oldest first).

    The question itself when it is self-contained or when no exchange names anything; else the question
    followed by the salient terms of the latest exchange that has some (those the question lacks).
    """
    if not history or not needs_context(question):
        return question
    asked = question.lower()
    for previous_question, previous_answer in reversed(history):
        terms = [t for t in salient_terms(f"{previous_question} {previous_answer}") if t.lower() not in asked]
        if terms:
            return f"{question} {' '.join(terms[:max_terms])}"
    return question


class _HasId(Protocol):
    id: str


Retrieved = TypeVar("Retrieved", bound=_HasId)


def merge_retrievals(contextual: Sequence[Retrieved], as_typed: Sequence[Retrieved], k: int) -> list[Retrieved]:
    """The k fragments of a question searched with the conversation's terms: the best ceil(k/2) of that search,
    then the best of the question as typed, then the rest of the first search, each fragment once (by `id`).

    `benchmarks/rag_answers.py` measures it against the contextual search alone: follow-ups are found as often,
    and a self-contained question that only looks dependent is found as often as when searched as typed.
    """
    merged: list[Retrieved] = []
    seen: set[str] = set()
    for fragment in [*contextual[: -(-k // 2)], *as_typed, *contextual]:
        if fragment.id not in seen and len(merged) < k:
            seen.add(fragment.id)
            merged.append(fragment)
    return merged
