"""The OpenAI-compatible API: `/v1/models`, `/v1/completions` (the LM) and `/v1/chat/completions` (the RAG agent).

Users' tools speak OpenAI's protocol — the `openai` client, LangChain's `ChatOpenAI`, anything with a base
URL setting — so the server speaks it too, over the same runtimes and the same overload guard:

* `/v1/completions` continues a prompt with the served LM through the app's scheduler (`/generate`'s path:
  admission, compute slots, the compute budget). `max_tokens`, `temperature` (0: greedy), `top_p`, `stop`,
  `seed` and `stream` map onto it; `n` must be 1. Streaming sends `data: {...}` chunks, then `data: [DONE]`.
* `/v1/chat/completions` is the RAG agent (started with `--rag`): the last user message is the question, the
  exchanges before it (the last 3) its conversation. The answer's text names the fragment it comes from,
  and the response carries the sources as extra fields: `citations` (the ids the answer comes from) and `fragments`
  (every fragment the agent read: id, title, text, score). The answer is computed whole, then streamed in
  pieces when `stream` is set. Sampling fields are accepted and do not change the grounded answer.

Errors come in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, which the clients turn into
their exceptions: 422 naming the field (`param`) for bad input, 404 for an unknown model, 503 with
`Retry-After` when the server is full (the clients retry it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from pocketlm.inference.onnx_lm import SamplingParams
from pocketlm.serving.admission import Admission, Overloaded
from pocketlm.serving.schemas import MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_QUESTION_CHARS, MIN_TEMPERATURE

logger = logging.getLogger(__name__)

RAG_MODEL = "pocketlm/rag-agent"
"""The model id `/v1/chat/completions` answers as (and `/v1/models` lists when the agent is loaded)."""
MAX_STOP = 4
MAX_MESSAGES = 64
HISTORY_EXCHANGES = 3


class OpenAIError(Exception):
    """A refusal in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers = type, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, self.status, headers=self.headers)


def _validation_error(err: RequestValidationError) -> OpenAIError:
    first = err.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    return OpenAIError(422, f"{param or 'body'}: {first.get('msg', 'invalid')}", param, first.get("type"))


