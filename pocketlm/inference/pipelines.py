"""The two one-line entry points of the inference lab:

    >>> from pocketlm.inference.pipelines import generate_text, answer_question
    >>> generate_text("The history of the city", seed=0)
    >>> answer_question(context="The Eiffel Tower is in Paris.", question="Where is the Eiffel Tower?")

`generate_text` samples from `pocketlm/tiny-lm` (top-k 50, temperature 0.7) with transformers' text-generation
pipeline; `answer_question` runs `pocketlm/minilm-squad` with pocketlm's PyTorch `TorchQuestionAnswerer`
(transformers 5 removed the question-answering pipeline). Models resolve through `pocketlm.hub.resolve` (the
local hub folder first) and load once per process, cached by the folder they were loaded from.
"""

from __future__ import annotations

from functools import lru_cache

from pocketlm import MINILM_SQUAD, TINY_LM
from pocketlm.errors import ConfigError
from pocketlm.hub import resolve

MAX_NEW_TOKENS = 40
TOP_K = 50
TEMPERATURE = 0.7
"""The text-generation pipeline's own default, written out: what `generate_text` has always sampled with."""


@lru_cache(maxsize=4)
def _pipeline(task: str, location: str):
    from transformers import pipeline

    return pipeline(task, model=location, tokenizer=location, device="cpu")


def text_generator(model: str = TINY_LM):
    return _pipeline("text-generation", resolve(model))


@lru_cache(maxsize=4)
def _question_answerer(location: str):
    from pocketlm.inference.qa_torch import TorchQuestionAnswerer

    return TorchQuestionAnswerer.from_pretrained(location)  # the windows it was trained with, from its config.json


def question_answerer(model: str = MINILM_SQUAD):
    return _question_answerer(resolve(model))


def generate_text(prompt: str, max_new_tokens: int = MAX_NEW_TOKENS, seed: int | None = None, model: str = TINY_LM) -> str:
    """The prompt followed by up to `max_new_tokens` tokens sampled with top-k 50 at temperature 0.7.

    With `seed`, the sample is reproducible: torch's, numpy's and Python's generators are seeded first.
    """
    if not prompt.strip():
        raise ConfigError("prompt must not be empty")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be positive (got {max_new_tokens})")
    generator = text_generator(model)
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    output = generator(
        prompt, do_sample=True, top_k=TOP_K, temperature=TEMPERATURE, max_new_tokens=max_new_tokens,
        pad_token_id=generator.tokenizer.pad_token_id or generator.tokenizer.eos_token_id,
    )
    return output[0]["generated_text"]


def answer_question(context: str, question: str, model: str = MINILM_SQUAD) -> str:
    """The span of `context` that answers `question` (extractive: always a substring of the context)."""
    if not context.strip() or not question.strip():
        raise ConfigError("context and question must not be empty")
    return question_answerer(model).answer(question, context).text
