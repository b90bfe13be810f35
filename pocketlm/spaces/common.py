"""What every Space shares: input validation with the REST API's own schemas, turned into messages shown in
the page; the REST API's admission guard around model calls; model folders resolved by repo id.

Bad input never reaches the page as a stack trace: it becomes a `gr.Error` whose text names the field,
with the same limits as the REST API (the pydantic schemas of `pocketlm.serving.schemas` are the one place
they live).
"""

from __future__ import annotations

import asyncio
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

_DONE = object()


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
    """Model calls from the page take the same admission ticket and compute slot as REST requests do.

    In the suite the guard wraps the REST app's own `Admission` (`app.state.admission`), so a click in the
    UI and a `/generate` request queue for the same two cores in arrival order and overload is refused the
    same way — as a message in the page here, a 503 there. A standalone Space gets a guard of its own.
    """

    def __init__(self, admission: Admission | None = None):
        self.admission = admission or Admission(Limits())

    def _admit(self):
        try:
            return self.admission.admit()
        except Overloaded as err:
            raise gr.Error(f"{err}; please try again in a moment", title="Busy") from None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in a worker thread while holding one compute slot."""
        ticket = self._admit()
        try:
            async with self.admission.compute_slot():
                return await run_in_threadpool(user_errors(fn), *args)
        except Overloaded as err:
            raise gr.Error(f"{err}; please try again in a moment", title="Busy") from None
        finally:
            ticket.release()

    async def stream(self, steps: Iterator[T]) -> AsyncIterator[T]:
        """Yield the items of `steps`; each `next` takes a compute slot of its own (as the REST API's token
        stream does), so concurrent users interleave step by step rather than waiting for whole generations."""
        ticket = self._admit()
        try:
            while True:
                try:
                    async with self.admission.compute_slot():
                        item = await run_in_threadpool(next, steps, _DONE)
                except Overloaded as err:
                    raise gr.Error(f"{err}; please try again in a moment", title="Busy") from None
                if item is _DONE:
                    return
                yield item
        finally:
            ticket.release()


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
    Spaces), a snapshot of the repo downloaded once: the ONNX loaders read files, not Hub ids."""
    from pocketlm.hub import resolve

    if Path(resolve(repo_id)).is_dir():
        return repo_id
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id)



def standalone(title: str, render: Callable[..., None], *args: Any) -> gr.Blocks:
    """A Space on its own page: its title, then `render(*args)`."""
    with gr.Blocks(title=f"pocketlm · {title}") as demo:
        gr.Markdown(f"# pocketlm · {title}")
        render(*args)
    return demo
