"""The LLM's slots against real servers (lightrag/llm/slots.py).

On a real Redis, the cluster's slots (a sorted set of leases, llm_slots.lua):
two "hosts" (two ClusterSlots on their own clients, as two processes would be)
never hold more than the cap between them; a holder killed -9 mid-call frees
its slot when its lease lapses; a long call keeps its slot by renewing it;
releasing is idempotent and frees nobody else's slot; with Redis unreachable a
call waits, then gives up with a transient failure of the LLM.

Against the lab/test LLM stand-in (roles/lab_llm_standin, not a language model)
told to answer 429 with Retry-After: the host backs off, so its next chat call
waits the Retry-After out instead of meeting the 429 too, and the 429 is counted.

The whole service with a cluster cap: its chat calls take cluster slots, and
GET /llm, /health/detailed and /metrics say so.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from redis.asyncio import Redis

from tests.service.conftest import ServiceFactory
from tests.support.helpers import ingest, make_chunks, wait_job
from tests.support.servers import RedisServer, Standin, free_port, wait_until

DIM = 64


@pytest.fixture
def cap(rendered: Path) -> ModuleType:
    """lightrag/llm/slots.py of the package as the role renders it."""
    sys.path.insert(0, str(rendered))
    from shield_orchestrator.lightrag.llm import slots as llm_cap

    return llm_cap


@pytest.fixture
async def clients(redis_server: RedisServer) -> AsyncIterator[tuple[Redis, Redis, str]]:
    """Two clients (two hosts) and a key of the test's own."""
    first = Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    second = Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    key = f"shield:test:llm:slots:{uuid.uuid4().hex[:8]}"
    yield first, second, key
    await first.delete(key)
    await first.aclose()
    await second.aclose()


async def test_two_hosts_never_hold_more_than_the_cap(cap: ModuleType, clients: tuple[Redis, Redis, str]) -> None:
    redis_a, redis_b, key = clients
    waits: list[float] = []
    host_a = cap.ClusterSlots(redis_a, key, cap=3, owner="host-a:1", wait_seconds=30, on_wait=waits.append)
    host_b = cap.ClusterSlots(redis_b, key, cap=3, owner="host-b:2", wait_seconds=30, on_wait=waits.append)
    holding, most, most_in_redis = 0, 0, 0

    async def chat(slots: object) -> None:
        nonlocal holding, most, most_in_redis
        async with slots.slot():  # type: ignore[attr-defined]
            holding += 1
            most = max(most, holding)
            most_in_redis = max(most_in_redis, await redis_a.zcard(key))
            await asyncio.sleep(random.uniform(0.02, 0.08))
            holding -= 1

    await asyncio.wait_for(asyncio.gather(*(chat(host_a if n % 2 else host_b) for n in range(24))), 60)
    assert most == 3, "the cap was exceeded" if most > 3 else "the calls never filled the cap"
    assert most_in_redis <= 3
    assert await redis_a.zcard(key) == 0, "every slot was released"
    assert sum(waits) > 0, "24 calls on 3 slots: some waited, and the wait was counted"


async def test_the_report_reads_every_hosts_leases(cap: ModuleType, clients: tuple[Redis, Redis, str]) -> None:
    from shield_orchestrator.metrics import Metrics

    redis_a, redis_b, key = clients
    host_a = cap.ClusterSlots(redis_a, key, cap=4, owner="host-a:1", wait_seconds=5)
    host_b = cap.ClusterSlots(redis_b, key, cap=4, owner="host-b:2", wait_seconds=5)
    metrics = Metrics()
    slots = cap.LLMSlots(2, host_a, metrics, host="host-a")
    tokens = [await host_a.acquire(), await host_a.acquire(), await host_b.acquire()]
    report = await slots.report()
    assert (report.cluster_max_async, report.cluster_slots_in_use, report.cluster_slots_this_host) == (4, 3, 2)
    assert report.cluster_slots_by_host == {"host-a": 2, "host-b": 1}
    await slots.refresh_metrics()
    assert metrics.registry.get_sample_value("shield_llm_cluster_slots_in_use") == 3
    assert metrics.registry.get_sample_value("shield_llm_cluster_max_async") == 4
    for token in tokens:
        await host_a.release(token)
    assert (await slots.report()).cluster_slots_in_use == 0


