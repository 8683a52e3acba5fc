"""Circuit breakers: pause the pool while a dependency is down, resume by itself.

One breaker per dependency (the LLM endpoint, the embedding endpoint,
LightRAG's storages). A transient failure trips it open: the workers stop
taking new entries and keep what they hold pending, and a probe asks the
dependency again with exponential backoff and jitter (never before a
Retry-After it was given). When the probe answers, the breaker closes and the
workers go on. Each change of state is reported once, through `on_change`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("shield_orchestrator.breaker")

Probe = Callable[[], Awaitable[bool]]
PROBE_TIMEOUT_SECONDS = 5.0


@dataclass
class Breaker:
    """One dependency's breaker: closed while `opened_at` is None. Open, it keeps why and
    since when, and when its probe may ask next (backoff doubling up to the gate's
    maximum, never before a Retry-After it was given)."""

    name: str
    probe: Probe
    opened_at: float | None = None  # monotonic; None while closed
    since: str = ""  # wall clock, ISO 8601
    reason: str = ""
    retry_at: float = 0.0
    backoff: float = 0.0
    probes: int = 0

    @property
    def open(self) -> bool:
        return self.opened_at is not None


@dataclass(frozen=True)
class PauseChange:
    """A breaker opened (paused=True) or closed again (paused=False)."""

    dependency: str
    paused: bool
    since: str
    reason: str
    paused_seconds: float = 0.0


@dataclass
class GateSettings:
    """The probes' timing: the first backoff and its maximum, and the clock and jitter
    (tests inject their own)."""

    initial_backoff: float = 0.5
    max_backoff: float = 5.0
    clock: Callable[[], float] = time.monotonic
    jitter: Callable[[], float] = field(default=random.random)


class DependencyGate:
    """The pool's breakers. Workers ask `wait_closed()` before taking work."""

    def __init__(self, on_change: Callable[[PauseChange], None], settings: GateSettings | None = None) -> None:
        self._on_change = on_change
        self._s = settings or GateSettings()
        self._breakers: dict[str, Breaker] = {}
        self._closed = asyncio.Event()
        self._closed.set()
        self._tripped = asyncio.Event()

    def register(self, name: str, probe: Probe) -> None:
        self._breakers.setdefault(name, Breaker(name, probe))

    @property
    def dependencies(self) -> frozenset[str]:
        return frozenset(self._breakers)

    @property
    def paused(self) -> bool:
        return not self._closed.is_set()

    def open_breakers(self) -> list[Breaker]:
        return [breaker for breaker in self._breakers.values() if breaker.open]

    def trip(self, name: str, reason: str, retry_after: float | None = None) -> None:
        """A transient failure of `name`: open its breaker (idempotent while open)."""
        breaker = self._breakers.get(name)
        if breaker is None:
            log.warning("transient failure of %s, which has no breaker: %s", name, reason[:300])
            return
        now = self._s.clock()
        earliest = now + (retry_after or 0.0)
        if breaker.open:
            breaker.retry_at = max(breaker.retry_at, earliest)
            return
        breaker.opened_at = now
        breaker.since = datetime.now(UTC).isoformat()
        breaker.reason = reason[:500]
        breaker.backoff = self._s.initial_backoff
        breaker.retry_at = max(now + breaker.backoff, earliest)
        self._closed.clear()
        self._tripped.set()
        self._on_change(PauseChange(name, True, breaker.since, breaker.reason))

    async def wait_closed(self, stop: asyncio.Event) -> bool:
        """Until every breaker is closed (True) or `stop` is set (False)."""
        if self._closed.is_set():
            return True
        closed = asyncio.ensure_future(self._closed.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            stopping.cancel()
        return self._closed.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        """Probe the open breakers until `stop` is set."""
        while not stop.is_set():
            due = self.open_breakers()
            if not due:
                self._tripped.clear()
                await _first(self._tripped.wait(), stop.wait())
                continue
            wait = min(breaker.retry_at for breaker in due) - self._s.clock()
            if wait > 0:
                await _first(asyncio.sleep(wait), stop.wait())
                continue
            for breaker in due:
                if breaker.retry_at <= self._s.clock():
                    await self._probe(breaker)

    async def _probe(self, breaker: Breaker) -> None:
        breaker.probes += 1
        try:
            answered = await asyncio.wait_for(breaker.probe(), PROBE_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - a probe that fails in any way says "still down"
            log.debug("probe of %s failed: %s", breaker.name, exc)
            answered = False
        now = self._s.clock()
        if not answered:
            breaker.backoff = min(breaker.backoff * 2, self._s.max_backoff)
            breaker.retry_at = now + breaker.backoff * (0.5 + self._s.jitter())
            return
        paused_seconds = round(now - (breaker.opened_at or now), 1)
        change = PauseChange(breaker.name, False, breaker.since, breaker.reason, paused_seconds)
        breaker.opened_at, breaker.since, breaker.reason, breaker.probes = None, "", "", 0
        if not self.open_breakers():
            self._closed.set()
        self._on_change(change)


async def _first(*awaitables: Awaitable[object]) -> None:
    """Wait for the first of the awaitables; cancel the others."""
    tasks = [asyncio.ensure_future(item) for item in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@dataclass(frozen=True)
class DependencyReport:
    """The health of one thing a component depends on."""

    name: str
    up: bool
    required: bool
    detail: dict[str, str | int | float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"status": "up" if self.up else "down", "required": self.required, **self.detail}
