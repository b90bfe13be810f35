"""Overload protection and the one guarded path every model call takes, from the REST API and from the Spaces.

Two CPU cores can run one model call at a time at full speed (each ONNX Runtime call already uses both);
running more in parallel only makes every one of them slower. So model work takes turns on `max_active`
compute slots, at most `max_waiting` requests queue for one, and the next request is refused immediately —
a fast 503 with `Retry-After` is something a client can act on; an ever-growing queue only times out.
A request is also refused at once when the queue ahead of it would take longer than `max_wait_s` to drain
at the recent service time (a slow machine gets a shorter queue), and one that still waits longer than
`max_wait_s` for a slot gets 503 rather than hanging. `Retry-After` is that same estimate: the work queued
ahead at the recent mean service time, at least one second.

`Admission.run` (one call, answered whole) and `Admission.steps` (a generator, one compute slot per step)
are the guarded call: `/generate`, `/qa` and the UI's clicks (`pocketlm.spaces.common.ComputeGuard`) all go
through them, so they queue for the same slots in arrival order and are refused the same way.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")
_DONE = object()


class Overloaded(Exception):
    """Raised instead of queueing; the app turns it into 503 with a Retry-After header."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Limits:
    """Everything the server bounds, in one place: the CLI flags, `create_app` and the uvicorn settings read it."""

    max_active: int = 1
    """Model calls running at once."""
    max_batch: int = 16
    """Requests decoded together in the continuous batch (`--scheduler continuous`); more wait for a row, within
    the same `max_waiting` / `max_wait_s` bounds. Each row makes every step a little slower, so this caps how
    slow a step (the time between two tokens of a stream) can get."""
    max_waiting: int = 32
    """Requests allowed to queue for a compute slot (8 concurrent clients fit with room to spare)."""
    max_wait_s: float = 10.0
    """Longest time a request waits for a compute slot before it is refused."""
    max_compute_s: float = 5.0
    """Wall-clock budget of one generation, checked between decoding steps: past it the text ends with
    `finish_reason: "time_limit"`. The largest valid request (a 32 × 128-token batch) takes ~2 s here."""
    max_body_bytes: int = 2 * 1024 * 1024
    """Request bodies above this get 413 before they are parsed. The largest valid body (32 prompts of 4,000
    characters, each `\\uXXXX`-escaped) is ~0.8 MB."""
    read_timeout_s: float = 10.0
    """A client gets this long to send its request headers, and again to send its body; then the
    connection is closed (headers) or answered 408 (body)."""
    keep_alive_s: int = 5
    """An idle keep-alive connection is closed after this long (uvicorn's `timeout_keep_alive`)."""
    max_connections: int = 256
    """Open connections and requests beyond this are answered 503 by uvicorn (`limit_concurrency`)."""