HOLDER = """
import asyncio, sys
from redis.asyncio import Redis
from shield_orchestrator.lightrag.llm.slots import ClusterSlots

async def main() -> None:
    redis = Redis(host="127.0.0.1", port=int(sys.argv[1]), decode_responses=True)
    slots = ClusterSlots(redis, sys.argv[2], cap=2, owner="host-dead:1", wait_seconds=5, lease_seconds=1)
    async with slots.slot():
        print("held", flush=True)
        await asyncio.sleep(3600)  # a call that never ends: the process is killed first

asyncio.run(main())
"""


@pytest.fixture
def holder(rendered: Path, redis_server: RedisServer) -> Iterator[subprocess.Popen[str]]:
    key = f"shield:test:llm:slots:{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(redis_server.port), key],
        env={**os.environ, "PYTHONPATH": str(rendered)},
        stdout=subprocess.PIPE,
        text=True,
    )
    process.key = key  # type: ignore[attr-defined]
    yield process
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


async def test_a_holder_killed_mid_call_frees_its_slot_when_its_lease_lapses(
    cap: ModuleType, redis_server: RedisServer, holder: subprocess.Popen[str]
) -> None:
    assert holder.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 30)
    assert line.strip() == "held"
    redis = Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    key: str = holder.key  # type: ignore[attr-defined]
    # The other slot of the two is held by a host that lives on (and keeps the set alive).
    alive = cap.ClusterSlots(redis, key, cap=2, owner="host-alive:3", wait_seconds=5, lease_seconds=1)
    try:
        async with alive.slot():
            await asyncio.sleep(1.5)  # longer than the lease: the holder renews it while it lives
            assert await redis.zcard(key) == 2
            os.kill(holder.pid, signal.SIGKILL)
            killed = time.monotonic()
            survivor = cap.ClusterSlots(redis, key, cap=2, owner="host-b:2", wait_seconds=10, lease_seconds=1)
            token = await survivor.acquire()
            took = time.monotonic() - killed
            assert took <= 2.0, f"the dead holder's slot came free after {took:.1f} s (lease 1 s)"
            assert await survivor.release(token)
    finally:
        await redis.delete(key)
        await redis.aclose()


async def test_a_long_call_keeps_its_slot_by_renewing_it(cap: ModuleType, clients: tuple[Redis, Redis, str]) -> None:
    redis_a, redis_b, key = clients
    host_a = cap.ClusterSlots(redis_a, key, cap=1, owner="host-a:1", wait_seconds=5, lease_seconds=1)
    host_b = cap.ClusterSlots(redis_b, key, cap=1, owner="host-b:2", wait_seconds=2.5, lease_seconds=1)
    async with host_a.slot():
        started = time.monotonic()
        with pytest.raises(cap.LLMSlotUnavailable, match="stayed taken") as caught:
            await host_b.acquire()  # 2.5 s, past the 1 s lease: only the renewal keeps host b out
        assert time.monotonic() - started >= 2.4
        released = time.monotonic()
    token = await host_b.acquire()
    assert time.monotonic() - released < 1.0
    assert await host_b.release(token)

    from shield_orchestrator.workers.faults import LLM, classify_exception

    failure = classify_exception(caught.value, LLM)
    assert failure.transient and failure.dependency == LLM


async def test_release_is_idempotent_and_frees_only_its_own_slot(
    cap: ModuleType, clients: tuple[Redis, Redis, str]
) -> None:
    redis_a, redis_b, key = clients
    host_a = cap.ClusterSlots(redis_a, key, cap=2, owner="host-a:1", wait_seconds=5, lease_seconds=1)
    host_b = cap.ClusterSlots(redis_b, key, cap=2, owner="host-b:2", wait_seconds=5)
    mine, theirs = await host_a.acquire(), await host_b.acquire()
    assert await host_a.release(mine) is True
    assert await host_a.release(mine) is False
    assert await redis_a.zrange(key, 0, -1) == [theirs]
    lapsed = await host_a.acquire()
    await asyncio.sleep(1.2)  # its lease lapses: nobody renews it
    assert await host_a.release(lapsed) is False
    assert await redis_a.zrange(key, 0, -1) == [theirs]
    assert await host_b.release(theirs) is True


