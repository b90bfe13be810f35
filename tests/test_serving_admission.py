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
