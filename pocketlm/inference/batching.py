"""The two generation schemes the REST API offers, as functions the benchmark and the tests time and compare.

* token by token — each prompt alone, one token per step, every token handed on (streamed) as soon as it
  exists: the lowest time to first token, but each step runs a batch of one, so the CPU's wide matrix
  units mostly wait on per-call overhead.
* full batch — prompts grouped, left-padded to the longest prompt *of their group* (dynamic padding, not a
  fixed maximum), decoded together with the KV cache: one graph call advances every row, so throughput
  grows with the batch until the matrix products, not the overhead, dominate.

Both run the same decode loop (`OnnxCausalLM.decode_steps`), so greedy outputs are identical token for token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams


def corpus_texts(count: int, max_chars: int = 2000, first: bool = False) -> list[str]:
    """Openings of the last (`first`: the first) `count` WikiText-2 articles of the data mirror: real text to
    prompt with."""
    from pocketlm.data import corpus_folder

    articles = sorted(corpus_folder().glob("*.txt"))
    articles = articles[:count] if first else articles[-count:]
    return [path.read_text(encoding="utf-8")[:max_chars] for path in articles]


def corpus_prompts(lm: OnnxCausalLM, count: int, tokens: int | Sequence[int]) -> list[list[int]]:
    """`count` token-id prompts of `tokens` tokens each (or one length per prompt), cut from real articles."""
    lengths = [tokens] * count if isinstance(tokens, int) else list(tokens)
    return [lm.encode(text)[:length] for text, length in zip(corpus_texts(count), lengths, strict=True)]


@dataclass
class SchemeRun:
    """One timed pass of a scheme over a list of prompts."""

    scheme: str
    batch_size: int
    prompts: int
    generated_tokens: int
    """Tokens generated over all prompts."""
    seconds: float
    padding_fraction: float
    """Share of the prefill positions that were padding (0 for token by token)."""
    first_token_ms: float | None = None
    """Token by token only: mean time from a prompt's start to its first streamed token."""
    outputs: list[list[int]] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds

    def summary(self) -> dict:
        row = asdict(self)
        row.pop("outputs")
        row["tokens_per_s"] = self.tokens_per_s
        return row


def token_by_token(
    lm: OnnxCausalLM,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    on_token: Callable[[int, int], None] | None = None,
    use_cache: bool = True,
) -> SchemeRun:
    """Generate for each prompt alone, streaming: `on_token(prompt_index, token_id)` sees every token at once.

    `use_cache=False` is the naive form — every step re-reads the whole sequence — as a reference point.
    """
    outputs: list[list[int]] = []
    first_token_s = 0.0
    started = time.perf_counter()
    for index, prompt in enumerate(prompts):
        prompt_started = time.perf_counter()
        tokens: list[int] = []
        for token in lm.stream_ids(prompt, params, use_cache):
            if not tokens:
                first_token_s += time.perf_counter() - prompt_started
            tokens.append(token)
            if on_token is not None:
                on_token(index, token)
        outputs.append(tokens)
    seconds = time.perf_counter() - started
    return SchemeRun(
        "token_by_token" if use_cache else "token_by_token_no_cache", 1, len(prompts), sum(map(len, outputs)), seconds, 0.0,
        first_token_ms=1000 * first_token_s / max(len(prompts), 1), outputs=outputs,
    )


def full_batch(
    lm: OnnxCausalLM,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    batch_size: int | None = None,
    sort_by_length: bool = False,
) -> SchemeRun:
    """Generate for groups of `batch_size` prompts (all at once by default), each group padded to its own longest.

    `sort_by_length` groups prompts of similar length together, so less of each batch is padding; outputs
    come back in the original order either way.
    """
    batch_size = batch_size or len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i])) if sort_by_length else list(range(len(prompts)))
    outputs: list[list[int]] = [[] for _ in prompts]
    padded = real = 0
    started = time.perf_counter()
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        batch = [prompts[i] for i in group]
        longest = max(map(len, batch))
        padded += longest * len(batch)
        real += sum(map(len, batch))
        for i, tokens in zip(group, lm.generate_ids(batch, params), strict=True):
            outputs[i] = tokens
    seconds = time.perf_counter() - started
    return SchemeRun(
        "full_batch_sorted" if sort_by_length else "full_batch", batch_size, len(prompts),
        sum(map(len, outputs)), seconds, 1 - real / padded, outputs=outputs,
    )
