"""The gate between LightRAG's storage mutations and the group commit.

Every mutation of a storage holds the gate shared; a commit holds it
exclusively, so it writes the storages as they were at one instant, with no
mutation half done. Writer-preferring: once a commit asks, new mutations wait
behind it (a steady stream of them cannot starve it). Shared holds are
re-entrant: a mutation that calls another, or a task it starts while it
holds the gate, never waits behind a commit that is waiting for that very
mutation to end (a deadlock otherwise); the nested hold counts as a holder of
its own, so a child task that outlives its parent's hold still keeps the
commit out until it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator


class _Hold:
    """One shared hold: active until it is released."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True


class RWGate:
    """A writer-preferring readers-writer gate for asyncio, re-entrant for readers.

    Owns the count of shared holders, the writer's hold and the waiters.
    Guarantees: `exclusive()` runs with no shared holder and no other writer,
    and from the moment it is asked, a new `shared()` waits until it is over,
    unless the task already holds the gate shared (or was started from inside
    such a hold while it lasts); a release never waits (safe in `finally`
    and under cancellation); `exclusive()` from inside a shared hold raises
    RuntimeError (it would wait for itself)."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._holding: contextvars.ContextVar[_Hold | None] = contextvars.ContextVar(f"rwgate-{id(self)}", default=None)

    @property
    def readers(self) -> int:
        return self._readers

    def inside(self) -> bool:
        """Whether the running task holds the gate shared (or its parent does, for it)."""
        hold = self._holding.get()
        return hold is not None and hold.active

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        if self.inside():
            self._readers += 1  # nested: the outer hold already keeps any writer out
        else:
            while self._writer or self._writers_waiting:
                await self._wait()
            self._readers += 1
        hold = _Hold()
        token = self._holding.set(hold)
        try:
            yield
        finally:
            hold.active = False
            self._holding.reset(token)
            self._readers -= 1
            self._wake()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        if self.inside():
            raise RuntimeError("an exclusive hold asked for from inside a shared hold would wait for itself")
        self._writers_waiting += 1
        try:
            while self._writer or self._readers:
                await self._wait()
        finally:
            self._writers_waiting -= 1
            self._wake()  # if this writer gave up, the readers it held back may go
        self._writer = True
        try:
            yield
        finally:
            self._writer = False
            self._wake()

    async def _wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
