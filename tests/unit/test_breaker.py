"""The breakers' state machine: trip once, hold the workers, probe with backoff, resume."""

from __future__ import annotations

import asyncio

from shield_orchestrator.workers.breaker import DependencyGate, GateSettings, PauseChange


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trip_pauses_once_and_a_probe_resumes() -> None:
    changes: list[PauseChange] = []
    answers = [False, False, True]
    probes: list[float] = []

    async def scenario() -> None:
        gate = DependencyGate(changes.append, GateSettings(initial_backoff=0.01, max_backoff=0.04, jitter=lambda: 0.5))

        async def probe() -> bool:
            probes.append(asyncio.get_running_loop().time())
            return answers.pop(0)

        gate.register("llm_endpoint", probe)
        stop = asyncio.Event()
        runner = asyncio.create_task(gate.run(stop))
        gate.trip("llm_endpoint", "APIConnectionError: refused")
        gate.trip("llm_endpoint", "APIConnectionError: refused again")
        assert gate.paused and [b.name for b in gate.open_breakers()] == ["llm_endpoint"]
        assert await asyncio.wait_for(gate.wait_closed(stop), 5) is True
        assert not gate.paused
        stop.set()
        await runner

    asyncio.run(scenario())
    assert [(c.dependency, c.paused) for c in changes] == [("llm_endpoint", True), ("llm_endpoint", False)]
    assert changes[0].reason == "APIConnectionError: refused"
    assert len(probes) == 3
    assert probes[2] - probes[1] >= probes[1] - probes[0] - 0.005  # backoff grows


def test_retry_after_defers_the_first_probe() -> None:
    clock = Clock()
    gate = DependencyGate(lambda _change: None, GateSettings(initial_backoff=0.5, clock=clock, jitter=lambda: 0.5))

    async def never() -> bool:
        return False

    async def scenario() -> None:
        gate.register("llm_endpoint", never)
        gate.trip("llm_endpoint", "RateLimitError", retry_after=2.0)
        [breaker] = gate.open_breakers()
        assert breaker.retry_at == 102.0
        gate.trip("llm_endpoint", "RateLimitError", retry_after=5.0)
        assert breaker.retry_at == 105.0

    asyncio.run(scenario())


def test_stop_releases_waiting_workers() -> None:
    async def scenario() -> bool:
        gate = DependencyGate(lambda _change: None)

        async def never() -> bool:
            return False

        gate.register("lightrag_storage", never)
        gate.trip("lightrag_storage", "disk full")
        stop = asyncio.Event()
        waiter = asyncio.create_task(gate.wait_closed(stop))
        await asyncio.sleep(0.01)
        stop.set()
        return await asyncio.wait_for(waiter, 2)

    assert asyncio.run(scenario()) is False


def test_unknown_dependency_does_not_pause() -> None:
    async def scenario() -> bool:
        gate = DependencyGate(lambda _change: None)
        gate.trip("nothing", "whatever")
        return gate.paused

    assert asyncio.run(scenario()) is False