async def test_without_redis_a_call_waits_then_fails_transient(cap: ModuleType) -> None:
    """Fail closed: no slot is taken while Redis does not answer; the wait is bounded."""
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    slots = cap.ClusterSlots(dead, "shield:llm:slots", cap=2, owner="host-a:1", wait_seconds=1.5)
    started = time.monotonic()
    with pytest.raises(cap.LLMSlotUnavailable, match="Redis") as caught:
        await slots.acquire()
    assert 1.4 <= time.monotonic() - started < 5
    report = await cap.LLMSlots(2, slots).report()
    assert report.cluster_error and report.cluster_slots_in_use is None
    await dead.aclose()

    from shield_orchestrator.workers.faults import LLM, classify_message

    failure = classify_message(str(caught.value))
    assert failure.transient and failure.dependency == LLM


# --- 429 with Retry-After, against the lab/test stand-in ---------------------------------


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """The lab/test stand-in for the LLM endpoint (not a language model), of this module's own."""
    server = Standin.start(tmp_path_factory.mktemp("standin-429"), embedding_dim=DIM)
    yield server
    server.stop()


async def test_a_429_backs_the_host_off_and_is_counted(cap: ModuleType, standin: Standin) -> None:
    from shield_orchestrator.lightrag.clients import Endpoint, llm_function
    from shield_orchestrator.metrics import Metrics
    from shield_orchestrator.workers.breaker import DependencyGate
    from shield_orchestrator.workers.faults import LLM
    from shield_orchestrator.workers.stalls import CallWatch

    metrics = Metrics()
    slots = cap.LLMSlots(4, metrics=metrics)
    endpoint = Endpoint(
        name=LLM,
        base_url=standin.base_url,
        api_key="",
        timeout=30,
        concurrency=4,
        watch=CallWatch(60, {LLM: standin.base_url}),
        hooks=slots.http_hooks(),
    )
    complete = llm_function(endpoint, "lab-standin-chat", DependencyGate(lambda _change: None), slots)
    await complete("warm up")  # LightRAG's utilities imported, a connection open
    try:
        # Every /v1/ route answers 429 (Retry-After: 2) for 1 s.
        await asyncio.to_thread(standin.outage, 429, 1.0, 2)
        first = asyncio.create_task(complete("The first call meets the 429; the SDK retries it after 2 s."))
        await asyncio.to_thread(wait_until, lambda: slots.rate_limited_total >= 1, 10, "the first 429")
        met = time.monotonic()
        assert (await slots.report()).backoff_seconds > 1
        # Sent at once, this call would meet the 429 too (the outage lasts 1 s);
        # the back-off holds it until the Retry-After has passed.
        second = await complete("The second call starts during the back-off.")
        waited = time.monotonic() - met
        assert second and await first
    finally:
        await endpoint.close()
    assert waited >= 1.5, f"the next call went out {waited:.2f} s after the 429 (Retry-After: 2 s)"
    assert slots.rate_limited_total == 1, "the next call met the 429 as well: it did not wait the back-off out"
    assert metrics.registry.get_sample_value("shield_llm_rate_limited_total") == 1


# --- the service ---------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    return float(line.split()[1])


def test_the_services_chat_calls_take_cluster_slots_and_every_view_says_so(service_factory: ServiceFactory) -> None:
    svc = service_factory(llm_cluster_max_async=2, llm_max_async=3, batch_size=5).start()
    client = svc.client()
    job = wait_job(client, ingest(client, make_chunks(6, prefix="llmcap"))["job_id"])
    assert job["status"] == "completed", job
    text = client.get("/metrics").text
    # Every cluster slot taken counts its wait, however short: the calls took slots.
    assert metric(text, "shield_llm_cluster_slot_wait_seconds_total") > 0
    assert (metric(text, "shield_llm_cluster_max_async"), metric(text, "shield_llm_slots")) == (2, 3)
    assert metric(text, "shield_llm_cluster_slots_in_use") == 0 == metric(text, "shield_llm_slots_in_use")
    view = client.get("/llm").json()
    assert (view["slots"], view["cluster_max_async"], view["cluster_slots_in_use"]) == (3, 2, 0), view
    assert view["host"] == "testhost" and view["rate_limited"] == 0 and view["backoff_seconds"] == 0, view
    llm = client.get("/health/detailed").json()["dependencies"]["llm_endpoint"]
    assert llm["status"] == "up" and (llm["slots"], llm["cluster_max_async"], llm["cluster_slots_in_use"]) == (3, 2, 0)
