"""Who runs the LM for `/generate` and `/generate/stream`: one request at a time, or one continuous batch.

* `SerialScheduler` — each request is its own decoding loop; `/generate` holds the compute slot for its whole
  generation, a stream takes it step by step (`Admission.run` / `Admission.steps`). On two cores a batch of one
  leaves most of each graph call to fixed overhead, so under load the requests mostly wait in the queue.
* `ContinuousScheduler` — one running decode batch that requests join at step boundaries and leave when they
  finish (continuous batching, as text-generation-inference and vLLM do): every step advances all rows with
  one graph call. A new prompt is prefilled (together with the others that arrived meanwhile, left-padded)
  and its KV cache merged into the batch's (`KVState.concat`); finished or abandoned rows are cut out
  (`KVState.select`). One asyncio task owns the model and runs the steps in a worker thread, so the event
  loop keeps serving; the batch holds a compute slot like any other model call and shares it per request with
  the calls waiting for it (`/qa`, the UI: see `_share_used`), so neither starves the other.

Both give the same greedy tokens as `OnnxCausalLM.generate_ids` alone (rows see only their own tokens at their
own positions), and sampling is reproducible per request: each row draws from its own generator, seeded with
the request's `seed`, exactly as a request alone does. Both are behind the same admission control: a request
takes its in-flight ticket first (503 + `Retry-After` when full), waits at most `max_wait_s` for a row, and
stops at `max_compute_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from starlette.concurrency import run_in_threadpool

from pocketlm.inference.onnx_lm import BATCH_STABLE_PRECISIONS, KVState, OnnxCausalLM, SamplingParams, choose_next_tokens
from pocketlm.serving.admission import Admission, Overloaded, Ticket

SchedulerKind = Literal["continuous", "serial"]
SCHEDULERS: tuple[SchedulerKind, ...] = ("continuous", "serial")

Receive = Callable[[], Awaitable[dict]]
"""The ASGI `receive` of a request whose body has been read: its next message is `http.disconnect`."""


class TokenStream(Protocol):
    """The new tokens of one request as they are made; `model_s` is the time the model spent on them."""

    model_s: float

    def __aiter__(self) -> AsyncIterator[int]: ...


class SerialScheduler:
    """Each request decodes alone, taking turns on the compute slots (the scheme before continuous batching)."""

    kind: SchedulerKind = "serial"

    def __init__(self, lm: OnnxCausalLM, admission: Admission):
        self.lm, self.admission = lm, admission

    async def generate(self, ids: list[int], params: SamplingParams, receive: Receive | None = None) -> tuple[list[int], float]:
        # `receive` unused: a model call in a worker thread cannot be stopped midway (the call is bounded by
        # max_compute_s instead), and cancelling the await would free its compute slot while it still runs
        outputs, seconds = await self.admission.run(self.lm.generate_ids, [ids], params)
        return outputs[0], seconds

    def stream(self, ids: list[int], params: SamplingParams, ticket: Ticket) -> TokenStream:
        return self.admission.steps(self.lm.stream_ids(ids, params), ticket)


@dataclass(eq=False)
class Row:
    """One request in (or waiting for) the continuous batch. The scheduler's worker thread writes `tokens`,
    `state_index` and the timings; the request's coroutine reads them only through `events`."""

    prompt: list[int]
    params: SamplingParams
    rng: np.random.Generator
    streaming: bool = True
    """False (`/generate`): the tokens are handed over all at once when the row ends — no event-loop wake-up per token."""
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    """Each new token id, then `_FINISHED` or the exception that ended the batch."""
    joined: asyncio.Event = field(default_factory=asyncio.Event)
    tokens: list[int] = field(default_factory=list)
    started: float = 0.0
    deadline: float | None = None
    model_s: float = 0.0
    done: bool = False
    """Finished (EOS, length, time limit), failed or abandoned by its client: leaves the batch at the next step."""


_FINISHED = object()


