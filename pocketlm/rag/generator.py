"""The RAG generator at run time: load the causal LM (+ its merged LoRA), fit a prompt to its context, answer.

The chain (`pocketlm.rag.chain`) and the loop evaluation answer through these; the LoRA itself is trained by
`pocketlm.rag.lora_finetune`, on prompts built here by `build_prompt`, so training and answering see the same
layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pocketlm import TINY_LM, TINY_LM_RAG_LORA
from pocketlm.hub import ArtifactNotFoundError, resolve
from pocketlm.rag.prompt import Fragment, fit_fragments, render_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MAX_CONTEXT = 384
"""Longest prompt + answer we train and generate with, even for models that accept more (tiny-lm, gpt2: 1024):
2 cropped fragments fit, and it keeps a LoRA epoch on 500 pairs to minutes on 2 CPU cores."""
ANSWER_TOKENS = 24


@dataclass(frozen=True)
class FittedPrompt:
    """A prompt that fits the model's context, and the cropped fragments and kept history it shows."""

    text: str
    fragments: list[Fragment]
    history: list[tuple[str, str]]


def context_length(model) -> int:
    return min(int(getattr(model.config, "max_position_embeddings", MAX_CONTEXT) or MAX_CONTEXT), MAX_CONTEXT)


def build_prompt(
    tokenizer: "PreTrainedTokenizerBase",
    question: str,
    fragments: Sequence[Fragment],
    history: Sequence[tuple[str, str]] = (),
    max_prompt_tokens: int = MAX_CONTEXT - ANSWER_TOKENS,
) -> FittedPrompt:
    """Render the prompt with each fragment cropped so that the whole prompt fits `max_prompt_tokens`.

    History that leaves fewer than 24 tokens per fragment is dropped, oldest exchange first.
    """

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    history = list(history)
    while True:
        skeleton = render_prompt(question, [Fragment(f.id, f.title, "") for f in fragments], history)
        room = max_prompt_tokens - count(skeleton) - 2 * len(fragments)
        if not fragments or room // len(fragments) >= 24 or not history:
            break
        history.pop(0)
    per_fragment = max(room // max(len(fragments), 1), 8)
    cropped = fit_fragments(fragments, question, per_fragment, count)
    return FittedPrompt(render_prompt(question, cropped, history), cropped, history)


def load_tokenizer(model_path: str) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:  # gpt2 has none; padding never reaches the loss (labels -100, masked)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(model_name_or_path: str = TINY_LM) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    from transformers import AutoModelForCausalLM

    path = resolve(model_name_or_path)
    return AutoModelForCausalLM.from_pretrained(path), load_tokenizer(path)


def load_generator(lora: str | None = TINY_LM_RAG_LORA, base: str | None = None):
    """The generator for the chain: base LM + merged LoRA. Without a published LoRA, the base LM alone.

    Returns (model, tokenizer, description). `base` defaults to the model the LoRA was trained from;
    `lora=None` or `"none"` gives the base LM alone.
    """
    from peft import PeftConfig

    from pocketlm.models import load_peft_model

    if lora and lora.lower() == "none":
        lora = None
    lora_path = None
    if lora:
        try:
            lora_path = resolve(lora)
        except ArtifactNotFoundError:
            if lora != TINY_LM_RAG_LORA:  # an explicit LoRA that is missing is an error; the default is optional
                raise
    if lora_path is None:
        model, tokenizer = load_base(base or TINY_LM)
        return model.eval(), tokenizer, f"{base or TINY_LM} (no LoRA)"
    base = base or PeftConfig.from_pretrained(lora_path).base_model_name_or_path
    model, tokenizer = load_base(base)
    model = load_peft_model(model, lora_path).merge_and_unload()
    return model.eval(), tokenizer, f"{base} + LoRA {lora}"


def clean_answer(text: str) -> str:
    """The first line of a generation, trimmed: the model answers on one line, then may ramble."""
    return text.strip().split("\n", 1)[0].strip()


def generate_answers(model, tokenizer, prompts: Sequence[str], batch_size: int = 8, max_new_tokens: int = ANSWER_TOKENS) -> list[str]:
    """Greedy answers to `prompts`, batched with left padding."""
    import torch

    answers = []
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # continue every prompt from its last real token
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False,
            return_token_type_ids=False,
        ).to(model.device)
        with torch.inference_mode():
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.extend(clean_answer(t) for t in texts)
    tokenizer.padding_side = side
    return answers


