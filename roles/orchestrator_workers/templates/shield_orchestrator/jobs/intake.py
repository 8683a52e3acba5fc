"""Intake: a validated ingest request becomes a job and its chunks in the stream.

The job's hash, its "queued" event and every chunk go to Redis in one
MULTI/EXEC: a job is enqueued whole or not at all, and no worker's "started"
can come before "queued". A request with an Idempotency-Key records the key in
the same transaction, watched: a repeat of the request finds the first job
instead of making a second one, however close together the two arrive.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from ..events.bus import EventPublisher
from ..events.types import EventType
from ..queue.keys import RedisKeys
from ..queue.stream import IngestionStream
from ..queue.tasks import chunk_entry
from .requests import IngestRequest
from .tracker import JobTracker, NewJob


class QueueFull(Exception):
    """Accepting the job would take the backlog over max_queue_depth: the depth, the
    incoming chunks and the limit (the API's 429 derives Retry-After from them)."""

    def __init__(self, depth: int, incoming: int, limit: int) -> None:
        super().__init__(f"queue depth {depth} + {incoming} would exceed max_queue_depth {limit}")
        self.depth = depth
        self.incoming = incoming
        self.limit = limit


class IdempotencyConflict(Exception):
    """The Idempotency-Key was first used for another request body: the job it made."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the key was first used with another body, for job {job_id}")
        self.job_id = job_id


@dataclass(frozen=True)
class Accepted:
    """A job enqueued whole: its id and its number of chunks; `repeated` when an
    Idempotency-Key found the job a previous request made (nothing was enqueued)."""

    job_id: str
    chunks_total: int
    repeated: bool = False


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class JobIntake:
    """Turns a validated request into a job: its hash, its `queued` event and every chunk
    in one MULTI/EXEC, so a job is in the stream whole or not at all. The depth check
    before it is not part of the transaction (concurrent jobs may pass it together)."""

    def __init__(
        self,
        *,
        redis: Redis,
        stream: IngestionStream,
        tracker: JobTracker,
        publisher: EventPublisher,
        max_queue_depth: int,
        on_enqueued: Callable[[], None],
        keys: RedisKeys,
        idempotency_ttl_seconds: int,
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._tracker = tracker
        self._publisher = publisher
        self._max_queue_depth = max_queue_depth
        self._on_enqueued = on_enqueued
        self._keys = keys
        self._idempotency_ttl = idempotency_ttl_seconds

    async def submit(self, body: IngestRequest, idempotency_key: str | None = None) -> Accepted:
        """Enqueue the job; QueueFull when the backlog would exceed max_queue_depth. With
        an Idempotency-Key already used for the same body: the first job, `repeated`
        (IdempotencyConflict for another body). The key is kept for
        idempotency_ttl_seconds after the first request."""
        if idempotency_key is None:
            return await self._submit(body, None)
        key = self._keys.idempotency(sha256(idempotency_key))
        fingerprint = sha256(body.model_dump_json())
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    first = await pipe.get(key)
                    if first is not None:
                        return self._repeat(str(first), fingerprint)
                    return await self._submit(body, (pipe, key, fingerprint))
                except WatchError:
                    continue  # another request with the key committed first: read its job

    def _repeat(self, record: str, fingerprint: str) -> Accepted:
        job_id, first_fingerprint, chunks_total = record.split(" ")
        if first_fingerprint != fingerprint:
            raise IdempotencyConflict(job_id)
        return Accepted(job_id, int(chunks_total), repeated=True)

    async def _submit(self, body: IngestRequest, watched: tuple[Pipeline, str, str] | None) -> Accepted:
        depth = await self._stream.depth()
        if depth + len(body.chunks) > self._max_queue_depth:
            raise QueueFull(depth, len(body.chunks), self._max_queue_depth)
        job = NewJob(
            job_id=str(uuid.uuid4()),
            job_type=f"ingest:{body.source_type}",
            chunks_total=len(body.chunks),
            metadata={**body.metadata, "source_type": body.source_type},
            created_at=datetime.now(UTC),
            priority=body.priority,
        )
        entries = [
            chunk_entry(job.job_id, index, chunk.text, chunk.source_uri, body.source_type, chunk.metadata)
            for index, chunk in enumerate(body.chunks)
        ]
        if watched is None:
            async with self._redis.pipeline(transaction=True) as pipe:
                self._stage(pipe, job, entries)
                await pipe.execute()
        else:
            pipe, key, fingerprint = watched
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            self._stage(pipe, job, entries)
            pipe.set(key, f"{job.job_id} {fingerprint} {job.chunks_total}", ex=self._idempotency_ttl)
            await pipe.execute()  # WatchError when a request with the key committed meanwhile
        self._on_enqueued()
        return Accepted(job.job_id, job.chunks_total)

    def _stage(self, pipe: Pipeline, job: NewJob, entries: list[dict[str, str]]) -> None:
        self._tracker.stage_create(pipe, job)
        self._publisher.stage(
            pipe,
            EventType.INGESTION_QUEUED,
            {"job_id": job.job_id, "chunks_total": job.chunks_total, "priority": job.priority},
        )
        self._stream.stage_enqueue(pipe, entries, job.priority)