class OpenAIRoute(APIRoute):
    """Routes whose refusals (validation, overload, unknown model) are OpenAI-shaped, whatever the app's own
    handlers do for the other routes."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request):
            try:
                return await handler(request)
            except RequestValidationError as err:
                return _validation_error(err).response()
            except StarletteHTTPException as err:  # a body that is not even UTF-8
                return OpenAIError(422 if err.status_code == 400 else err.status_code, str(err.detail)).response()
            except Overloaded as err:
                return OpenAIError(503, str(err), code="overloaded", type="server_error",
                                   headers={"Retry-After": str(err.retry_after_s)}).response()
            except OpenAIError as err:
                return err.response()
            except Exception as err:  # a bug: logged, and still an error the clients can read
                logger.exception("%s %s failed", request.method, request.url.path)
                return OpenAIError(500, f"internal error ({type(err).__name__}); see the server log",
                                   type="server_error").response()

        return route


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


ERRORS = {
    404: {"model": ErrorBody, "description": "The model is not served by this endpoint here (`param`: `model`)."},
    408: {"description": "The request body did not arrive within the read timeout."},
    413: {"description": "The request body is over the size cap (checked before parsing)."},
    422: {"model": ErrorBody, "description": "Invalid input; `error.param` names the field."},
    503: {"model": ErrorBody, "description": "Overloaded: retry after `Retry-After` seconds."},
}
STREAM_OR_JSON = {200: {"description": "The response as JSON, or with `stream: true` server-sent events: `data: {chunk}` "
                        "lines, then `data: [DONE]`.",
                        "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}}}}

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"], route_class=OpenAIRoute, responses=ERRORS)


# -- request bodies ---------------------------------------------------------------------------------------------
def _only(value, allowed, field: str, why: str):
    if value is not None and value not in allowed:
        raise ValueError(f"{field} {value!r} is not supported ({why})")
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class OpenAIFields(BaseModel):
    """What both endpoints accept. Unknown fields are refused (422 naming them); OpenAI fields this server
    cannot honour are refused when set to anything but their neutral value."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="An id from `/v1/models`.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy; default 1 (sampling), as OpenAI.")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, description="Only 1.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stop: str | list[str] | None = None
    user: str | None = Field(None, max_length=256)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None

    @field_validator("n")
    @classmethod
    def _one(cls, value):
        return _only(value, (1,), "n", "one choice per request")

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value, info):
        return _only(value, (0, 0.0), info.field_name, "no penalties")

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value):
        if value:
            raise ValueError("logit_bias is not supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        return _only(value, (False, 0), "logprobs", "no log probabilities")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP or any(not s or len(s) > 100 for s in stops):
            raise ValueError(f"stop: up to {MAX_STOP} non-empty strings of at most 100 characters")
        return stops

    @property
    def stops(self) -> list[str]:
        return self.stop or []


class CompletionRequest(OpenAIFields):
    prompt: str | list[str] = Field(
        description=f"One prompt (a string, or a list of one), 1–{MAX_PROMPT_CHARS} characters.")
    max_tokens: int | None = Field(
        16, ge=1, le=MAX_NEW_TOKENS, description="Tokens to generate at most (OpenAI's default 16).")

    @property
    def new_tokens(self) -> int:
        return 16 if self.max_tokens is None else self.max_tokens
    echo: bool | None = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        prompts = [value] if isinstance(value, str) else value
        if len(prompts) != 1:
            raise ValueError("exactly one prompt per request")
        if not prompts[0].strip() or len(prompts[0]) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt must hold some text, at most {MAX_PROMPT_CHARS} characters")
        return prompts[0]

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value):
        return _only(value, (False,), "echo", "the prompt is not sent back")

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value):
        return _only(value, (1,), "best_of", "one candidate per request")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value):
        return _only(value, ("",), "suffix", "no insertion")


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(OpenAIFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    @field_validator("messages")
    @classmethod
    def _ends_with_a_question(cls, messages: list[ChatMessage]):
        if messages[-1].role != "user" or not messages[-1].text.strip():
            raise ValueError("the last message must be the user's question, with some text")
        if len(messages[-1].text) > MAX_QUESTION_CHARS:
            raise ValueError(f"the question (the last message) has at most {MAX_QUESTION_CHARS} characters")
        return messages


# -- what the app holds -----------------------------------------------------------------------------------------
@dataclass
class RagService:
    """The RAG agent the chat route answers with, and the lock that gives it to one request at a time (its memory
    and retriever are swapped per request)."""

    agent: Any
    model_id: str = RAG_MODEL
    lock: threading.Lock = field(default_factory=threading.Lock)


def serve_rag(app: FastAPI, agent, model_id: str = RAG_MODEL) -> None:
    """Answer `/v1/chat/completions` with `agent` (a `pocketlm.rag.chain.RagAgent`) as `model_id`."""
    app.state.rag = RagService(agent, model_id)


async def _state(request: Request):
    return request.app.state


AppState = Annotated[Any, Depends(_state)]


def _now() -> int:
    return int(time.time())


@router.get("/models", summary="The models served (OpenAI's list format)")
async def list_models(state: AppState) -> dict:
    data = []
    if state.models.lm is not None:
        data.append({"id": state.models.lm.id, "object": "model", "created": 0, "owned_by": "pocketlm"})
    if (rag := getattr(state, "rag", None)) is not None:
        data.append({"id": rag.model_id, "object": "model", "created": 0, "owned_by": "pocketlm"})
    return {"object": "list", "data": data}


def _unknown_model(name: str, served: list[str], endpoint: str) -> OpenAIError:
    return OpenAIError(404, f"model {name!r} is not served by {endpoint} here; it serves: {', '.join(served) or 'none'}",
                       "model", "model_not_found")


# -- completions (the LM) ---------------------------------------------------------------------------------------
def openai_sampling(body: OpenAIFields, max_tokens: int, max_time: float) -> SamplingParams:
    """OpenAI's sampling fields as the runtime's: temperature 0 is greedy; otherwise the whole vocabulary
    (no top-k) cut to the `top_p` nucleus, at `temperature` (default 1, as OpenAI)."""
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(
        max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=max(temperature, MIN_TEMPERATURE), top_k=0,
        top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed, max_time=max_time,
    )


class CompletionRun:
    """The text pieces of one completion as the scheduler makes its tokens, cut at the first stop string (held
    back while a stop could still be starting); afterwards `finish_reason` and the token counts are set."""

    def __init__(self, lm, ids: list[int], params: SamplingParams, stops: list[str], scheduler, admission: Admission):
        self.lm, self.ids, self.params, self.stops = lm, ids, params, stops
        self.ticket = admission.admit()  # refused here: a 503 status, before any stream starts
        self.steps = scheduler.stream(ids, params, self.ticket)
        self.tokens: list[int] = []
        self.finish_reason = "length"

    async def pieces(self) -> AsyncIterator[str]:
        text_of, text, sent = self.lm.text_decoder(self.ids), "", 0
        try:
            async with aclosing(aiter(self.steps)) as steps:  # closing it takes the row out of the batch at once
                async for token in steps:
                    self.tokens.append(token)
                    if token == self.lm.eos_token_id:
                        self.finish_reason = "stop"
                        break
                    text += text_of(token)
                    piece, sent, stopped = self._advance(text, sent)
                    if piece:
                        yield piece
                    if stopped:
                        return
            # a last token that ends mid-character adds nothing to the stream: decoded whole, as `decode` does it
            whole = self.lm.decode([t for t in self.tokens if t != self.lm.eos_token_id])
            piece, sent, _ = self._advance(whole if whole.startswith(text) else text, sent, final=True)
            if piece:
                yield piece
        finally:
            self.ticket.release()

    def _advance(self, text: str, sent: int, final: bool = False) -> tuple[str, int, bool]:
        """The next piece of `text` to send after its first `sent` characters, the new count, and whether a stop
        string ended it. While not `final`, text that could be the start of a stop string is held back."""
        cut = min((i for s in self.stops if (i := text.find(s, sent)) >= 0), default=-1)
        if cut >= 0:
            self.finish_reason = "stop"
            return text[sent:cut], cut, True
        safe = len(text) if final else len(text) - _held_back(text, self.stops)
        return (text[sent:safe], safe, False) if safe > sent else ("", sent, False)

    def usage(self) -> dict:
        return {"prompt_tokens": len(self.ids), "completion_tokens": len(self.tokens),
                "total_tokens": len(self.ids) + len(self.tokens)}


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


@router.post("/completions", responses=STREAM_OR_JSON, summary="Continue a prompt with the LM (OpenAI completions)")
async def completions(body: CompletionRequest, state: AppState):
    served = state.models.lm
    if served is None or body.model != served.id:
        raise _unknown_model(body.model, [served.id] if served else [], "/v1/completions")
    lm = served.runtime
    ids = lm.encode(body.prompt)
    if problem := lm.prompt_problem(ids, body.new_tokens):
        raise OpenAIError(422, f"prompt: {problem}", "prompt", "context_length_exceeded")
    params = openai_sampling(body, body.new_tokens, state.admission.limits.max_compute_s)
    run = CompletionRun(lm, ids, params, body.stops, state.scheduler, state.admission)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": _now(), "model": served.id}

    def choice(text: str, finish: str | None) -> dict:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    if not body.stream:
        text = "".join([piece async for piece in run.pieces()])
        return {**head, "choices": [choice(text, run.finish_reason)], "usage": run.usage()}

    async def events() -> AsyncIterator[str]:
        async for piece in run.pieces():
            yield _sse({**head, "choices": [choice(piece, None)]})
        yield _sse({**head, "choices": [choice("", run.finish_reason)]})
        if body.stream_options and body.stream_options.include_usage:
            yield _sse({**head, "choices": [], "usage": run.usage()})

    return _event_stream(events(), "/v1/completions", run.ticket)


# -- chat completions (the RAG agent) ---------------------------------------------------------------------------
@dataclass
class ChatAnswer:
    text: str
    """What the user reads: the answer and the ids it cites."""
    citations: list[str]
    fragments: list[dict]
    prompt_tokens: int
    completion_tokens: int


def rag_answer(agent, question: str, history: list[tuple[str, str]]) -> ChatAnswer:
    """The one place the chat route calls the RAG agent: answer `question` after `history` (user, assistant) pairs.

    `RagAgent.answer` is stateless (the client sends the whole conversation each time), so concurrent requests
    never share a memory.
    """
    result = agent.answer(question, history)
    count = getattr(agent, "tokenizer", None)
    tokens = (lambda text: len(count(text, add_special_tokens=False)["input_ids"])) if count else (lambda text: 0)
    fragments = [{"id": f.id, "title": f.title, "text": f.text, "score": f.score} for f in result.fragments]
    return ChatAnswer(result.to_text(), list(result.cited), fragments, tokens(result.prompt), tokens(result.answer))


def conversation(messages: list[ChatMessage]) -> tuple[str, list[tuple[str, str]]]:
    """The question (the last user message) and the last exchanges before it: each user message paired with
    the assistant reply that follows it; system and developer messages are left out (the agent has its own)."""
    pairs, asked = [], None
    for message in messages[:-1]:
        if message.role == "user":
            asked = message.text
        elif message.role == "assistant" and asked is not None:
            pairs.append((asked, message.text))
            asked = None
    return messages[-1].text, pairs[-HISTORY_EXCHANGES:]


@router.post("/chat/completions", responses=STREAM_OR_JSON,
             summary="Ask the RAG agent (OpenAI chat completions); the answer cites its fragments")
async def chat_completions(body: ChatRequest, state: AppState):
    rag: RagService | None = getattr(state, "rag", None)
    if rag is None or body.model != rag.model_id:
        raise _unknown_model(body.model, [rag.model_id] if rag else [], "/v1/chat/completions")
    question, history = conversation(body.messages)

    def ask() -> ChatAnswer:
        with rag.lock:
            return rag_answer(rag.agent, question, history)

    answer, _ = await state.admission.run(ask)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": _now(), "model": rag.model_id}
    extra = {"citations": answer.citations, "fragments": answer.fragments}
    usage = {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
             "total_tokens": answer.prompt_tokens + answer.completion_tokens}
    if not body.stream:
        message = {"role": "assistant", "content": answer.text}
        return {**head, "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": usage, **extra}

    head["object"] = "chat.completion.chunk"

    def chunk(delta: dict, finish: str | None = None, **more) -> str:
        return _sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **more})

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        for piece in _words(answer.text):
            yield chunk({"content": piece})
            await asyncio.sleep(0)
        yield chunk({}, "stop", **extra)
        if body.stream_options and body.stream_options.include_usage:
            yield _sse({**head, "choices": [], "usage": usage})

    return _event_stream(events(), "/v1/chat/completions")


