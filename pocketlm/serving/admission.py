"""Overload protection: a bounded number of model requests in flight, the rest refused at once with 503.

Two CPU cores can run one model call at a time at full speed (each ONNX Runtime call already uses both);
running more in parallel only makes every one of them slower. So model work takes turns on `max_active`
compute slots, at most `max_waiting` requests queue for one, and the next request is refused immediately —
a fast 503 with `Retry-After` is something a client can act on; an ever-growing queue only times out.
A request is also refused at once when the queue ahead of it would take longer than `max_wait_s` to drain
at the recent service time (a slow machine gets a shorter queue), and one that still waits longer than
`max_wait_s` for a slot gets 503 rather than hanging.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass


class Overloaded(Exception):
    """Raised instead of queueing; the app turns it into 503 with a Retry-After header."""


@dataclass(frozen=True)
class Limits:
    max_active: int = 1
    """Model calls running at once."""
    max_waiting: int = 32
    """Requests allowed to queue for a compute slot (8 concurrent clients fit with room to spare)."""
    max_wait_s: float = 10.0
    """Longest time a request waits for a compute slot before it is refused."""
    retry_after_s: int = 1


class Admission:
    """Counts requests in flight and hands out compute slots in arrival order (asyncio.Semaphore is FIFO)."""

    SMOOTHING = 0.2
    """Weight of the newest model call in the running mean of service times."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.in_flight = 0
        self.service_s = 0.0
        """Running mean of how long a model call holds a compute slot (0 until the first call)."""
        self._slots = asyncio.Semaphore(limits.max_active)

    @property
    def capacity(self) -> int:
        return self.limits.max_active + self.limits.max_waiting

    def admit(self) -> "Ticket":
        """Take a place in flight, or raise `Overloaded` when all are taken. Never waits."""
        if self.in_flight >= self.capacity:
            raise Overloaded(f"server busy: {self.in_flight} model requests in flight (capacity {self.capacity})")
        expected_wait = self.in_flight * self.service_s / self.limits.max_active
        if expected_wait > self.limits.max_wait_s:
            raise Overloaded(f"server busy: the {self.in_flight} requests ahead would take about {expected_wait:.1f} s")
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
    async def compute_slot(self) -> AsyncIterator[None]:
        """Hold one of the `max_active` slots for one model call; `Overloaded` after `max_wait_s` of waiting."""
        try:
            # asyncio.timeout cancels the acquire itself, whose cancellation handling gives back a slot granted
            # at the last moment (3.11's wait_for could lose it)
            async with asyncio.timeout(self.limits.max_wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise Overloaded(f"server busy: no compute slot within {self.limits.max_wait_s:g} s") from None
        started = time.perf_counter()
        try:
            yield
        finally:
            self._slots.release()
            held = time.perf_counter() - started
            self.service_s = held if self.service_s == 0 else (1 - self.SMOOTHING) * self.service_s + self.SMOOTHING * held


class Ticket:
    """A place in flight; `release` is idempotent, so every exit path may call it."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.in_flight -= 1
