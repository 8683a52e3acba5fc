"""Group commit of LightRAG's flush: nobody returns before a flush that began after
its call has completed, and callers that arrive during a flush share the next one."""

from __future__ import annotations

import asyncio

import pytest
from shield_orchestrator.lightrag.commit.flush import GroupFlush


class Storage:
    """A flush that takes a while and records when each one began and ended."""

    def __init__(self, fail_first: bool = False) -> None:
        self.spans: list[tuple[float, float]] = []
        self.fail_first = fail_first

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(0.02)
        if self.fail_first:
            self.fail_first = False
            raise OSError("disk full")
        self.spans.append((began, loop.time()))


def test_a_caller_waits_for_a_flush_that_began_after_its_call() -> None:
    storage = Storage()
    group = GroupFlush(storage.flush)
    served: list[tuple[float, float]] = []

    async def caller(delay: float) -> None:
        await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        called = loop.time()
        await group()
        served.append((called, loop.time()))

    async def scenario() -> None:
        # One flush under way, then four callers arrive while it runs.
        await asyncio.gather(caller(0), *(caller(0.005 + i * 0.002) for i in range(4)))

    asyncio.run(scenario())
    assert group.requests == 5
    assert group.flushes == 2, storage.spans  # the first, then one for the four latecomers
    for called, returned in served:
        assert any(called <= began and ended <= returned for began, ended in storage.spans)


def test_sequential_callers_each_get_their_own_flush() -> None:
    storage = Storage()
    group = GroupFlush(storage.flush)

    async def scenario() -> None:
        for _ in range(3):
            await group()

    asyncio.run(scenario())
    assert group.flushes == 3 == len(storage.spans)


def test_a_failed_flush_serves_nobody() -> None:
    storage = Storage(fail_first=True)
    group = GroupFlush(storage.flush)
    outcomes: list[str] = []

    async def caller(delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await group()
        except OSError:
            outcomes.append("raised")
        else:
            outcomes.append("flushed")

    async def scenario() -> None:
        await asyncio.gather(caller(0), caller(0.005))

    asyncio.run(scenario())
    # The first caller's flush failed and says so; the second still gets a flush of its own.
    assert outcomes == ["raised", "flushed"]
    assert len(storage.spans) == 1


@pytest.mark.parametrize("callers", [2, 8])
def test_concurrent_callers_never_share_a_flush_that_began_before_them(callers: int) -> None:
    storage = Storage()
    group = GroupFlush(storage.flush)

    async def scenario() -> None:
        await asyncio.gather(*(group() for _ in range(callers)))

    asyncio.run(scenario())
    # The first caller begins a flush before the others have called: it cannot serve
    # them, so one more flush serves all the others together.
    assert group.flushes == 2
