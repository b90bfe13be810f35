"""Overload protection in isolation: refusal by capacity, by expected wait, by waiting too long — never a hang."""

import asyncio

import pytest

from pocketlm.serving.admission import Admission, Limits, Overloaded


def test_capacity_is_active_plus_waiting_and_tickets_release_once():
    admission = Admission(Limits(max_active=1, max_waiting=2))
    tickets = [admission.admit() for _ in range(3)]
    with pytest.raises(Overloaded, match="capacity 3"):
        admission.admit()
    tickets[0].release()
    tickets[0].release()  # idempotent: every exit path may call it
    assert admission.in_flight == 2
    admission.admit()
    assert admission.in_flight == 3


def test_slow_service_shortens_the_queue():
    admission = Admission(Limits(max_active=1, max_waiting=100, max_wait_s=1.0))
    admission.service_s = 0.3  # recent model calls took 0.3 s
    for _ in range(4):  # 0, 0.3, 0.6, 0.9 s of work ahead: accepted
        admission.admit()
    with pytest.raises(Overloaded, match="would take about 1.2 s"):
        admission.admit()


def test_waiting_longer_than_max_wait_is_refused():
    async def scenario():
        admission = Admission(Limits(max_active=1, max_waiting=5, max_wait_s=0.05))
        async with admission.compute_slot():
            with pytest.raises(Overloaded, match="no compute slot within"):
                async with admission.compute_slot():
                    pass
        async with admission.compute_slot():  # free again afterwards
            pass
        assert admission.service_s > 0

    asyncio.run(scenario())


def test_retry_after_is_the_queue_drain_time_at_least_one_second():
    admission = Admission(Limits(max_active=1, max_waiting=100, max_wait_s=100.0))
    assert admission.retry_after_s() == 1  # nothing known yet
    admission.service_s = 0.4
    for _ in range(10):
        admission.admit()
    assert admission.retry_after_s() == 4  # 10 requests × 0.4 s
    with pytest.raises(Overloaded) as refused:
        for _ in range(92):  # the 92nd is over the capacity of 101
            admission.admit()
    assert refused.value.retry_after_s == 41  # 101 in flight × 0.4 s, rounded up


def test_a_caller_that_goes_first_is_served_before_the_queue():
    """The continuous batch lets one waiting call through, then takes the slot back before the calls that queued
    meanwhile; everyone else is served in arrival order, and a cancelled wait neither keeps nor loses a slot."""

    async def scenario():
        admission = Admission(Limits(max_active=1, max_waiting=10, max_wait_s=5.0))
        order = []

        async def call(name: str, first: bool = False, hold_s: float = 0.01):
            async with admission.compute_slot(first=first):
                order.append(name)
                await asyncio.sleep(hold_s)

        holder = asyncio.create_task(call("holder", hold_s=0.05))
        await asyncio.sleep(0.01)
        queued = [asyncio.create_task(call(f"q{i}")) for i in range(3)]
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(call("gone"))
        await asyncio.sleep(0.01)
        gone.cancel()
        batch = asyncio.create_task(call("batch", first=True))
        await asyncio.sleep(0.01)
        assert admission.waiting_for_slot == 3  # the queued calls; the batch is not counted
        await asyncio.gather(holder, batch, *queued)
        assert order == ["holder", "batch", "q0", "q1", "q2"]
        async with admission.compute_slot():  # the cancelled waiter left nothing behind: the slot is free
            pass

    asyncio.run(scenario())
