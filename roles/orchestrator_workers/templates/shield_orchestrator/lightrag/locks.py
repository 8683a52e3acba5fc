"""The workspace lock: one LightRAG pipeline at a time per workspace, across hosts.

LightRAG's pipeline takes every PENDING/PROCESSING document of the shared
doc-status table: two hosts running it at once would reset and process each
other's in-flight documents. The feeder holds this lock for a session: from its
first admission until nothing is in flight, or, when another host waits
(`contended`), until its session has run SESSION_SECONDS and drained.

- One host (local storages): an asyncio lock; nothing else writes the workspace.
- Several hosts (PostgreSQL storages): a lease in Redis. SET NX PX takes it with
  a token of the holder's own; the holder renews it every third of the lease,
  and releases it with a compare-and-delete (lease.lua). A host that dies
  releases it when the lease lapses (seconds). Every take increments a fencing
  counter (`fence`), and PostgreSQL checks it (fence.py): the host that takes
  the lease raises the workspace's writer fence to its token, and every write
  of LightRAG's PostgreSQL storages is refused once a newer token is there. A
  holder that stalls past its lease (a GC pause, a VM stall, a partition)
  therefore writes nothing after another host took over: its first write is
  refused, it ends its session, and its documents come back.
- Fairness: a host that waits for the lock marks it contended; the holder,
  when it releases a contended lock, lets the others try before it takes it
  again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from types import TracebackType

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..queue import lua

log = logging.getLogger("shield_orchestrator.lock")

POLL_SECONDS = 0.1
YIELD_SECONDS = 0.3


class RedisLeaseLock:
    """The workspace lock across hosts: a lease in Redis.

    Owns the lease key (its token while held), the task that renews it, the
    fencing counter and the contended mark. Guarantees: one holder at a time
    while Redis keeps the key; the lease is renewed every third of its TTL while
    held and released by compare-and-delete on exit, and lapses within its TTL
    when the holder dies; every take increments `fence`; a holder that lets a
    contended lock go waits before it takes it again. It cannot stop a holder
    that stalls past its lease mid-round (LightRAG's storages check no fence):
    that lapse is logged with the fence."""

    def __init__(self, redis: Redis, key: str, *, ttl_seconds: float) -> None:
        self._redis = redis
        self._key = key
        self._ttl_ms = int(ttl_seconds * 1000)
        self._token = ""
        self._renewer: asyncio.Task[None] | None = None
        self._release_script = lua.register(redis, "lease", __file__)
        self._advance_script = lua.register(redis, "fence_counter", __file__)
        self.fence = 0
        self._released_contended_at = 0.0

    @property
    def owner(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    async def __aenter__(self) -> RedisLeaseLock:
        if time.monotonic() - self._released_contended_at < YIELD_SECONDS:
            await asyncio.sleep(YIELD_SECONDS)
        token = f"{self.owner}:{uuid.uuid4().hex}"
        waited = 0.0
        while not await self._redis.set(self._key, token, nx=True, px=self._ttl_ms):
            await self._redis.set(f"{self._key}:contended", "1", px=self._ttl_ms)
            await asyncio.sleep(POLL_SECONDS)
            waited += POLL_SECONDS
        self._token = token
        self.fence = int(await self._redis.incr(f"{self._key}:fence"))
        if waited >= 1:
            log.info("workspace lock taken after waiting %.1fs (fence %d)", waited, self.fence)
        self._renewer = asyncio.create_task(self._renew(token), name="workspace-lock-renewer")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        try:
            contended = await self._redis.delete(f"{self._key}:contended")
            await self._release_script(keys=[self._key], args=["release", self._token, 0])
        except RedisError as exc_release:
            log.warning("workspace lock not released (%s); it lapses by itself", exc_release)
            return
        if contended:
            self._released_contended_at = time.monotonic()

    async def contended(self) -> bool:
        """Whether another host waits for the lock (the feeder then ends its session)."""
        try:
            return bool(await self._redis.exists(f"{self._key}:contended"))
        except RedisError:
            return False

    async def advance_fence(self, at_least: int) -> None:
        """Raise the fencing counter to `at_least` (never lower): PostgreSQL's writer
        fence is ahead of it when Redis lost increments (a failover to a replica
        that lagged, a flushed database), and every take would be refused."""
        await self._advance_script(keys=[f"{self._key}:fence"], args=[at_least])

    async def _renew(self, token: str) -> None:
        period = self._ttl_ms / 3000
        while True:
            await asyncio.sleep(period)
            try:
                kept = await self._release_script(keys=[self._key], args=["renew", token, self._ttl_ms])
            except RedisError as exc:
                log.warning("workspace lock not renewed (%s); retrying", exc)
                continue
            if not kept:
                log.error(
                    "workspace lock lost (fence %d): its lease lapsed while this host held it; "
                    "no new round starts until it is taken again",
                    self.fence,
                )
                return
