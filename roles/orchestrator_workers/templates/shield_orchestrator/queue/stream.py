"""The ingestion streams: one owner for the Redis Streams the workers consume.

The consumer group, enqueue, reads (new entries, a consumer's own pending
ones, those of a consumer whose heartbeat has lapsed), delivery counts, ack,
dead letters and statistics all live here; the key names come from keys.py.

Queue depth, everywhere (the 429 check, /metrics, /health/detailed): the
streams' length, i.e. every accepted chunk not finished yet, whether it waits
for a worker or is being processed (pending). Entries are deleted once acked.

Two streams: a job's `priority` (high | normal) chooses one; workers read the
high-priority stream first, so a small urgent job does not wait behind a backlog.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from . import lua
from .keys import RedisKeys
from .redis_text import StreamEntry, entry_fields, stream_entries, text, utcnow


@dataclass(frozen=True)
class QueueStats:
    """One reading of both streams: entries not finished (queue_depth, the high-priority
    ones among them), those delivered and not acked (pending), and the dead letters."""

    queue_depth: int
    pending: int
    dead_letters: int
    high_priority_depth: int = 0

    @property
    def waiting(self) -> int:
        """Entries not delivered to any consumer yet."""
        return max(self.queue_depth - self.pending, 0)


@dataclass(frozen=True)
class QueueInspection:
    """The CLI's inspect-queue: the normal stream, whether its group exists, the group's
    consumers and the statistics of both streams."""

    stream: str
    group: str
    group_exists: bool
    consumers: list[str]
    stats: QueueStats

    def as_dict(self) -> dict[str, object]:
        return {
            "stream": self.stream,
            "group": self.group,
            "group_exists": self.group_exists,
            "consumers": self.consumers,
            "queue_depth": self.stats.queue_depth,
            "pending": self.stats.pending,
            "dead_letters": self.stats.dead_letters,
            "high_priority_depth": self.stats.high_priority_depth,
        }


def is_group_missing(exc: ResponseError) -> bool:
    """The stream or its group vanished (FLUSHALL, DEL, Redis restarted empty)."""
    text = str(exc)
    return "NOGROUP" in text or "no longer exists" in text


@dataclass(frozen=True)
class ConsumerInfo:
    """A consumer of the group, summed over both streams: the entries it holds unacked
    and its idle time (the shorter of the two)."""

    name: str
    pending: int
    idle_ms: int


class IngestionStream:
    """Two streams, one consumer group on each: high priority, read first, and normal."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self.keys = keys
        self._claim_dead = lua.register(redis, "claim_dead", __file__)

    # --- the group ----------------------------------------------------------------
    async def ensure_group(self) -> bool:
        """Create the consumer group (and the streams) from id 0; True if one was created."""
        created = False
        for stream in self.keys.streams:
            try:
                await self._redis.xgroup_create(stream, self.keys.group, id="0", mkstream=True)
                created = True
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        return created

    # --- producing ----------------------------------------------------------------
    async def depth(self) -> int:
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self.keys.streams:
                pipe.xlen(stream)
            lengths = await pipe.execute()
        return sum(int(length) for length in lengths)

    def stage_enqueue(self, pipe: Pipeline, entries: Sequence[Mapping[str, str]], priority: str = "normal") -> None:
        """Add the entries as part of the caller's transaction."""
        stream = self.keys.stream_for(priority)
        for entry in entries:
            pipe.xadd(stream, entry_fields(entry))

    # --- consuming ----------------------------------------------------------------
    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        """High-priority entries if there are any; else whatever arrives on either
        stream within block_ms."""
        high = stream_entries(
            await self._redis.xreadgroup(self.keys.group, consumer, {self.keys.high: ">"}, count=count)
        )
        if high:
            return high
        streams = {stream: ">" for stream in self.keys.streams}
        return stream_entries(
            await self._redis.xreadgroup(self.keys.group, consumer, streams, count=count, block=block_ms)  # type: ignore[arg-type]
        )

    async def read_own_pending(self, consumer: str, count: int) -> list[StreamEntry]:
        """Entries delivered to `consumer` and never acked (its previous run died)."""
        streams = {stream: "0" for stream in self.keys.streams}
        return stream_entries(await self._redis.xreadgroup(self.keys.group, consumer, streams, count=count))  # type: ignore[arg-type]

    async def consumers(self) -> list[ConsumerInfo]:
        """Every consumer of the group, with what it holds on both streams."""
        merged: dict[str, ConsumerInfo] = {}
        for stream in self.keys.streams:
            for row in await self._redis.xinfo_consumers(stream, self.keys.group):
                name, known = text(row["name"]), merged.get(text(row["name"]))
                pending, idle = int(row["pending"]), int(row["idle"])
                if known is not None:
                    pending, idle = pending + known.pending, min(idle, known.idle_ms)
                merged[name] = ConsumerInfo(name, pending, idle)
        return sorted(merged.values(), key=lambda info: info.name)

    async def claim_from_silent(self, consumer: str, new_owner: str, count: int) -> list[StreamEntry]:
        """Up to `count` entries `consumer` holds, moved to `new_owner`, if and only if
        `consumer`'s heartbeat has lapsed (claim_dead.lua: check and claim in one step)."""
        claimed: list[StreamEntry] = []
        for stream in self.keys.streams:
            reply = await self._claim_dead(
                keys=[stream, self.keys.heartbeat(consumer)], args=[self.keys.group, consumer, new_owner, count]
            )
            for item in reply or []:
                entry_id, fields = item[0], item[1] if len(item) > 1 else None
                claimed.append((stream, text(entry_id), None if not fields else _pairs(fields)))
        return claimed

    async def forget_consumer(self, consumer: str) -> int:
        """Remove a consumer that holds nothing from the group; its pending count."""
        pending = 0
        for stream in self.keys.streams:
            pending += int(await self._redis.xgroup_delconsumer(stream, self.keys.group, consumer))
        return pending

    async def delivery_counts(self, consumer: str, entries: Sequence[tuple[str, str]]) -> dict[str, int]:
        """How often each (stream, entry id) was delivered (XPENDING), for entries
        `consumer` holds; keyed by entry id. An entry it does not hold (acked, or
        taken over by another consumer) is absent. One XPENDING per entry, in one
        round trip: a range would be cut by its count wherever the consumer holds
        other entries between those asked about."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, entry_id in entries:
                pipe.xpending_range(stream, self.keys.group, min=entry_id, max=entry_id, count=1, consumername=consumer)
            replies = await pipe.execute()
        return {str(row["message_id"]): int(row["times_delivered"]) for rows in replies for row in rows}

    # --- finishing ----------------------------------------------------------------
    def stage_ack(self, pipe: Pipeline, entries: Sequence[tuple[str, str]]) -> None:
        """XACK + XDEL of (stream, entry id) pairs as part of the caller's pipeline:
        a finished entry leaves its stream."""
        for stream in {stream for stream, _ in entries}:
            ids = [entry_id for owner, entry_id in entries if owner == stream]
            pipe.xack(stream, self.keys.group, *ids)
            pipe.xdel(stream, *ids)

    async def ack(self, entries: Sequence[tuple[str, str]]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            self.stage_ack(pipe, entries)
            await pipe.execute()

    async def dead_letter(
        self, stream: str, entry_id: str, fields: Mapping[str, str], *, error: str, attempts: int, consumer: str
    ) -> None:
        """Move an entry to the dead-letter stream with its error, in one transaction."""
        letter = {
            **fields,
            "original_id": entry_id,
            "original_stream": stream,
            "error": error[:2000],
            "attempts": str(attempts),
            "consumer": consumer,
            "dead_lettered_at": utcnow(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dlq, entry_fields(letter))
            self.stage_ack(pipe, [(stream, entry_id)])
            await pipe.execute()

    # --- statistics ---------------------------------------------------------------
    async def stats(self) -> QueueStats:
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream in self.keys.streams:
                pipe.xlen(stream)
                pipe.xpending(stream, self.keys.group)
            pipe.xlen(self.keys.dlq)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies[0::2][:2]:
            if isinstance(reply, Exception):
                raise reply
        high_length, high_pending, length, pending, dead = replies
        return QueueStats(
            queue_depth=int(high_length) + int(length),
            pending=_pending(high_pending) + _pending(pending),
            dead_letters=int(dead),
            high_priority_depth=int(high_length),
        )

    async def inspect(self) -> QueueInspection:
        """The group, its consumers and the statistics (the CLI's inspect-queue)."""
        stats = await self.stats()
        stream = self.keys.stream
        groups = await self._redis.xinfo_groups(stream) if await self._redis.exists(stream) else []
        exists = any(group["name"] == self.keys.group for group in groups)
        consumers = [info.name for info in await self.consumers()] if exists else []
        return QueueInspection(
            stream=stream, group=self.keys.group, group_exists=exists, consumers=consumers, stats=stats
        )


def _pending(reply: object) -> int:
    return int(reply["pending"]) if isinstance(reply, dict) else 0


def _pairs(fields: object) -> dict[str, str]:
    """A field list of a raw script reply ([k1, v1, k2, v2, ...]) as a dict."""
    if isinstance(fields, dict):
        return {text(key): text(value) for key, value in fields.items()}
    items = list(fields) if isinstance(fields, list | tuple) else []
    return {text(items[i]): text(items[i + 1]) for i in range(0, len(items) - 1, 2)}