class ContinuousScheduler:
    """One decode batch shared by all generation requests; see the module docstring."""

    kind: SchedulerKind = "continuous"
    MAX_SHARE_S = 0.5
    """The longest the batch keeps the slot while a call waits (its share after a long call, e.g. a 2 s
    `/generate/batch`, would otherwise leave the queue waiting past `max_wait_s`)."""

    def __init__(self, lm: OnnxCausalLM, admission: Admission):
        self.lm, self.admission = lm, admission
        self.max_rows = admission.limits.max_batch
        self._pending: list[Row] = []
        self._rows: list[Row] = []
        """The batch's rows, in `_state`'s order. Only the step (in its worker thread) changes them."""
        self._state: KVState | None = None
        self._task: asyncio.Task | None = None
        self.steps = 0
        self.row_steps = 0
        """Graph steps run, and rows advanced over all of them: `row_steps / steps` is the mean batch size."""
        self.peak_rows = 0
        self._other_s = 0.0
        """How long the call the batch last let through held the slot (the measure of the batch's next share)."""
        self._yielded_at: float | None = None

    @property
    def rows(self) -> int:
        """Requests decoding right now (not counting the ones waiting for a row)."""
        return sum(not row.done for row in self._rows)

    async def generate(self, ids: list[int], params: SamplingParams, receive: Receive | None = None) -> tuple[list[int], float]:
        """The whole continuation; when `receive` reports that the client hung up, the row leaves the batch at
        once and `ClientGone` is raised."""
        ticket = self.admission.admit()
        stream = self.stream(ids, params, ticket, streaming=False)
        collect = asyncio.ensure_future(_collect(stream))
        hangup = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
        try:
            await asyncio.wait({collect} | ({hangup} if hangup else set()), return_when=asyncio.FIRST_COMPLETED)
            if not collect.done():
                raise ClientGone()
            return collect.result(), stream.model_s
        finally:
            if hangup is not None:
                hangup.cancel()
            if not collect.done():
                collect.cancel()  # the stream's `finally` marks the row done: the next step drops it
                await asyncio.gather(collect, return_exceptions=True)
            ticket.release()  # (idempotent) also when the stream never started

    def stream(self, ids: list[int], params: SamplingParams, ticket: Ticket, streaming: bool = True) -> RowStream:
        row = Row(list(ids), params, np.random.default_rng(params.seed), streaming)
        return RowStream(self, row, ticket)

    # -- the event loop side ------------------------------------------------------------------------------
    def _submit(self, row: Row) -> None:
        self._pending.append(row)
        if self._task is None:  # the loop ends when there is no work left; the next request starts it again
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="continuous-batching")

    def _leave(self, row: Row) -> None:
        """The request is over (however it ended): out of the queue now, out of the batch at the next step."""
        row.done = True
        if row in self._pending:
            self._pending.remove(row)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self.rows:
                # no queue timeout: the batch waits its turn behind a /qa or UI call, however long; after letting
                # one call through it goes `first`, before the calls that queued meanwhile
                async with self.admission.compute_slot(queue_timeout=False, first=self._yielded_at is not None,
                                                       record=False):
                    turn_started = time.perf_counter()
                    if self._yielded_at is not None:
                        self._other_s = turn_started - self._yielded_at
                    yielded = await self._turn(loop, turn_started)
                self._yielded_at = time.perf_counter() if yielded else None
        finally:
            self._task = None
            self._yielded_at = None

    async def _turn(self, loop: asyncio.AbstractEventLoop, started: float) -> bool:
        """Steps while holding the compute slot, taking in waiting requests at step boundaries, until no row is
        left (False) or the batch has had its fair share and another call is waiting for the slot (True)."""
        while self._pending or self.rows:
            joining = self._pending[: max(0, self.max_rows - self.rows)]
            del self._pending[: len(joining)]
            for row in joining:
                row.joined.set()
            try:
                await run_in_threadpool(self._steps, joining, loop, started)
            except Exception as err:  # the model call failed: every row in the batch ends with the error
                for row in [*self._rows, *joining]:
                    if not row.done:
                        row.done = True
                        row.events.put_nowait(err)
                self._rows, self._state = [], None
            if self._share_used(started):
                return True
        return False

    def _share_used(self, turn_started: float) -> bool:
        """Whether the batch should let the next waiting call (a `/qa`, a UI click) through now.

        The slot is shared per request: the batch, carrying R requests, runs R / W times as long as the call it
        last let through took, when W calls are waiting — then one of them runs, then the batch again. So a
        generation is never stuck behind the whole queue (which yielding at every step did: 32 tokens waited
        for 32 rounds of `/qa` answers), and a waiting call never waits for whole generations. (Read from the
        worker thread too: the counts are hints, re-checked at the next step.)"""
        waiting = self.admission.waiting_for_slot
        share = min(self._other_s * max(1, self.rows) / max(1, waiting), self.MAX_SHARE_S)
        return waiting > 0 and time.perf_counter() - turn_started >= share

    @staticmethod
    def _deliver(made: list[tuple[Row, int, bool]]) -> None:
        for row, token, last in made:
            for each in [token] if row.streaming else row.tokens:  # (a row that is not streaming: its last token)
                row.events.put_nowait(each)
            if last:
                row.events.put_nowait(_FINISHED)

    # -- the worker thread side ---------------------------------------------------------------------------
    def _steps(self, joining: list[Row], loop: asyncio.AbstractEventLoop, turn_started: float) -> None:
        """Run steps, handing each one's tokens to the event loop, until the loop has something for the batch:
        a request to join (and room for it), the batch's share of the slot used up, or no row left.

        Staying in the worker thread between those moments matters on a busy CPU: a round trip through the
        event loop per step costs two thread wake-ups, and on a loaded machine each can wait for a core."""
        while True:
            made = self._step(joining)
            joining = []
            if made:  # (a step that only advanced `/generate` rows has nothing to hand over: no wake-up)
                loop.call_soon_threadsafe(self._deliver, made)
            if (self._pending and self.rows < self.max_rows) or not self.rows or self._share_used(turn_started):
                return

    def _step(self, joining: list[Row]) -> list[tuple[Row, int, bool]]:
        """One step of the batch: drop the rows that are done, advance the others by one token, prefill the
        joining prompts and merge them in. Returns the tokens made: (row, token, whether it is the row's last)."""
        keep = [i for i, row in enumerate(self._rows) if not row.done]
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            self._state = self._state.select(keep) if keep else None
        made: list[tuple[Row, int, bool]] = []
        if self._rows:
            logits, self._state = self.lm.decode_step(self._state, np.array([row.tokens[-1] for row in self._rows]))
            made += self._choose(self._rows, logits)
        if joining:
            now = time.monotonic()
            for row in joining:
                row.started = now
                row.deadline = None if row.params.max_time is None else now + row.params.max_time
            logits, state = self.lm.prefill([row.prompt for row in joining])
            self._state = state if self._state is None else KVState.concat([self._state, state])
            self._rows = [*self._rows, *joining]
            made += self._choose(joining, logits)
        self.steps += 1
        self.row_steps += len(self._rows)
        self.peak_rows = max(self.peak_rows, len(self._rows))
        return made

    def _choose(self, rows: list[Row], logits: np.ndarray) -> list[tuple[Row, int, bool]]:
        """Each row's next token with its own sampling settings and generator (as `decode_steps` alone), and
        whether that ends it: EOS, `max_new_tokens`, or its compute budget spent."""
        now = time.monotonic()
        made = []
        for row, row_logits in zip(rows, logits, strict=True):
            token = int(choose_next_tokens(row_logits[None], row.params, row.rng)[0])
            if row.done:  # abandoned during this step: its token goes nowhere
                continue
            row.tokens.append(token)
            row.model_s = now - row.started
            row.done = (
                (row.params.stop_at_eos and token == self.lm.eos_token_id)
                or len(row.tokens) >= row.params.max_new_tokens
                or (row.deadline is not None and now > row.deadline)
            )
            if row.streaming or row.done:
                made.append((row, token, row.done))
        return made


