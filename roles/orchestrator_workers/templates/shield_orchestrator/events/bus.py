"""Event bus: events go through a capped Redis stream so that SSE clients of any
process or host see them; one reader per process fans them out to its clients.

Publishing never waits on Redis in the hot path: events are queued in order and
a background task writes them in pipelined batches. An event that must be
ordered with other writes (a job's "queued" before its chunks) is staged into
the caller's transaction instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from enum import StrEnum

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from ..queue.redis_text import StreamId, entry_fields, stream_entries, stream_id_key, text, text_fields
from .types import SSE_KEEPALIVE, Event, EventType, JsonObject, decode, encode, sse_preamble

log = logging.getLogger("shield_orchestrator.events")

MAX_BACKOFF_SECONDS = 5.0


class EventPublisher:
    """Ordered, batched, non-blocking publication of events to the Redis stream."""

    def __init__(self, redis: Redis, stream: str, maxlen: int, batch: int = 256) -> None:
        self._redis = redis
        self._stream = stream
        self._maxlen = maxlen
        self._batch = batch
        self._queue: asyncio.Queue[tuple[EventType, JsonObject]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def publish(self, event_type: EventType, data: JsonObject) -> None:
        self._queue.put_nowait((event_type, data))

    def stage(self, pipe: Pipeline, event_type: EventType, data: JsonObject) -> None:
        """Publish as part of the caller's transaction (ordered with what follows in it)."""
        fields = entry_fields({"type": event_type.value, "data": encode(data)})
        pipe.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-publisher")

    async def stop(self, flush_seconds: float = 5.0) -> None:
        """Flush what is queued, then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), flush_seconds)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < self._batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            await self._write(items)
            for _ in items:
                self._queue.task_done()

    async def _write(self, items: list[tuple[EventType, JsonObject]]) -> None:
        delay = 0.2
        while True:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for event_type, data in items:
                        self.stage(pipe, event_type, data)
                    await pipe.execute()
                return
            except RedisError as exc:
                log.warning("publishing %d events failed (%s); retrying in %.1fs", len(items), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)


class RefusalReason(StrEnum):
    """Why an event-stream client is refused: every slot taken (429) or the service
    shutting down (503)."""

    FULL = "full"
    CLOSING = "closing"


class SubscriptionRefused(Exception):
    """No event stream for this client: all slots taken, or the service is shutting down."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Subscription:
    """One SSE client: a bounded queue of the events it asked for (`types`, None: all).
    A client that falls `buffer` events behind is cut off (its stream ends) instead of
    slowing the others; it resumes with Last-Event-ID."""

    def __init__(self, types: frozenset[str] | None, buffer: int) -> None:
        self.types = types
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=buffer)
        self.overflowed = False

    def wants(self, event: Event) -> bool:
        return self.types is None or event.type in self.types

    def offer(self, event: Event | None) -> None:
        """Queue an event (None ends the stream). A client that cannot keep up is cut
        off; it reconnects with Last-Event-ID and gets what it missed from the replay."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.queue.get_nowait()
            self.queue.put_nowait(None)


class EventHub:
    """One XREAD loop per process, fanning events out to SSE subscriptions."""

    def __init__(
        self,
        redis: Redis,
        stream: str,
        *,
        max_clients: int,
        replay_events: int,
        keepalive_seconds: float,
        block_ms: int = 2000,
        client_buffer: int = 2000,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self.max_clients = max_clients
        self.replay_events = replay_events
        self.keepalive_seconds = keepalive_seconds
        self._block_ms = block_ms
        self._client_buffer = client_buffer
        self._subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    @property
    def client_count(self) -> int:
        return len(self._subs)

    async def start(self) -> None:
        last = await self._redis.xrevrange(self._stream, count=1)
        self._task = asyncio.create_task(self._run(text(last[0][0]) if last else "0-0"), name="event-hub")

    def begin_close(self) -> None:
        """End every client stream (they reconnect elsewhere or after the restart)."""
        self._closed.set()
        for sub in list(self._subs):
            sub.offer(None)

    async def close(self) -> None:
        self.begin_close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, last_id: str) -> None:
        delay = 0.2
        while True:
            try:
                reply = await self._redis.xread({self._stream: last_id}, count=500, block=self._block_ms)
                delay = 0.2
            except RedisError as exc:
                log.warning("reading the events stream failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                continue
            for _stream, entry_id, fields in stream_entries(reply):
                last_id = entry_id
                event = decode(entry_id, fields or {})
                if event is None:
                    log.warning("ignoring malformed event %s in the events stream", entry_id)
                    continue
                for sub in list(self._subs):
                    if sub.wants(event):
                        sub.offer(event)

    def subscribe(self, types: Iterable[str] | None) -> Subscription:
        if self._closed.is_set():
            raise SubscriptionRefused(RefusalReason.CLOSING, "the service is shutting down")
        if len(self._subs) >= self.max_clients:
            raise SubscriptionRefused(RefusalReason.FULL, f"at most {self.max_clients} event stream clients")
        sub = Subscription(frozenset(types) if types else None, self._client_buffer)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    async def replay_after(self, last_event_id: str, types: frozenset[str] | None) -> list[Event]:
        """Events newer than last_event_id among the last `replay_events` ones."""
        after = stream_id_key(last_event_id)
        entries = await self._redis.xrevrange(self._stream, count=self.replay_events)
        events = []
        for raw_id, raw_fields in reversed(entries or []):
            entry_id = text(raw_id)
            event = decode(entry_id, text_fields(raw_fields))
            if event is not None and stream_id_key(entry_id) > after and (types is None or event.type in types):
                events.append(event)
        return events

    async def stream(self, sub: Subscription, last_event_id: str | None) -> AsyncIterator[str]:
        """SSE text for one client: replay (if asked), then live events and keep-alives."""
        try:
            yield sse_preamble(self._stream)
            floor: StreamId = (0, 0)
            if last_event_id:
                for event in await self.replay_after(last_event_id, sub.types):
                    floor = stream_id_key(event.id)
                    yield event.to_sse()
            while True:
                try:
                    first = await asyncio.wait_for(sub.queue.get(), self.keepalive_seconds)
                except TimeoutError:
                    yield SSE_KEEPALIVE
                    continue
                frames, ended = coalesce(first, sub.queue, floor)
                if frames:
                    yield frames
                if ended:
                    return
        finally:
            self.unsubscribe(sub)


def coalesce(first: Event | None, queue: asyncio.Queue[Event | None], floor: StreamId) -> tuple[str, bool]:
    """Whatever else is already waiting joins `first` in one write (with many
    clients, one socket write per event is the bottleneck). Events at or below
    `floor` were replayed already. Returns (frames, whether the stream ends)."""
    batch = [first]
    while not queue.empty() and len(batch) < 500:
        batch.append(queue.get_nowait())
    frames: list[str] = []
    for item in batch:
        if item is None:
            return "".join(frames), True
        if stream_id_key(item.id) > floor:
            frames.append(item.to_sse())
    return "".join(frames), False
