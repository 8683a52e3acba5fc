"""The LLM's slots without Redis (lightrag/llm/slots.py): this host's slots, the 429
back-off that holds every chat call of the host, the order a call takes them in,
and what is reported. The cluster's slots on a real Redis: tests/service/test_llm_cap.py."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx2
import pytest
from shield_orchestrator.deployed import BOUNDS, DEFAULTS
from shield_orchestrator.lightrag.llm.slots import (
    DEFAULT_BACKOFF_SECONDS,
    MAX_BACKOFF_SECONDS,
    LLMSlots,
    backoff_seconds,
    host_of,
)
from shield_orchestrator.metrics import Metrics
from shield_orchestrator.settings import Settings


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [(None, DEFAULT_BACKOFF_SECONDS), (5.0, 5.0), (0.0, 0.0), (3600.0, MAX_BACKOFF_SECONDS), (-2.0, 0.0)],
)
def test_the_backoff_is_the_retry_after_bounded(retry_after: float | None, seconds: float) -> None:
    assert backoff_seconds(retry_after) == seconds


def test_a_token_names_its_host() -> None:
    assert host_of("worker-1:4242:0123abcd") == "worker-1"


async def test_a_host_makes_at_most_its_slots_of_chat_calls_at_once() -> None:
    slots = LLMSlots(2)
    running, most = 0, 0

    async def chat() -> None:
        nonlocal running, most
        async with slots.call():
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.02)
            running -= 1

    await asyncio.gather(*(chat() for _ in range(7)))
    assert most == 2
    assert slots.in_use == 0


async def test_a_429_holds_every_chat_call_of_the_host_and_is_counted() -> None:
    metrics = Metrics()
    slots = LLMSlots(4, metrics=metrics)
    assert slots.rate_limited(0.3) == 0.3
    assert sample(metrics, "shield_llm_rate_limited_total") == 1
    assert 0.2 < sample(metrics, "shield_llm_backoff_seconds") <= 0.3
    started = time.monotonic()

    async def chat() -> float:
        async with slots.call():
            return time.monotonic() - started

    waited = await asyncio.gather(chat(), chat(), chat())
    assert min(waited) >= 0.28, waited
    assert sample(metrics, "shield_llm_backoff_seconds") == 0


def test_a_later_429_extends_the_backoff_and_never_shortens_it() -> None:
    now = [100.0]
    slots = LLMSlots(4, clock=lambda: now[0])
    slots.rate_limited(10.0)
    slots.rate_limited(1.0)
    assert slots.backoff_remaining == 10.0
    now[0] += 5
    slots.rate_limited(20.0)
    assert slots.backoff_remaining == 20.0
    slots.rate_limited(None)
    assert slots.backoff_remaining == 20.0
    assert slots.rate_limited_total == 4 and slots.last_rate_limited_at


async def test_the_clients_hooks_count_every_429_and_hold_every_request() -> None:
    slots = LLMSlots(4)
    hooks = slots.http_hooks()
    request = httpx2.Request("POST", "http://llm.example/v1/chat/completions")
    (after_response,) = hooks["response"]
    (before_request,) = hooks["request"]
    await after_response(httpx2.Response(200, request=request))
    assert slots.rate_limited_total == 0 and slots.backoff_remaining == 0
    await after_response(httpx2.Response(429, headers={"Retry-After-Ms": "250"}, request=request))
    assert slots.rate_limited_total == 1 and 0.2 < slots.backoff_remaining <= 0.25
    started = time.monotonic()
    await before_request(request)  # the SDK's retry of a call under way waits too
    assert time.monotonic() - started >= 0.2


class RecordingCluster:
    """Stands in for ClusterSlots: records when each slot was taken."""

    cap = 3

    def __init__(self) -> None:
        self.taken_at: list[float] = []
        self.held: set[str] = set()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[str]:
        self.taken_at.append(time.monotonic())
        self.held.add("token")
        try:
            yield "token"
        finally:
            self.held.discard("token")


async def test_no_cluster_slot_is_held_while_the_host_backs_off() -> None:
    """Host slot, then the back-off, then the cluster slot: the back-off never holds
    a slot the other hosts could use."""
    cluster = RecordingCluster()
    slots = LLMSlots(1, cluster, host="h1")  # type: ignore[arg-type]
    slots.rate_limited(0.3)
    started = time.monotonic()
    async with slots.call():
        assert slots.in_use == 1 and cluster.held
    assert cluster.taken_at[0] - started >= 0.28
    assert slots.in_use == 0 and not cluster.held


async def test_a_call_that_fails_gives_its_slots_back() -> None:
    cluster = RecordingCluster()
    slots = LLMSlots(1, cluster)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        async with slots.call():
            raise RuntimeError("the endpoint failed")
    assert slots.in_use == 0 and not cluster.held
    async with asyncio.timeout(1):
        async with slots.call():  # the host slot is free again
            pass


async def test_the_report_and_the_gauges_without_a_cluster_cap() -> None:
    metrics = Metrics()
    settings = Settings.load({}, DEFAULTS, BOUNDS)
    slots = LLMSlots.build(settings, None, metrics)
    assert slots.cluster is None
    report = await slots.report()
    assert report.flat() == {
        "slots": settings.llm_max_async,
        "slots_in_use": 0,
        "cluster_max_async": 0,
        "rate_limited": 0,
        "backoff_seconds": 0.0,
    }
    assert sample(metrics, "shield_llm_slots") == settings.llm_max_async
    assert sample(metrics, "shield_llm_cluster_max_async") == 0
    async with slots.call():
        assert sample(metrics, "shield_llm_slots_in_use") == 1
        assert (await slots.report()).slots_in_use == 1
    assert sample(metrics, "shield_llm_slots_in_use") == 0


def test_a_cap_without_redis_leaves_the_calls_uncapped() -> None:
    """The CLI's commands (no Redis) make no chat call: their slots are the process's alone."""
    settings = Settings.load({"ORCHESTRATOR_LLM_CLUSTER_MAX_ASYNC": "8"}, DEFAULTS, BOUNDS)
    assert LLMSlots.build(settings).cluster is None


async def test_the_llm_endpoints_health_entry_says_how_its_slots_are_used() -> None:
    """/health/detailed: the `llm_endpoint` dependency carries the slots' report."""
    from shield_orchestrator.lightrag.processor import LightRAGProcessor
    from shield_orchestrator.workers.breaker import DependencyGate

    settings = Settings.load({}, DEFAULTS, BOUNDS)
    slots = LLMSlots(3, host=settings.hostname)
    slots.rate_limited(30.0)
    processor = LightRAGProcessor(settings, DependencyGate(lambda _change: None), asyncio.Lock(), slots=slots)

    async def answers(*_args: object) -> tuple[bool, int]:
        return True, 200

    async def storage() -> bool:
        return True

    processor._models_answer = answers  # type: ignore[method-assign]
    processor._storage_answers = storage  # type: ignore[method-assign]
    try:
        reports = {report.name: report for report in await processor.check()}
    finally:
        await processor.stop()
    detail = reports["llm_endpoint"].as_dict()
    assert detail["status"] == "up" and detail["http_status"] == 200
    assert (detail["slots"], detail["slots_in_use"], detail["cluster_max_async"]) == (3, 0, 0)
    assert detail["rate_limited"] == 1 and detail["backoff_seconds"] > 29
    assert "slots" not in reports["embedding_endpoint"].detail


def test_the_console_reads_the_slots_at_get_llm() -> None:
    from dataclasses import fields, replace

    from fastapi.testclient import TestClient
    from shield_orchestrator.api.app import create_app
    from shield_orchestrator.api.context import AppContext

    settings = Settings.load({"ORCHESTRATOR_API_TOKEN": "unit-token"}, DEFAULTS, BOUNDS)
    slots = LLMSlots(5, host="worker-1")
    slots.rate_limited(None)
    absent: object = None
    context = replace(AppContext(settings, *([absent] * (len(fields(AppContext)) - 1))), llm=slots)  # type: ignore[arg-type]
    client = TestClient(create_app(context))
    assert client.get("/llm").status_code == 401
    body = client.get("/llm", headers={"Authorization": "Bearer unit-token"}).json()
    assert body["host"] == "worker-1" and (body["slots"], body["slots_in_use"], body["rate_limited"]) == (5, 0, 1)
    assert body["cluster_max_async"] == 0 and body["cluster_slots_in_use"] is None
    assert body["cluster_slots_by_host"] == {} and 0 < body["backoff_seconds"] <= DEFAULT_BACKOFF_SECONDS