def _words(text: str) -> list[str]:
    """`text` in word-sized pieces that join back to it exactly."""
    pieces, start = [], 0
    for i in range(1, len(text)):
        if text[i] == " " and text[i - 1] != " ":
            pieces.append(text[start:i])
            start = i
    return [*pieces, text[start:]] if text else []


# -- server-sent events -----------------------------------------------------------------------------------------
def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def _event_stream(events: AsyncIterator[str], endpoint: str, ticket=None) -> StreamingResponse:
    """OpenAI's stream: `data: {...}` chunks, then `data: [DONE]`. A failure midway is an `error` chunk (the
    status line went out long ago), which the clients raise as an error. A `ticket` (the request's place in
    flight) is given back however the response ends, even if the stream never starts."""
    from pocketlm.serving.app import TicketedStreamingResponse

    async def framed() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except Overloaded as err:
            yield _sse({"error": {"message": str(err), "type": "server_error", "param": None, "code": "overloaded"}})
            return
        except Exception as err:
            logger.exception("%s stream failed", endpoint)
            yield _sse({"error": {"message": f"generation failed ({type(err).__name__}); see the server log",
                                  "type": "server_error", "param": None, "code": None}})
            return
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if ticket is not None:
        return TicketedStreamingResponse(framed(), ticket, media_type="text/event-stream", headers=headers)
    return StreamingResponse(framed(), media_type="text/event-stream", headers=headers)
