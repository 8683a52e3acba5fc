"""The ingestion stream: one owner for the Redis Stream the workers consume.

Keys, the consumer group, enqueue, reads (new entries, a consumer's own
pending ones, other consumers' idle ones), delivery counts, ack, dead letters
and statistics all live here.

Queue depth, everywhere (the 429 check, /metrics, /health/detailed): the
stream's length, i.e. every accepted chunk not finished yet, whether it waits
for a worker or is being processed (pending). Entries are deleted once acked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from . import lua
from .events import stream_id_key
from .keys import RedisKeys
from .redis_text import StreamEntry, entry_fields, stream_entries, text


@dataclass(frozen=True)
class QueueStats:
    queue_depth: int
    pending: int
    dead_letters: int

    @property
    def waiting(self) -> int:
        """Entries not delivered to any consumer yet."""
        return max(self.queue_depth - self.pending, 0)


@dataclass(frozen=True)
class QueueInspection:
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
        }


def is_group_missing(exc: ResponseError) -> bool:
    """The stream or its group vanished (FLUSHALL, DEL, Redis restarted empty)."""
    text = str(exc)
    return "NOGROUP" in text or "no longer exists" in text


def utcnow() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class ConsumerInfo:
    name: str
    pending: int
    idle_ms: int


class IngestionStream:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self.keys = keys
        self._claim_dead = lua.register(redis, "claim_dead")

    # --- the group ----------------------------------------------------------------
    async def ensure_group(self) -> bool:
        """Create the consumer group (and the stream) from id 0; True if it was created."""
        try:
            await self._redis.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            return False
        return True

    # --- producing ----------------------------------------------------------------
    async def depth(self) -> int:
        return int(await self._redis.xlen(self.keys.stream))

    def stage_enqueue(self, pipe: Pipeline, entries: Sequence[Mapping[str, str]]) -> None:
        """Add the entries as part of the caller's transaction."""
        for entry in entries:
            pipe.xadd(self.keys.stream, entry_fields(entry))

    # --- consuming ----------------------------------------------------------------
    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        reply = await self._redis.xreadgroup(
            self.keys.group, consumer, {self.keys.stream: ">"}, count=count, block=block_ms
        )
        return stream_entries(reply)

    async def read_own_pending(self, consumer: str, count: int) -> list[StreamEntry]:
        """Entries delivered to `consumer` and never acked (its previous run died)."""
        reply = await self._redis.xreadgroup(self.keys.group, consumer, {self.keys.stream: "0"}, count=count)
        return stream_entries(reply)

    async def consumers(self) -> list[ConsumerInfo]:
        """Every consumer of the group, with what it holds."""
        rows = await self._redis.xinfo_consumers(self.keys.stream, self.keys.group)
        return [ConsumerInfo(text(row["name"]), int(row["pending"]), int(row["idle"])) for row in rows]

    async def claim_from_silent(self, consumer: str, new_owner: str, count: int) -> list[StreamEntry]:
        """Up to `count` entries `consumer` holds, moved to `new_owner`, if and only if
        `consumer`'s heartbeat has lapsed (claim_dead.lua: check and claim in one step)."""
        reply = await self._claim_dead(
            keys=[self.keys.stream, self.keys.heartbeat(consumer)],
            args=[self.keys.group, consumer, new_owner, count],
        )
        claimed: list[StreamEntry] = []
        for item in reply or []:
            entry_id, fields = item[0], item[1] if len(item) > 1 else None
            claimed.append((text(entry_id), None if not fields else _pairs(fields)))
        return claimed

    async def forget_consumer(self, consumer: str) -> int:
        """Remove a consumer that holds nothing from the group; its pending count."""
        return int(await self._redis.xgroup_delconsumer(self.keys.stream, self.keys.group, consumer))

    async def delivery_counts(self, consumer: str, entry_ids: Sequence[str]) -> dict[str, int]:
        """How often each entry was delivered (XPENDING), for entries `consumer` holds."""
        ordered = sorted(entry_ids, key=stream_id_key)
        rows = await self._redis.xpending_range(
            self.keys.stream,
            self.keys.group,
            min=ordered[0],
            max=ordered[-1],
            count=len(entry_ids) * 4 + 10,
            consumername=consumer,
        )
        return {str(row["message_id"]): int(row["times_delivered"]) for row in rows}

    # --- finishing ----------------------------------------------------------------
    def stage_ack(self, pipe: Pipeline, entry_ids: Sequence[str]) -> None:
        """XACK + XDEL as part of the caller's pipeline: a finished entry leaves the stream."""
        pipe.xack(self.keys.stream, self.keys.group, *entry_ids)
        pipe.xdel(self.keys.stream, *entry_ids)

    async def ack(self, entry_ids: Sequence[str]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            self.stage_ack(pipe, entry_ids)
            await pipe.execute()

    async def dead_letter(
        self, entry_id: str, fields: Mapping[str, str], *, error: str, attempts: int, consumer: str
    ) -> None:
        """Move an entry to the dead-letter stream with its error, in one transaction."""
        letter = {
            **fields,
            "original_id": entry_id,
            "error": error[:2000],
            "attempts": str(attempts),
            "consumer": consumer,
            "dead_lettered_at": utcnow(),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dlq, entry_fields(letter))
            self.stage_ack(pipe, [entry_id])
            await pipe.execute()

    # --- statistics ---------------------------------------------------------------
    async def stats(self) -> QueueStats:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.stream)
            pipe.xpending(self.keys.stream, self.keys.group)
            pipe.xlen(self.keys.dlq)
            length, pending, dead = await pipe.execute(raise_on_error=False)
        pending_count = int(pending["pending"]) if isinstance(pending, dict) else 0
        if isinstance(length, Exception):
            raise length
        return QueueStats(queue_depth=int(length), pending=pending_count, dead_letters=int(dead))

    async def inspect(self) -> QueueInspection:
        """The group, its consumers and the statistics (the CLI's inspect-queue)."""
        stats = await self.stats()
        groups = await self._redis.xinfo_groups(self.keys.stream) if await self._redis.exists(self.keys.stream) else []
        exists = any(group["name"] == self.keys.group for group in groups)
        consumers = await self._redis.xinfo_consumers(self.keys.stream, self.keys.group) if exists else []
        return QueueInspection(
            stream=self.keys.stream,
            group=self.keys.group,
            group_exists=exists,
            consumers=sorted(str(consumer["name"]) for consumer in consumers),
            stats=stats,
        )


def _pairs(fields: object) -> dict[str, str]:
    """A field list of a raw script reply ([k1, v1, k2, v2, ...]) as a dict."""
    if isinstance(fields, dict):
        return {text(key): text(value) for key, value in fields.items()}
    items = list(fields) if isinstance(fields, list | tuple) else []
    return {text(items[i]): text(items[i + 1]) for i in range(0, len(items) - 1, 2)}
