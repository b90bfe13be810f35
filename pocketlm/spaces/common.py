"""What every Space shares: input validation with the REST API's own schemas, turned into messages shown in
the page; the REST API's guarded model call (`Admission.run` / `Admission.steps`); model folders resolved by
repo id; the page's own limits (a bounded queue, uploads off, no analytics).

Bad input never reaches the page as a stack trace: it becomes a `gr.Error` whose text names the field,
with the same limits as the REST API (the pydantic schemas of `pocketlm.serving.schemas` are the one place
they live).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import gradio as gr
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from pocketlm.errors import PocketLMError
from pocketlm.serving.admission import Admission, Limits, Overloaded

Schema = TypeVar("Schema", bound=BaseModel)
T = TypeVar("T")

logger = logging.getLogger(__name__)

_DONE = object()

MAX_UPLOAD_BYTES = 0
"""No Space takes files, so Gradio's upload route refuses any file with content (413)."""
DELETE_CACHE = (3600, 3600)
"""Gradio's `delete_cache`: every hour, delete cached files older than an hour (what an upload or a
component output left behind)."""


def validated(schema: type[Schema], labels: dict[str, str] | None = None, **fields: Any) -> Schema:
    """`schema(**fields)`, or a `gr.Error` listing each invalid field by its label in the page.

    Fields left empty in the page arrive as None or '': they are checked, never silently defaulted.
    """
    try:
        return schema(**fields)
    except ValidationError as err:
        raise gr.Error(describe_validation_error(err, labels or {}), title="Please check the input") from None


def describe_validation_error(err: ValidationError, labels: dict[str, str]) -> str:
    """One line per problem: 'Context: String should have at most 20000 characters (got 25000)'."""
    lines = []
    for problem in err.errors(include_url=False):
        field = str(problem["loc"][0]) if problem["loc"] else "input"
        message = problem["msg"].removeprefix("Value error, ")
        value = problem.get("input")
        if problem["type"] in {"string_too_long", "string_too_short"} and isinstance(value, str):
            message = "must not be empty" if not value else f"{message} (got {len(value)})"
        elif problem["type"] in {"missing", "int_type", "float_type"} and value in (None, ""):
            message = "must not be empty"
        lines.append(f"{labels.get(field, field)}: {message}")
    return "\n".join(lines)


