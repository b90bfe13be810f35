"""The FastAPI app factory: `/health`, `/generate` (+ `/stream`, `/batch`) and `/qa` over ONNX Runtime.

`create_app(models)` builds the app around already loaded models (`pocketlm.serving.models.load_models`),
so the command line, the tests and the Gradio suite (which mounts its UI onto this same app with
`gradio.mount_gradio_app`) share one code path; the runtimes stay reachable as `app.state.models`, the
overload guard as `app.state.admission`, the LM's scheduler as `app.state.scheduler`. The routes are
module-level `APIRouter`s (service, LM, QA) that reach those through `Depends`, so one process could serve
several apps. Nothing here imports torch or transformers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import pocketlm
from pocketlm.errors import ConfigError
from pocketlm.inference.onnx_lm import OnnxCausalLM, SamplingParams
from pocketlm.serving import openai_api
from pocketlm.serving.admission import Admission, Limits, Overloaded, Ticket
from pocketlm.serving.http_limits import BodyLimits
from pocketlm.serving.models import ServedModel, ServingModels
from pocketlm.serving.scheduler import (
    ClientGone, Scheduler, SchedulerKind, TokenStream, default_scheduler, make_scheduler,
)
from pocketlm.serving.schemas import (
    BatchGenerateRequest,
    BatchGenerateResponse,
    ErrorResponse,
    FinishReason,
    GenerateRequest,
    GenerateResponse,
    Generation,
    HealthResponse,
    QARequest,
    QAResponse,
    SamplingFields,
    StreamEnd,
    StreamToken,
)

logger = logging.getLogger(__name__)

ECHO_CHARS = 200
"""A 422 echoes at most this much of the offending input (a 2 MB prompt must not come back as a 2 MB error)."""

SWAGGER_ASSETS = "/static/swagger-ui"

DESCRIPTION = """
Text generation with pocketlm's tiny Llama-architecture LM and extractive question answering with the
SQuAD-tuned MiniLM — both served from their **ONNX exports with ONNX Runtime**, on CPU.

### The ONNX path
The server imports onnxruntime, `tokenizers` and numpy only — no torch, no transformers — so it is ready
in well under a second and each request pays only for the model call. The LM runs from its
`text-generation-with-past` ONNX export: each decoding step feeds the new token plus the **KV cache** of all
earlier ones, so a step costs the same at token 5 as at token 200. QA runs the int8 (dynamically
quantised) export of the encoder; long contexts are read in overlapping windows (document stride) and the
best span over all windows wins. `/health` names the exact graph and precision each endpoint serves.

### Batching
* **Token by token** — `POST /generate/stream`: each token sent as a server-sent event the moment it is
  produced (`POST /generate`: the same, answered whole).
* **Continuous batching** (the default scheduler for the fp32 graph) — concurrent `/generate` and
  `/generate/stream` requests join one running decode batch at the next step and leave it when they finish:
  every step advances all of them with one graph call. (`--scheduler serial`: one request at a time.)