class Admission:
    """Counts requests in flight and hands out compute slots in arrival order (asyncio.Semaphore is FIFO)."""

    SMOOTHING = 0.2
    """Weight of the newest model call in the running mean of service times."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.in_flight = 0
        self.service_s = 0.0
        """Running mean of how long a model call holds a compute slot (0 until the first call)."""
        self._slots = ComputeSlots(limits.max_active)
        self.waiting_for_slot = 0
        """Callers queued in `compute_slot` right now (the continuous batch lets one of them through when its
        share of the slot is used up: `pocketlm.serving.scheduler`)."""

    @property
    def capacity(self) -> int:
        return self.limits.max_active + self.limits.max_waiting

    def expected_wait_s(self) -> float:
        """How long the requests in flight would take to drain at the recent service time."""
        return self.in_flight * self.service_s / self.limits.max_active

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: the queue's expected drain time, at least 1 (whole seconds,
        as the `Retry-After` header wants)."""
        return max(1, math.ceil(self.expected_wait_s()))

    def admit(self) -> Ticket:
        """Take a place in flight, or raise `Overloaded` when all are taken. Never waits."""
        if self.in_flight >= self.capacity:
            raise Overloaded(f"server busy: {self.in_flight} model requests in flight (capacity {self.capacity})",
                             self.retry_after_s())
        expected_wait = self.expected_wait_s()
        if expected_wait > self.limits.max_wait_s:
            raise Overloaded(f"server busy: the {self.in_flight} requests ahead would take about {expected_wait:.1f} s",
                             self.retry_after_s())
        self.in_flight += 1
        return Ticket(self)

    @contextmanager
    def admitted(self) -> Iterator[None]:
        ticket = self.admit()
        try:
            yield
        finally:
            ticket.release()

    @asynccontextmanager
    async def compute_slot(self, queue_timeout: bool = True, first: bool = False,
                           record: bool = True) -> AsyncIterator[None]:
        """Hold one of the `max_active` slots for one model call; `Overloaded` after `max_wait_s` of waiting.
        The continuous batch's turns (whose requests were admitted already) pass `queue_timeout=False`,
        `first=True` (it goes before the queue when it has just let one call through) and `record=False`
        (a turn serves many requests: it reports its share with `record_service`)."""
        try:
            # asyncio.timeout cancels the acquire itself, whose cancellation handling gives back a slot granted
            # at the last moment (3.11's wait_for could lose it)
            self.waiting_for_slot += not first
            async with asyncio.timeout(self.limits.max_wait_s if queue_timeout else None):
                await self._slots.acquire(first)
        except TimeoutError:
            raise Overloaded(f"server busy: no compute slot within {self.limits.max_wait_s:g} s",
                             self.retry_after_s()) from None
        finally:
            self.waiting_for_slot -= not first
        started = time.perf_counter()
        try:
            yield
        finally:
            self._slots.release()
            if record:
                self.record_service(time.perf_counter() - started)

    def record_service(self, held_s: float) -> None:
        """Fold one request's time on a compute slot into the running mean (`service_s`)."""
        self.service_s = held_s if self.service_s == 0 else (1 - self.SMOOTHING) * self.service_s + self.SMOOTHING * held_s

    async def run(self, fn: Callable[..., T], *args) -> tuple[T, float]:
        """The guarded call: admit (or `Overloaded` at once), wait for a compute slot, run `fn(*args)` in a worker
        thread (the event loop keeps serving); returns its result and the seconds it held the slot."""
        with self.admitted():
            async with self.compute_slot():
                started = time.perf_counter()
                result = await run_in_threadpool(fn, *args)
                return result, time.perf_counter() - started

    def steps(self, steps: Iterator[T], ticket: Ticket | None = None) -> GuardedSteps[T]:
        """The guarded call for a generator: see `GuardedSteps`. Pass a `ticket` already taken when the refusal
        must happen before the stream starts (the REST API answers it with a 503 status, not an event)."""
        return GuardedSteps(self, steps, ticket)


class GuardedSteps(Generic[T]):
    """Iterate a blocking generator asynchronously; each `next` takes a compute slot of its own, so concurrent
    streams and requests interleave step by step instead of waiting for whole generations. The in-flight
    ticket (taken on the first step unless given) is released however the iteration ends; `model_s` sums
    the time spent inside the generator."""

    def __init__(self, admission: Admission, steps: Iterator[T], ticket: Ticket | None = None):
        self.admission, self._steps, self._ticket = admission, steps, ticket
        self.model_s = 0.0

    async def __aiter__(self) -> AsyncIterator[T]:
        ticket = self._ticket or self.admission.admit()
        try:
            while True:
                async with self.admission.compute_slot():
                    started = time.perf_counter()
                    item = await run_in_threadpool(next, self._steps, _DONE)
                    self.model_s += time.perf_counter() - started
                if item is _DONE:
                    return
                yield item
        finally:
            ticket.release()


class ComputeSlots:
    """`count` slots handed out in arrival order (as asyncio.Semaphore), with one exception: a caller that asks
    to go `first` is served before everyone queued — the continuous batch, which lets one waiting call through
    and then takes its turn back (a FIFO would put it behind every call queued meanwhile)."""

    def __init__(self, count: int):
        self.free = count
        self._first: deque[asyncio.Future] = deque()
        self._queue: deque[asyncio.Future] = deque()

    async def acquire(self, first: bool = False) -> None:
        if self.free > 0 and not self._first and not self._queue:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        line = self._first if first else self._queue
        line.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over just as the wait was cancelled: pass it on
            elif waiter in line:
                line.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the slot straight to the next waiter (so no newcomer can overtake it), or free it."""
        for line in (self._first, self._queue):
            while line:
                waiter = line.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self.free += 1


class Ticket:
    """A place in flight; `release` is idempotent, so every exit path may call it."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.in_flight -= 1