class ComputeGuard:
    """The REST API's guarded model call (`Admission.run`, `Admission.steps`), with its refusals and failures
    turned into messages in the page.

    In the suite the guard wraps the REST app's own `Admission` (`app.state.admission`), so a click in the
    UI and a `/generate` request queue for the same two cores in arrival order and overload is refused the
    same way — as a message in the page here, a 503 there. A standalone Space gets a guard of its own.
    """

    def __init__(self, admission: Admission | None = None):
        self.admission = admission or Admission(Limits())

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in a worker thread while holding one compute slot."""
        try:
            result, _ = await self.admission.run(user_errors(fn), *args)
        except Overloaded as err:
            raise busy(err) from None
        return result

    async def stream(self, steps: Iterator[T]) -> AsyncIterator[T]:
        """Yield the items of `steps`, each `next` with a compute slot of its own (as `/generate/stream`); a
        failure midway ends the stream with a message in the page (Gradio's error event), never a hang."""
        count = 0
        try:
            async for item in self.admission.steps(steps):
                count += 1
                yield item
        except Overloaded as err:
            raise busy(err) from None
        except gr.Error:
            raise
        except PocketLMError as err:
            raise gr.Error(str(err)) from None
        except Exception as err:
            logger.exception("a streamed model call failed after %d steps", count)
            raise gr.Error(f"generation failed after {count} steps ({type(err).__name__}); see the server log",
                           title="Generation stopped") from None


def busy(err: Overloaded) -> gr.Error:
    return gr.Error(f"{err}; please try again in {err.retry_after_s} s", title="Busy")


async def in_batches(items: AsyncIterator[T]) -> AsyncIterator[list[T]]:
    """Consume `items` at their own pace in a task, and yield everything that arrived since the last batch.

    A Gradio update costs ~20 ms (postprocess, diff, an event to the page), several times a decoding step of
    the tiny LM; yielding token by token would let the page's pace throttle generation. Here generation runs
    at full speed and each update carries every token produced since the previous one — still as they are
    generated, and never more than one update behind.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def produce() -> None:
        try:
            async for item in items:
                queue.put_nowait(item)
            queue.put_nowait(_DONE)
        except BaseException as err:  # handed to the consumer, which re-raises it in the request
            queue.put_nowait(err)

    task = asyncio.create_task(produce())
    try:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            done = batch[-1] is _DONE or isinstance(batch[-1], BaseException)
            items_only = batch[:-1] if done else batch
            if items_only:
                yield items_only
            if isinstance(batch[-1], BaseException):
                raise batch[-1]
            if done:
                return
    finally:
        task.cancel()


class LoadOnce(Generic[T]):
    """`load()` builds the value on first call (thread-safe) and returns the same one after: for the parts of
    a Space that take seconds to load (torch-based models), so the suite can start without them and load
    them in the background (`spaces/suite/app.py`) or on first use."""

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._value: T | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def load(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._factory()
            return self._value

    async def loaded_value(self, what: str) -> T:
        """The value, loading it in a worker thread (with a note in the page) if needed. No compute slot is
        taken: a one-off load must not hold up REST requests."""
        if not self.loaded:
            gr.Info(f"Loading {what} (first use only)…", duration=4)
        return await run_in_threadpool(user_errors(self.load))


def user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """A `PocketLMError` (user-fixable by definition) becomes a message in the page."""

    def wrapped(*args: Any) -> T:
        try:
            return fn(*args)
        except PocketLMError as err:
            raise gr.Error(str(err)) from None

    return wrapped


def local_folder(repo_id: str) -> str:
    """`repo_id` itself when `pocketlm.hub.resolve` finds it on disk (a path or the local hub folder); where
    resolve answers with the bare Hub id instead (nothing local, the Hub reachable — as on Hugging Face
    Spaces), a snapshot of the repo downloaded once: the ONNX loaders read files, not Hub ids. A repo the
    Hub does not have (or will not show) is an `ArtifactNotFoundError` naming it."""
    from pocketlm.hub import ArtifactNotFoundError, resolve

    if Path(resolve(repo_id)).is_dir():
        return repo_id
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id)
    except (HfHubHTTPError, LocalEntryNotFoundError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ArtifactNotFoundError(f"{repo_id!r} could not be downloaded from the Hub ({reason})") from None


def missing_models_page(title: str, missing: list) -> gr.Blocks:
    """The page a Space serves instead of crashing when a model it needs is missing: each id it looked for,
    why it is not there, and how to build or push it (`pocketlm.artifacts.how_to_provide`)."""
    from pocketlm.artifacts import how_to_provide

    lines = [f"# pocketlm · {title}", "**This Space cannot start: a model it needs is not available.**", ""]
    for item in missing:
        lines += [f"- **`{item.repo_id}`** (`--{item.flag.replace('_', '-')}`): {item.reason}",
                  f"  - To fix: {how_to_provide(item.repo_id)}."]
    with page(f"pocketlm · {title}") as demo:
        gr.Markdown("\n".join(lines), elem_id="missing-models")
    return demo


def page(title: str) -> gr.Blocks:
    """The Blocks of every page (a Space alone or the suite): analytics off in code, whatever the environment
    says, and cached files cleaned up (`DELETE_CACHE`)."""
    return gr.Blocks(title=title, analytics_enabled=False, delete_cache=DELETE_CACHE)


IDLE_QUEUE_POLL_S = 0.02
"""How often Gradio's queue looks for new events and progress updates while it has none (Gradio's own defaults
on Linux: every 1 ms and every 10 ms)."""


def queued(blocks: gr.Blocks, limits: Limits | None = None) -> gr.Blocks:
    """`blocks` with a bounded Gradio queue: as many events may wait as REST requests may (`max_waiting`);
    beyond that Gradio refuses the event at once (HTTP 503, "Queue is full", shown in the page).

    An idle queue polls every `IDLE_QUEUE_POLL_S` instead of every millisecond: a thousand wake-ups a second on
    the event loop kept an idle suite at ~9 % of a core (the standalone REST server: 0.2 %), and each one takes
    the GIL and a core from a model call running in a worker thread (`/generate` through the suite). A click now waits at most 20 ms more to start, and a progress bar
    moves 50 times a second. (Gradio has no public setting for either: `Queue.sleep_when_free`,
    `Queue.progress_update_sleep_when_free`.)"""
    blocks = blocks.queue(max_size=(limits or Limits()).max_waiting)
    queue = blocks._queue
    queue.sleep_when_free = max(queue.sleep_when_free, IDLE_QUEUE_POLL_S)
    queue.progress_update_sleep_when_free = max(queue.progress_update_sleep_when_free, IDLE_QUEUE_POLL_S)
    return blocks


def standalone(title: str, render: Callable[..., None], *args: Any) -> gr.Blocks:
    """A Space on its own page: its title, then `render(*args)`."""
    with page(f"pocketlm · {title}") as demo:
        gr.Markdown(f"# pocketlm · {title}")
        render(*args)
    return demo
