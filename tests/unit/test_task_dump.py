"""SIGUSR1's task dump (service.dump_tasks): each task down to the coroutine it
waits in, not only its outermost frame."""

from __future__ import annotations

import asyncio
import logging

import pytest
from shield_orchestrator.service import await_chain, dump_tasks


async def innermost(event: asyncio.Event) -> None:
    await event.wait()


async def middle(event: asyncio.Event) -> None:
    await innermost(event)


async def outer(event: asyncio.Event) -> None:
    await middle(event)


async def test_the_dump_follows_each_task_to_the_coroutine_it_waits_in(caplog: pytest.LogCaptureFixture) -> None:
    event = asyncio.Event()
    task = asyncio.create_task(outer(event), name="probe")
    await asyncio.sleep(0)
    chain = await_chain(task)
    assert [line.rsplit(" in ", 1)[-1] for line in chain[:3]] == ["outer", "middle", "innermost"]
    assert chain[3].endswith(" in wait") and chain[-1].startswith("  awaiting ")  # Event.wait, then its future
    with caplog.at_level(logging.WARNING, logger="shield_orchestrator"):
        dump_tasks()
    dumped = next(record.getMessage() for record in caplog.records if record.getMessage().startswith("task probe:"))
    assert "in innermost" in dumped
    event.set()
    await task
    assert await_chain(task) == []  # a finished task waits nowhere
