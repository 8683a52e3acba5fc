"""The LLM's slots: this host's, the cluster's, and the back-off after a 429.

Every chat call LightRAG makes goes through `LLMSlots.call()` (clients.py), in
this order, so that a host never holds a cluster slot while it waits on itself:

1. a slot of this host (`llm_max_async`). LightRAG's queues give each kind of
   call (extraction, keywords, queries) that many; this holds the host to it.
2. the host's 429 back-off. When the LLM endpoint answers 429, no chat request
   leaves this host until the back-off has passed: its Retry-After (or
   Retry-After-Ms), at most MAX_BACKOFF_SECONDS, DEFAULT_BACKOFF_SECONDS when
   it gives none. New calls wait here, before taking a cluster slot; the SDK's
   own retries of calls under way (it retries a 429 SDK_RETRIES times) wait in
   the client's request hook, inside the slots their call holds. Every 429
   answer counts, those the SDK retried included. A call whose retries all end
   in 429 fails as before: transient, and the LLM breaker pauses the pool
   until its Retry-After (workers/faults.py, workers/breaker.py).
3. a slot of the cluster, when `llm_cluster_max_async` > 0 (ClusterSlots): a
   lease in a Redis sorted set that every host sharing the Redis uses.

Embedding calls take none of these: they have LightRAG's own queue
(`embedding_max_async`) and are not capped across the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx2
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ...metrics import Metrics
from ...queue import lua
from ...queue.keys import RedisKeys
from ...settings import Settings
from ...workers.faults import LLM_SLOT_SIGNATURE, retry_after_of

log = logging.getLogger("shield_orchestrator.llm_slots")

LEASE_SECONDS = 15.0  # a cluster slot's lease, renewed every third of it while its call runs
POLL_SECONDS = 0.1  # mean pause between two asks for a cluster slot (jittered 0.5x to 1.5x)
REDIS_RETRY_SECONDS = 1.0  # pause before asking again when Redis did not answer
MAX_BACKOFF_SECONDS = 60.0
DEFAULT_BACKOFF_SECONDS = 2.0

HttpHook = Callable[..., Awaitable[None]]


class LLMSlotUnavailable(RuntimeError):
    """A chat call found no cluster slot within its wait: every slot stayed taken, or
    Redis did not answer. Transient: its document waits for a later round."""


def backoff_seconds(retry_after: float | None) -> float:
    """How long this host holds its chat calls after a 429 that asked for `retry_after`."""
    if retry_after is None:
        return DEFAULT_BACKOFF_SECONDS
    return min(max(retry_after, 0.0), MAX_BACKOFF_SECONDS)


def host_of(token: str) -> str:
    """The host of a holder token ("<host>:<pid>:<uuid>")."""
    return token.rsplit(":", 2)[0]


class ClusterSlots:
    """The cluster's cap on chat calls: leases in one Redis sorted set (llm_slots.lua).

    Owns this process's holder tokens (`held`) and, per slot held, the task that
    renews its lease. Guarantees, while Redis keeps the set: at most `cap` leases
    live at once across every process asking with that cap; a lease is renewed
    every third of `lease_seconds` while its call runs and released when it ends
    (releasing is idempotent: again, or after the lease lapsed, changes nothing
    and frees nobody else's), and lapses within `lease_seconds` when its holder
    dies. Waiting: this process's waiters queue in order behind one lock and only
    the first asks Redis, every POLL_SECONDS on average (jittered); between hosts
    whichever asks first after a release gets the slot (fair on average, not
    first come first served). Fail closed: while Redis does not answer no slot is
    taken (the call waits, asking every REDIS_RETRY_SECONDS). A wait ends with
    LLMSlotUnavailable after `wait_seconds`."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        *,
        cap: int,
        owner: str,
        wait_seconds: float,
        lease_seconds: float = LEASE_SECONDS,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.key = key
        self.cap = cap
        self.owner = owner
        self.wait_seconds = wait_seconds
        self._lease_ms = int(lease_seconds * 1000)
        self._script = lua.register(redis, "llm_slots", __file__)
        self._turn = asyncio.Lock()
        self._on_wait = on_wait
        self._redis_error = ""
        self.held: set[str] = set()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[str]:
        """Hold a slot while the block runs (renewed meanwhile, released after)."""
        token = await self.acquire()
        renewer = asyncio.create_task(self._renew(token), name="llm-slot-renewer")
        try:
            yield token
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self.release(token)

    async def acquire(self) -> str:
        """A slot's token, once one is free; LLMSlotUnavailable after `wait_seconds`."""
        token = f"{self.owner}:{uuid.uuid4().hex}"
        started = time.monotonic()
        try:
            async with self._turn:
                while not await self._ask("acquire", token):
                    waited = time.monotonic() - started
                    if waited >= self.wait_seconds:
                        raise LLMSlotUnavailable(self._unavailable(waited))
                    pause = REDIS_RETRY_SECONDS if self._redis_error else POLL_SECONDS * (0.5 + random.random())  # noqa: S311
                    await asyncio.sleep(min(pause, self.wait_seconds - waited))
        finally:
            if self._on_wait is not None:
                self._on_wait(time.monotonic() - started)
        self.held.add(token)
        return token

    async def release(self, token: str) -> bool:
        """Let the slot go; whether `token` held one (False: released already, or lapsed)."""
        self.held.discard(token)
        try:
            return bool(await self._script(keys=[self.key], args=["release", token]))
        except RedisError as exc:
            log.warning("LLM slot not released (%s); its lease lapses by itself", exc)
            return False

    async def holders(self) -> list[str]:
        """The tokens holding a slot now, on every host (RedisError when Redis does not answer)."""
        return [str(token) for token in await self._script(keys=[self.key], args=["holders"])]

    async def _ask(self, op: str, token: str) -> int:
        """The script's answer; 0 while Redis does not answer (logged once per outage)."""
        try:
            answer = int(await self._script(keys=[self.key], args=[op, token, self.cap, self._lease_ms]))
        except RedisError as exc:
            if not self._redis_error:
                log.warning("LLM slots: Redis does not answer (%s); chat calls wait for it", exc)
            self._redis_error = f"{type(exc).__name__}: {exc}"[:200]
            return 0
        if self._redis_error:
            log.info("LLM slots: Redis answers again")
            self._redis_error = ""
        return answer

    def _unavailable(self, waited: float) -> str:
        if self._redis_error:
            reason = f"Redis, which holds the cluster's LLM slots, did not answer ({self._redis_error})"
        else:
            reason = f"the cluster's {self.cap} slots stayed taken (orchestrator_workers_llm_cluster_max_async)"
        return f"{LLM_SLOT_SIGNATURE} after {waited:.0f} s: {reason}"

    async def _renew(self, token: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            answer = await self._ask("renew", token)
            if answer == 0 and not self._redis_error:
                log.error(
                    "LLM slot lost: its lease lapsed during the call and every slot is taken; the call goes on "
                    "outside the cap"
                )
                return
            if answer == 2:
                log.warning("LLM slot taken again after its lease had lapsed during the call")


@dataclass
class SlotsReport:
    """What LLMSlots reports (/health/detailed, GET /llm): this host's slots and
    back-off, and the cluster's cap with its leases by host."""

    host: str
    slots: int
    slots_in_use: int
    cluster_max_async: int
    rate_limited: int
    backoff_seconds: float
    last_rate_limited_at: str | None
    cluster_slots_in_use: int | None = None
    cluster_slots_this_host: int | None = None
    cluster_slots_by_host: dict[str, int] = field(default_factory=dict)
    cluster_error: str | None = None

    def flat(self) -> dict[str, str | int | float]:
        """The report without the by-host table and the unset fields (a dependency's detail)."""
        return {
            key: value
            for key, value in vars(self).items()
            if key not in ("host", "cluster_slots_by_host") and value is not None
        }


class LLMSlots:
    """This host's LLM slots, its 429 back-off and, when capped, its share of the cluster's slots.

    Owns the host semaphore (`slots` chat calls at once), the back-off deadline
    and its counters, and the ClusterSlots (None: no cap). Guarantees: a chat call
    in `call()` holds a host slot first, then waits out the back-off, then takes
    a cluster slot, and lets them go in reverse order however it ends; every 429
    the client sees (`http_hooks()`) is counted and extends, never shortens, the
    back-off; the gauges follow (the cluster's count at each scrape)."""

    def __init__(
        self,
        slots: int,
        cluster: ClusterSlots | None = None,
        metrics: Metrics | None = None,
        *,
        host: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = slots
        self.cluster = cluster
        self.host = host
        self.in_use = 0
        self.rate_limited_total = 0
        self.last_rate_limited_at: str | None = None
        self._host_slots = asyncio.Semaphore(slots)
        self._backoff_until = 0.0
        self._clock = clock
        self._metrics = metrics
        if metrics is not None:
            metrics.llm_slots.set(slots)
            metrics.llm_cluster_max_async.set(cluster.cap if cluster else 0)
            metrics.llm_slots_in_use.set_function(lambda: self.in_use)
            metrics.llm_backoff_seconds.set_function(lambda: self.backoff_remaining)

    @classmethod
    def build(cls, settings: Settings, redis: Redis | None = None, metrics: Metrics | None = None) -> LLMSlots:
        """The service's: capped across the cluster when llm_cluster_max_async > 0 and
        there is a Redis (the CLI's commands, which make no chat call, have none)."""
        cluster = None
        if settings.llm_cluster_max_async > 0 and redis is not None:
            waited = metrics.llm_cluster_slot_wait_seconds.inc if metrics is not None else None
            cluster = ClusterSlots(
                redis,
                RedisKeys.from_settings(settings).llm_slots,
                cap=settings.llm_cluster_max_async,
                owner=f"{settings.hostname}:{os.getpid()}",
                wait_seconds=settings.llm_timeout_seconds,
                on_wait=waited,
            )
        return cls(settings.llm_max_async, cluster, metrics, host=settings.hostname)

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """One chat call: a host slot, the back-off, a cluster slot (when capped)."""
        async with self._host_slots:
            self.in_use += 1
            try:
                await self.wait_backoff()
                if self.cluster is None:
                    yield
                else:
                    async with self.cluster.slot():
                        yield
            finally:
                self.in_use -= 1

    @property
    def backoff_remaining(self) -> float:
        return max(0.0, self._backoff_until - self._clock())

    async def wait_backoff(self) -> None:
        """Until this host's back-off has passed (it may grow meanwhile)."""
        left = self.backoff_remaining
        while left > 0:  # a deadline that may move: no event to wait on
            await asyncio.sleep(left)
            left = self.backoff_remaining

    def rate_limited(self, retry_after: float | None) -> float:
        """The endpoint answered 429 asking for `retry_after` seconds: count it and hold
        this host's chat calls that long (bounded); the back-off's length."""
        seconds = backoff_seconds(retry_after)
        starting = self.backoff_remaining == 0
        self._backoff_until = max(self._backoff_until, self._clock() + seconds)
        self.rate_limited_total += 1
        self.last_rate_limited_at = datetime.now(UTC).isoformat()
        if self._metrics is not None:
            self._metrics.llm_rate_limited.inc()
        if starting:
            log.warning(
                "LLM endpoint answered 429 (Retry-After %s): this host's chat calls back off %.1fs",
                "none" if retry_after is None else f"{retry_after:g}s",
                seconds,
            )
        return seconds

    def http_hooks(self) -> dict[str, list[HttpHook]]:
        """The LLM client's event hooks: every request waits out the back-off, every 429 starts one."""

        async def before_request(_request: httpx2.Request) -> None:
            await self.wait_backoff()

        async def after_response(response: httpx2.Response) -> None:
            if response.status_code == 429:
                self.rate_limited(retry_after_of(response.headers))

        return {"request": [before_request], "response": [after_response]}

    async def report(self) -> SlotsReport:
        """The slots now; the cluster's read from Redis (its error instead when it does not answer)."""
        report = SlotsReport(
            host=self.host,
            slots=self.slots,
            slots_in_use=self.in_use,
            cluster_max_async=self.cluster.cap if self.cluster else 0,
            rate_limited=self.rate_limited_total,
            backoff_seconds=round(self.backoff_remaining, 1),
            last_rate_limited_at=self.last_rate_limited_at,
        )
        if self.cluster is None:
            return report
        report.cluster_slots_this_host = len(self.cluster.held)
        try:
            holders = await self.cluster.holders()
        except RedisError as exc:
            report.cluster_error = f"{type(exc).__name__}: {exc}"[:200]
            return report
        report.cluster_slots_in_use = len(holders)
        report.cluster_slots_by_host = dict(sorted(Counter(map(host_of, holders)).items()))
        return report

    async def refresh_metrics(self) -> None:
        """The cluster's gauge, from Redis (left as it was when Redis does not answer)."""
        if self._metrics is None or self.cluster is None:
            return
        try:
            self._metrics.llm_cluster_slots_in_use.set(len(await self.cluster.holders()))
        except RedisError as exc:
            log.debug("LLM slots: the cluster's count not read (%s)", exc)
