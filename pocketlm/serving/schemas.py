"""Request and response bodies of the REST API: limits, descriptions and examples live here, once.

The limits are what the 2-core CPU can serve within the latency targets; pydantic turns any violation into
a 422 whose `loc` names the field. Extra fields are refused too (a typo such as `max_tokens` would
otherwise be silently ignored).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from pocketlm.inference.onnx_lm import LM_PRECISIONS

MAX_PROMPT_CHARS = 4000
MAX_NEW_TOKENS = 256
MAX_BATCH_PROMPTS = 32
MAX_BATCH_NEW_TOKENS = 4096
"""Budget of one `/generate/batch`: prompts × `max_new_tokens` (32 × 128), ~2 s of the one compute slot here."""
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 5.0
MAX_QUESTION_CHARS = 500
MAX_CONTEXT_CHARS = 20000

EXAMPLE_PROMPT = "The history of the city begins in the Middle Ages, when"


def _has_text(value: str, field: str) -> str:
    if not value.strip():
        raise ValueError(f"{field} must contain some non-whitespace text")
    return value


Prompt = Annotated[
    str,
    Field(
        min_length=1, max_length=MAX_PROMPT_CHARS,
        description=f"Text to continue (1–{MAX_PROMPT_CHARS} characters; with `max_new_tokens` it must also fit "
        "the model's context window, else a 422 names `prompt`).",
        examples=[EXAMPLE_PROMPT],
    ),
]


class SamplingFields(BaseModel):
    """Decoding settings shared by `/generate`, `/generate/stream` and `/generate/batch`."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS, description="How many tokens to generate at most.")
    do_sample: bool = Field(
        False, description="false: greedy decoding (deterministic, identical across the batching schemes); "
        "true: top-k sampling with `temperature`, reproducible with `seed`."
    )
    temperature: float = Field(
        1.0, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE,
        description=f"Softmax temperature when sampling ({MIN_TEMPERATURE:g}–{MAX_TEMPERATURE:g}; ignored when greedy). "
        "Below ~0.05 sampling is all but greedy.",
    )
    top_k: int = Field(50, ge=1, le=1000, description="Sample among the k most likely tokens (ignored when greedy).")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Random seed for sampling; omit for a fresh one.")
    ignore_eos: bool = Field(
        False, description="Keep generating past the end-of-text token, so exactly `max_new_tokens` come back "
        "(for benchmarks)."
    )


class GenerateRequest(SamplingFields):
    prompt: Prompt

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompt": EXAMPLE_PROMPT, "max_new_tokens": 32}]},
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        return _has_text(value, "prompt")


FinishReason = Literal["eos", "length", "time_limit"]


class Generation(BaseModel):
    text: str = Field(description="The generated continuation (the prompt not included).")
    prompt_tokens: int = Field(description="Tokens in the prompt.")
    generated_tokens: int = Field(description="Tokens generated.")
    finish_reason: FinishReason = Field(
        description="`eos`: the model ended the text; `length`: `max_new_tokens` reached; `time_limit`: the "
        "server's compute budget per call ran out first (the text so far is returned)."
    )


class GenerateResponse(Generation):
    model: str = Field(description="The ONNX export that answered, and its precision.")
    latency_ms: float = Field(description="Time spent in the model (queueing excluded).")


class BatchGenerateRequest(SamplingFields):
    prompts: list[Prompt] = Field(
        min_length=1, max_length=MAX_BATCH_PROMPTS,
        description=f"1–{MAX_BATCH_PROMPTS} prompts, decoded together as one dynamically padded batch; "
        f"prompts × `max_new_tokens` at most {MAX_BATCH_NEW_TOKENS}.",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompts": [EXAMPLE_PROMPT, "In 1905, Albert Einstein"], "max_new_tokens": 32}]},
    )

    @field_validator("prompts")
    @classmethod
    def _prompts_have_text(cls, values: list[str], info: ValidationInfo) -> list[str]:
        values = [_has_text(value, "every prompt") for value in values]
        max_new_tokens = info.data.get("max_new_tokens")  # validated before: SamplingFields' fields come first
        if max_new_tokens is not None and len(values) * max_new_tokens > MAX_BATCH_NEW_TOKENS:
            raise ValueError(
                f"{len(values)} prompts × max_new_tokens {max_new_tokens} = {len(values) * max_new_tokens} new tokens; "
                f"a batch may ask for at most {MAX_BATCH_NEW_TOKENS} (send fewer prompts or fewer tokens)"
            )
        return values


class BatchGenerateResponse(BaseModel):
    generations: list[Generation] = Field(description="One result per prompt, in the order given.")
    model: str
    padded_shape: tuple[int, int] = Field(description="(batch, longest prompt): the prefill batch after dynamic padding.")
    latency_ms: float
    tokens_per_s: float = Field(description="Generated tokens of all rows per second of model time.")


class StreamToken(BaseModel):
    """One server-sent event of `/generate/stream` (`data:` line), sent as soon as the token exists."""

    index: int = Field(description="0 for the first generated token.")
    token_id: int
    text: str = Field(description="Text this token adds ('' while a multi-byte character is incomplete).")


class StreamEnd(Generation):
    """The last event of `/generate/stream` (`event: end`): the whole text and why it stopped."""

    latency_ms: float


class QARequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "question": "Which river flows through the city?",
                    "context": "The city lies on the banks of the Danube, which divides it into two parts.",
                }
            ]
        },
    )

    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, description="The question (1–500 characters).")
    context: str = Field(
        min_length=1, max_length=MAX_CONTEXT_CHARS,
        description=f"The passage that holds the answer (1–{MAX_CONTEXT_CHARS} characters); long passages are "
        "read in overlapping windows (document stride).",
    )

    @field_validator("question")
    @classmethod
    def _question_has_text(cls, value: str) -> str:
        return _has_text(value, "question")

    @field_validator("context")
    @classmethod
    def _context_has_text(cls, value: str) -> str:
        return _has_text(value, "context")


class QAResponse(BaseModel):
    answer: str = Field(description="The answer span, copied from the context ('' if the context had no token).")
    start: int = Field(description="Character offset of the answer in the context.")
    end: int = Field(description="Character offset just past the answer: `context[start:end] == answer`.")
    score: float = Field(description="p(start) × p(end) under the model, in [0, 1].")
    model: str
    latency_ms: float


class ModelInfo(BaseModel):
    id: str = Field(description="Hub id or path the export was resolved from.")
    file: str = Field(description="The ONNX graph served.")
    precision: Literal[LM_PRECISIONS] = Field(
        description="fp32, dynamic int8, or static int8 (fixed activation scales: the same tokens batched or not; LM only).")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    models: dict[str, ModelInfo] = Field(description="What each endpoint serves (`lm`, `qa`).")
    scheduler: Literal["continuous", "serial"] = Field(
        description="How `/generate` and `/generate/stream` run: one continuous batch, or one request at a time.")
    in_flight: int = Field(description="Model requests running or queued right now.")
    capacity: int = Field(description="In-flight requests accepted before new ones get 503.")
    onnxruntime: str
    uptime_s: float


class ErrorResponse(BaseModel):
    detail: str