* **Full batch** — `POST /generate/batch`: up to 32 prompts decoded together, left-padded to the longest
  prompt *of this request* (dynamic padding) with an attention mask, sharing every graph call. Several
  times the tokens per second (see the README's batching benchmark).

`POST /generate` is one prompt, answered whole. With greedy decoding (`do_sample: false`, the default) and
the fp32 graph (the default) or the static int8 graph all three return the same tokens for the same prompt;
the dynamic int8 graph scales its activations per batch, so there batching can change a token.

### Limits and overload
Bad input gets **422** naming the field (long inputs are not echoed back whole). A request body over the
size cap gets **413**, one not sent in time **408**. The two CPU cores run one model call (or decoding step)
at a time; a bounded number of requests may be in flight, beyond that a request is refused at once with **503** and a
`Retry-After` estimated from the queue. A generation that runs past the compute budget ends early with
`finish_reason: "time_limit"`; `/generate/batch` has a budget of new tokens (prompts × `max_new_tokens`).
"""

TAGS = [
    {"name": "generation", "description": "Text generation with the tiny LM (ONNX, KV cache)."},
    {"name": "question answering", "description": "Extractive QA with the SQuAD-tuned MiniLM (ONNX int8)."},
    {"name": "service", "description": "Liveness and what is being served."},
]

REFUSALS = {
    408: {"model": ErrorResponse, "description": "The request body did not arrive within the read timeout."},
    413: {"model": ErrorResponse, "description": "The request body is over the size cap (checked before parsing)."},
    422: {"description": "Invalid input; `detail[].loc` names the field (long inputs are shortened, not echoed)."},
    503: {"model": ErrorResponse, "description": "Overloaded (retry after `Retry-After` seconds), or model not loaded."},
}

SSE_EVENT_SCHEMA = {
    "description": "One server-sent event (OpenAPI 3.1: the schema of an `text/event-stream` entry describes each event).",
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["message", "end", "error"],
                  "description": "`message` (default): one token; `end`: the last event; `error`: the server stopped."},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"oneOf": [StreamToken.model_json_schema(), StreamEnd.model_json_schema(),
                                             ErrorResponse.model_json_schema()]}},
    },
}

SSE_EXAMPLE = (
    'data: {"index": 0, "token_id": 262, "text": " the"}\n\n'
    'data: {"index": 1, "token_id": 1204, "text": " city"}\n\n'
    'event: end\ndata: {"text": " the city", "prompt_tokens": 12, "generated_tokens": 2, '
    '"finish_reason": "length", "latency_ms": 3.1}\n\n'
)


class ModelNotLoaded(Exception):
    """An endpoint whose model the server was started without (`--lm none` / `--qa none`): 503."""


class TicketedStreamingResponse(StreamingResponse):
    """A stream that gives its in-flight place back however it ends — even if the body never starts."""

    def __init__(self, content: AsyncIterator[str], ticket: Ticket, **kwargs):
        super().__init__(content, **kwargs)
        self.ticket = ticket

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.release()


async def served_models(request: Request) -> ServingModels:
    """The models this app was built around. (These dependencies are `async def` so that FastAPI calls them on
    the event loop rather than in its thread pool: they only read `app.state`.)"""
    return request.app.state.models


async def admission_of(request: Request) -> Admission:
    """The app's overload guard: compute slots, in-flight count and `limits`."""
    return request.app.state.admission


async def lm_scheduler(request: Request) -> Scheduler | None:
    """The scheduler that runs `/generate` and `/generate/stream` (None when no LM is served)."""
    return request.app.state.scheduler


Models = Annotated[ServingModels, Depends(served_models)]
Guard = Annotated[Admission, Depends(admission_of)]
LMScheduler = Annotated[Scheduler | None, Depends(lm_scheduler)]

service_routes = APIRouter(tags=["service"])
lm_routes = APIRouter(tags=["generation"], responses=REFUSALS)
qa_routes = APIRouter(tags=["question answering"], responses=REFUSALS)


def create_app(models: ServingModels, limits: Limits | None = None, scheduler: SchedulerKind | None = None) -> FastAPI:
    """Build the REST app around loaded `models`; `limits` bounds bodies, waiting and compute (see `admission`);
    `scheduler` runs `/generate` and `/generate/stream`: one continuous batch, or one request at a time
    (`pocketlm.serving.scheduler`; default: `default_scheduler` for the LM's graph). The routes live in the module's routers and reach what this app holds
    (models, admission, scheduler) through the dependencies above."""
    limits = limits or Limits()
    scheduler = scheduler or default_scheduler(models.lm.precision if models.lm else "fp32")
    app = FastAPI(
        title="pocketlm REST API",
        version=pocketlm.__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,  # served below from local assets: the default page pulls Swagger UI from a CDN
        redoc_url=None,
    )
    # 413 from Content-Length or the streamed bytes, 408 for a late body: before anything parses it
    app.add_middleware(BodyLimits, max_bytes=limits.max_body_bytes, timeout_s=limits.read_timeout_s)
    app.state.models = models
    app.state.admission = admission = Admission(limits)
    app.state.scheduler = make_scheduler(scheduler, models.lm.runtime, admission) if models.lm else None
    app.state.scheduler_kind = scheduler
    app.state.started = time.monotonic()
    _install_docs(app)
    _install_error_handlers(app)
    for router in (service_routes, lm_routes, qa_routes):
        app.include_router(router)
    app.include_router(openai_api.router)  # /v1/...: the OpenAI-compatible API (chat: `openai_api.serve_rag`)
    return app


@service_routes.get("/health", response_model=HealthResponse, summary="Liveness and the models served")
async def health(request: Request, models: Models, admission: Guard) -> HealthResponse:
    import onnxruntime

    return HealthResponse(
        status="ok", models=models.describe(), scheduler=request.app.state.scheduler_kind,
        in_flight=admission.in_flight, capacity=admission.capacity,
        onnxruntime=onnxruntime.__version__, uptime_s=time.monotonic() - request.app.state.started,
    )


@lm_routes.post("/generate", response_model=GenerateResponse, summary="Continue one prompt (answered whole)")
async def generate(body: GenerateRequest, request: Request, models: Models, admission: Guard,
                   scheduler: LMScheduler) -> GenerateResponse:
    served = _require(models.lm, "lm")
    lm: OnnxCausalLM = served.runtime
    ids = _encode_prompts(lm, [body.prompt], body.max_new_tokens, ("body", "prompt"))[0]
    params = sampling_params(body, admission.limits)
    tokens, latency = await scheduler.generate(ids, params, request.receive)
    generation = _generation(lm, ids, tokens, params)
    return GenerateResponse(**generation.model_dump(), model=served.label, latency_ms=1000 * latency)


@lm_routes.post("/generate/stream", responses={
    200: {"description": "Server-sent events: one `data:` event per token (StreamToken), then `event: end` "
          "(StreamEnd); `event: error` if the server had to stop. Every stream ends with one of the two.",
          "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA, "example": SSE_EXAMPLE}}},
}, response_class=StreamingResponse, summary="Token by token: stream one prompt's tokens as they are produced")
async def generate_stream(body: GenerateRequest, models: Models, admission: Guard,
                          scheduler: LMScheduler) -> StreamingResponse:
    served = _require(models.lm, "lm")
    lm: OnnxCausalLM = served.runtime
    ids = _encode_prompts(lm, [body.prompt], body.max_new_tokens, ("body", "prompt"))[0]
    ticket = admission.admit()  # refused here, the client gets a 503 status rather than an error event
    return TicketedStreamingResponse(
        _token_events(lm, ids, sampling_params(body, admission.limits), scheduler, ticket), ticket,
        media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@lm_routes.post("/generate/batch", response_model=BatchGenerateResponse,
                 summary="Full batch: continue many prompts in one dynamically padded batch")
async def generate_batch(body: BatchGenerateRequest, models: Models, admission: Guard) -> BatchGenerateResponse:
    served = _require(models.lm, "lm")
    lm: OnnxCausalLM = served.runtime
    batch = _encode_prompts(lm, body.prompts, body.max_new_tokens, ("body", "prompts"))
    params = sampling_params(body, admission.limits)
    outputs, latency = await admission.run(lm.generate_ids, batch, params)
    generations = [_generation(lm, ids, tokens, params) for ids, tokens in zip(batch, outputs, strict=True)]
    return BatchGenerateResponse(
        generations=generations, model=served.label, padded_shape=(len(batch), max(map(len, batch))),
        latency_ms=1000 * latency, tokens_per_s=sum(g.generated_tokens for g in generations) / latency,
    )


@qa_routes.post("/qa", response_model=QAResponse, summary="Find the answer to a question in a context")
async def qa(body: QARequest, models: Models, admission: Guard) -> QAResponse:
    served = _require(models.qa, "qa")
    try:
        answer, latency = await admission.run(served.runtime.answer, body.question, body.context)
    except ConfigError as err:  # the question leaves no room for the context in a window
        raise _field_error(("body", "question"), str(err), body.question) from None
    return QAResponse(answer=answer.text, start=answer.start, end=answer.end, score=answer.score,
                      model=served.label, latency_ms=1000 * latency)


def _install_error_handlers(app: FastAPI) -> None:
    """Every refusal is a short JSON body: 422 naming the field, 413/408 for the body, 503 with `Retry-After`;
    and an unexpected failure is a JSON 500, never a plain-text traceback page."""

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, err: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 503, headers={"Retry-After": str(err.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = [{**error, "input": _shortened(error["input"])} if "input" in error else error for error in err.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        # FastAPI answers 400 for a body it cannot even decode (bytes that are not UTF-8); malformed JSON is
        # a 422 there, so make both a 422 naming the body. No route here raises 400 itself.
        if err.status_code == 400:
            return JSONResponse({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": str(err.detail)}]}, 422)
        return await http_exception_handler(request, err)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, err: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": no one is left to read it

    @app.exception_handler(ModelNotLoaded)
    async def _not_loaded(request: Request, err: ModelNotLoaded) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, 503)

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(err).__name__}); see the server log"}, 500)


def _shortened(value):
    """`value` as it is when short and valid JSON, else its first `ECHO_CHARS` characters (as JSON text for
    non-strings: NaN and Infinity, which JSON cannot carry, become text too) and its length."""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(jsonable_encoder(value))
        if len(text) <= ECHO_CHARS:
            try:
                json.dumps(jsonable_encoder(value), allow_nan=False)
                return value
            except ValueError:
                return text
    return value if len(text) <= ECHO_CHARS else f"{text[:ECHO_CHARS]}… ({len(text)} characters)"


def _install_docs(app: FastAPI) -> None:
    """Swagger UI from the `swagger-ui-bundle-v2` wheel's files, so /docs works with no internet."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount(SWAGGER_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} — docs",
            swagger_js_url=f"{root}{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{SWAGGER_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{SWAGGER_ASSETS}/favicon-32x32.png",
        )


def _require(model: ServedModel | None, name: str) -> ServedModel:
    if model is None:
        raise ModelNotLoaded(f"no {name} model is loaded on this server (start it with --{name} ID)")
    return model


def _field_error(loc: tuple, message: str, value) -> RequestValidationError:
    """A 422 in FastAPI's own format, for checks that need the model (token counts) and so cannot live in the schema."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": message, "input": value}])


def _encode_prompts(lm: OnnxCausalLM, prompts: Sequence[str], max_new_tokens: int, loc: tuple) -> list[list[int]]:
    """Tokenise; a prompt that leaves no room for `max_new_tokens` in the context window is a 422 on its field."""
    encoded = []
    for index, prompt in enumerate(prompts):
        ids = lm.encode(prompt)
        if problem := lm.prompt_problem(ids, max_new_tokens):
            raise _field_error(loc if len(prompts) == 1 and loc[-1] == "prompt" else (*loc, index), problem, prompt)
        encoded.append(ids)
    return encoded


def sampling_params(body: SamplingFields, limits: Limits) -> SamplingParams:
    """The decoding settings of a request, under the server's compute budget (REST and the Spaces alike)."""
    return SamplingParams(
        max_new_tokens=body.max_new_tokens, do_sample=body.do_sample, temperature=body.temperature,
        top_k=body.top_k, seed=body.seed, stop_at_eos=not body.ignore_eos, max_time=limits.max_compute_s,
    )


def _generation(lm: OnnxCausalLM, prompt: list[int], tokens: list[int], params: SamplingParams) -> Generation:
    return Generation(
        text=lm.decode(tokens), prompt_tokens=len(prompt), generated_tokens=len(tokens),
        finish_reason=_finish_reason(lm, tokens, params),
    )


def _finish_reason(lm: OnnxCausalLM, tokens: list[int], params: SamplingParams) -> FinishReason:
    if params.stop_at_eos and tokens and tokens[-1] == lm.eos_token_id:
        return "eos"
    # fewer tokens than asked, no EOS: the decoding loop stopped at the compute budget (`max_time`)
    return "length" if len(tokens) >= params.max_new_tokens else "time_limit"


def _sse(data: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


async def _token_events(lm: OnnxCausalLM, ids: list[int], params: SamplingParams, scheduler: Scheduler,
                        ticket: Ticket) -> AsyncIterator[str]:
    """Server-sent events of one prompt's tokens as the scheduler makes them. The stream always ends with `end`
    or `error`: the status line and headers are long gone when a step fails, so an event is the only way left
    to tell the client."""
    steps: TokenStream = scheduler.stream(ids, params, ticket)
    text_of = lm.text_decoder(ids)
    tokens: list[int] = []
    try:
        async for token in steps:
            tokens.append(token)
            yield _sse(StreamToken(index=len(tokens) - 1, token_id=token, text=text_of(token)).model_dump())
    except Overloaded as err:
        yield _sse({"detail": str(err)}, event="error")
        return
    except Exception as err:
        logger.exception("/generate/stream failed after %d tokens", len(tokens))
        yield _sse({"detail": f"generation failed after {len(tokens)} tokens ({type(err).__name__}); "
                              "see the server log"}, event="error")
        return
    end = _generation(lm, ids, tokens, params)
    yield _sse(StreamEnd(**end.model_dump(), latency_ms=1000 * steps.model_s).model_dump(), event="end")
