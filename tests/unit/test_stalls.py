"""A call to an endpoint that waits past the stall threshold: logged once, counted,
held in the gauges and the report until it returns (workers/stalls.py)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from shield_orchestrator.metrics import Metrics
from shield_orchestrator.workers.stalls import CallWatch

ADDRESSES = {"llm_endpoint": "http://llm.example/v1", "embedding_endpoint": "http://emb.example/v1"}


def sample(metrics: Metrics, name: str, endpoint: str) -> float:
    value = metrics.registry.get_sample_value(name, {"endpoint": endpoint})
    assert value is not None, name
    return value


async def test_a_call_past_the_threshold_is_logged_once_counted_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    watch = CallWatch(0.05, ADDRESSES, metrics)
    released = asyncio.Event()

    async def slow_call() -> None:
        with watch.track("llm_endpoint"):
            await released.wait()

    caplog.set_level(logging.INFO, logger="shield_orchestrator.endpoints")
    task = asyncio.create_task(slow_call())
    await asyncio.sleep(0.2)
    report = watch.report()["endpoints"]["llm_endpoint"]
    assert report["in_flight"] == 1 and report["stalled_now"] == 1 and report["stalled_total"] == 1
    assert report["oldest_wait_seconds"] >= 0.1
    assert sample(metrics, "shield_endpoint_calls_stalled", "llm_endpoint") == 1
    assert sample(metrics, "shield_endpoint_calls_in_flight", "llm_endpoint") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "llm_endpoint call has waited" in warnings[0].getMessage()
    assert "http://llm.example/v1" in warnings[0].getMessage()
    await asyncio.sleep(0.2)  # still waiting: no second line for the same call
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    released.set()
    await task
    after = watch.report()["endpoints"]["llm_endpoint"]
    assert after == {**after, "in_flight": 0, "stalled_now": 0, "oldest_wait_seconds": 0.0, "stalled_total": 1}
    assert sample(metrics, "shield_endpoint_calls_stalled", "llm_endpoint") == 0
    assert sample(metrics, "shield_endpoint_calls_in_flight", "llm_endpoint") == 0
    assert sample(metrics, "shield_endpoint_stalled_calls_total", "llm_endpoint") == 1
    assert any("returned after" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_calls_within_the_threshold_leave_no_trace(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    watch = CallWatch(0.5, ADDRESSES, metrics)
    caplog.set_level(logging.INFO, logger="shield_orchestrator.endpoints")

    async def quick_call() -> None:
        with watch.track("embedding_endpoint"):
            await asyncio.sleep(0.01)

    await asyncio.gather(*(quick_call() for _ in range(20)))
    await asyncio.sleep(0.6)  # past the threshold: the timers were cancelled
    assert not caplog.records
    assert sample(metrics, "shield_endpoint_stalled_calls_total", "embedding_endpoint") == 0
    assert watch.report()["endpoints"]["embedding_endpoint"]["stalled_total"] == 0


async def test_a_call_that_fails_after_stalling_is_released() -> None:
    metrics = Metrics()
    watch = CallWatch(0.02, ADDRESSES, metrics)

    async def failing_call() -> None:
        with watch.track("llm_endpoint"):
            await asyncio.sleep(0.08)
            raise ConnectionError("reset by peer")

    with pytest.raises(ConnectionError):
        await failing_call()
    report = watch.report()["endpoints"]["llm_endpoint"]
    assert report["in_flight"] == 0 and report["stalled_now"] == 0 and report["stalled_total"] == 1
    assert sample(metrics, "shield_endpoint_calls_stalled", "llm_endpoint") == 0
