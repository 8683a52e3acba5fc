"""Liveness: every consumer's heartbeat, and the takeover of what silent ones hold.

Each process beats for its workers: a Redis key per consumer with a short TTL,
refreshed every third of it. A consumer whose key has lapsed is dead (its host
or process is gone): its pending entries move at once to a live worker of this
process (claim_dead.lua checks the heartbeat and claims atomically). A live
consumer keeps its entries however slow it is; it enforces the task timeout
on itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from .keys import RedisKeys
from .redis_text import StreamEntry
from .stream import IngestionStream

log = logging.getLogger("shield_orchestrator.workers")

CLAIM_BATCH = 100


@dataclass(frozen=True)
class WorkerState:
    """What a heartbeat says about a worker."""

    consumer: str
    state: str
    tasks_done: int


class Heartbeats:
    """This process's consumers' heartbeats: a key per consumer with a TTL of
    heartbeat_ttl_seconds, rewritten every third of it. A lapsed key means its consumer
    is gone, and what it holds may be taken over."""

    def __init__(self, redis: Redis, keys: RedisKeys, *, host: str, ttl_seconds: float) -> None:
        self._redis = redis
        self._keys = keys
        self._host = host
        self._ttl_ms = int(ttl_seconds * 1000)
        self.interval = ttl_seconds / 3
        self.last_beat: float | None = None

    async def beat(self, workers: list[WorkerState]) -> None:
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            for worker in workers:
                value = {
                    "host": self._host,
                    "pid": os.getpid(),
                    "state": worker.state,
                    "tasks_done": worker.tasks_done,
                    "at": round(now, 3),
                }
                pipe.set(self._keys.heartbeat(worker.consumer), json.dumps(value), px=self._ttl_ms)
            await pipe.execute()
        self.last_beat = time.monotonic()

    async def forget(self, consumers: list[str]) -> None:
        """A clean stop: the heartbeats go at once (what such a consumer holds is
        taken over only once it is silent, i.e. now)."""
        if consumers:
            await self._redis.delete(*[self._keys.heartbeat(name) for name in consumers])

    async def read(self, consumers: list[str]) -> dict[str, dict[str, object]]:
        """The heartbeats of these consumers (absent: silent)."""
        if not consumers:
            return {}
        values = await self._redis.mget([self._keys.heartbeat(name) for name in consumers])
        return {name: json.loads(value) for name, value in zip(consumers, values, strict=True) if value}

    async def run(self, stop: asyncio.Event, workers: Callable[[], list[WorkerState]]) -> None:
        while not stop.is_set():
            try:
                await self.beat(workers())
            except RedisError as exc:
                log.warning("heartbeat not written (%s); retrying in %.1fs", exc, self.interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)


class Reclaimer:
    """Moves the entries of silent consumers to this process's workers."""

    def __init__(self, stream: IngestionStream, heartbeats: Heartbeats, *, interval: float) -> None:
        self._stream = stream
        self._heartbeats = heartbeats
        self._interval = interval
        self.claimed_total = 0
        self.last_claim: dict[str, object] = {}

    async def run(self, stop: asyncio.Event, inboxes: Mapping[str, asyncio.Queue[list[StreamEntry]]]) -> None:
        owners = itertools.cycle(sorted(inboxes))
        while not stop.is_set():
            try:
                await self.scan(inboxes, owners)
            except ResponseError as exc:
                log.debug("reclaim scan skipped: %s", exc)  # the group is being recreated
            except RedisError as exc:
                log.warning("reclaim scan failed (%s); next in %.1fs", exc, self._interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)

    async def scan(self, inboxes: Mapping[str, asyncio.Queue[list[StreamEntry]]], owners: itertools.cycle[str]) -> int:
        """One pass: claim from every silent consumer that holds entries; drop silent
        ones that hold nothing. Returns how many entries were claimed."""
        consumers = [info for info in await self._stream.consumers() if info.name not in inboxes]
        alive = await self._heartbeats.read([info.name for info in consumers])
        claimed = 0
        for info in consumers:
            if info.name in alive:
                continue
            if info.pending == 0:
                await self._stream.forget_consumer(info.name)
                log.info("removed silent consumer %s (it held nothing) from the group", info.name)
                continue
            owner = next(owners)
            entries = await self._stream.claim_from_silent(info.name, owner, CLAIM_BATCH)
            if entries:
                claimed += len(entries)
                self._record(info.name, owner, len(entries))
                await inboxes[owner].put(entries)
        self.claimed_total += claimed
        return claimed

    def _record(self, silent: str, owner: str, count: int) -> None:
        log.warning(
            "consumer=%s took over %d entries from %s, whose heartbeat has lapsed (its host or process is gone)",
            owner,
            count,
            silent,
        )
        self.last_claim = {"from": silent, "to": owner, "entries": count, "at": time.time()}