class RowStream:
    """A request's tokens from the continuous batch: waits for a row (`Overloaded` after `max_wait_s`), then
    yields each token as its step ends. However the iteration ends — finished, failed, or the client gone (the
    response is cancelled) — the row leaves the batch and the ticket is given back."""

    def __init__(self, scheduler: ContinuousScheduler, row: Row, ticket: Ticket):
        self.scheduler, self.row, self.ticket = scheduler, row, ticket

    @property
    def model_s(self) -> float:
        return self.row.model_s

    async def __aiter__(self) -> AsyncIterator[int]:
        row = self.row
        try:
            self.scheduler._submit(row)
            try:
                async with asyncio.timeout(self.scheduler.admission.limits.max_wait_s):
                    await row.joined.wait()
            except TimeoutError:
                raise Overloaded(f"server busy: no place in the decoding batch within "
                                 f"{self.scheduler.admission.limits.max_wait_s:g} s",
                                 self.scheduler.admission.retry_after_s()) from None
            while (item := await row.events.get()) is not _FINISHED:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.scheduler._leave(row)
            self.ticket.release()


class ClientGone(Exception):
    """The client of a `/generate` closed the connection before its answer was ready."""


async def _collect(stream: TokenStream) -> list[int]:
    return [token async for token in stream]


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


Scheduler = SerialScheduler | ContinuousScheduler


def default_scheduler(lm_precision: str) -> SchedulerKind:
    """Continuous batching for the batch-stable graphs (fp32, static int8); one request at a time for dynamic
    int8, whose activation scales are computed over the batch (a request's tokens would depend on who shares its
    batch)."""
    return "continuous" if lm_precision in BATCH_STABLE_PRECISIONS else "serial"


def make_scheduler(kind: SchedulerKind, lm: OnnxCausalLM, admission: Admission) -> Scheduler:
    return {"continuous": ContinuousScheduler, "serial": SerialScheduler}[kind](lm, admission)
