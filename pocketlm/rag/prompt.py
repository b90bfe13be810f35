"""The RAG prompt, in one place: the generator's LoRA is trained on exactly what the chain sends it.

The prompt is modular — four sections, each rendered by its own function and composed by one LangChain
`PromptTemplate`: instructions, the retrieved fragments with their ids, the conversation history, the
question. A small LM has a short context, so `fit_fragments` crops each fragment to the sentences that
share the most words with the question, within a token budget; training pairs and the live chain crop the
same way, so the model is never asked to read a layout it has not seen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

INSTRUCTIONS = "Answer the question with a short span copied from the fragments."
TEMPLATE = "{instructions}\n\n{fragments}\n\n{history}Question: {question}\nAnswer:"

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or is are was were be been what which who whom whose when where "
    "why how did do does that this these those it its as than into about after before during his her their".split()
)


@dataclass(frozen=True)
class Fragment:
    """A retrieved passage as the prompt shows it: `[id] text`; `score` is the retriever's (cosine for dense retrieval,
    the fused z-score for the hybrid default: higher is better either way)."""

    id: str
    title: str
    text: str
    score: float = 0.0


def prompt_template():
    """The LangChain `PromptTemplate` of the four sections (instructions pre-filled)."""
    from langchain_core.prompts import PromptTemplate

    return PromptTemplate.from_template(TEMPLATE).partial(instructions=INSTRUCTIONS)


def format_fragments(fragments: Sequence[Fragment]) -> str:
    if not fragments:
        return "Fragments: (none found)"
    return "Fragments:\n" + "\n".join(f"[{f.id}] {f.text}" for f in fragments)


def format_history(exchanges: Sequence[tuple[str, str]]) -> str:
    """Past (question, answer) pairs, oldest first; empty when there are none."""
    return "".join(f"Q: {q}\nA: {a}\n" for q, a in exchanges) + ("\n" if exchanges else "")


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOPWORDS}


def crop_to_question(text: str, question: str, max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The run of consecutive sentences of `text` that fits `max_tokens` and shares most words with `question`.

    Ties go to the earliest run. A first sentence longer than the budget is cut by words.
    """
    if count_tokens(text) <= max_tokens:
        return text
    sentences = _SENTENCE_END.split(text.strip())
    wanted = content_words(question)
    best, best_key = "", (-1, 0)
    for start in range(len(sentences)):
        window = []
        for sentence in sentences[start:]:
            candidate = " ".join([*window, sentence])
            if count_tokens(candidate) > max_tokens:
                break
            window.append(sentence)
        if not window:
            continue
        chosen = " ".join(window)
        key = (len(wanted & content_words(chosen)), -start)
        if key > best_key:
            best, best_key = chosen, key
    if not best:  # even one sentence is too long: keep the words that fit
        words = sentences[0].split()
        while words and count_tokens(" ".join(words)) > max_tokens:
            words = words[: max(1, len(words) * 3 // 4)] if len(words) > 1 else []
        best = " ".join(words)
    return best


def fit_fragments(
    fragments: Sequence[Fragment], question: str, max_tokens_each: int, count_tokens: Callable[[str], int]
) -> list[Fragment]:
    return [Fragment(f.id, f.title, crop_to_question(f.text, question, max_tokens_each, count_tokens), f.score) for f in fragments]


def render_prompt(question: str, fragments: Sequence[Fragment], history: Sequence[tuple[str, str]] = ()) -> str:
    """The full prompt string (what the chain's template produces for these inputs)."""
    return prompt_template().format(fragments=format_fragments(fragments), history=format_history(history), question=question)
