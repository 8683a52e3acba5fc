"""Intake: a validated ingest request becomes a job and its chunks in the stream.

The job's hash, its "queued" event and every chunk go to Redis in one
MULTI/EXEC: a job is enqueued whole or not at all, and no worker's "started"
can come before "queued".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from ..events.bus import EventPublisher
from ..events.types import EventType
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


@dataclass(frozen=True)
class Accepted:
    """A job enqueued whole: its new id and its number of chunks."""

    job_id: str
    chunks_total: int


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
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._tracker = tracker
        self._publisher = publisher
        self._max_queue_depth = max_queue_depth
        self._on_enqueued = on_enqueued

    async def submit(self, body: IngestRequest) -> Accepted:
        """Enqueue the job; QueueFull when the backlog would exceed max_queue_depth."""
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
        async with self._redis.pipeline(transaction=True) as pipe:
            self._tracker.stage_create(pipe, job)
            self._publisher.stage(
                pipe,
                EventType.INGESTION_QUEUED,
                {"job_id": job.job_id, "chunks_total": job.chunks_total, "priority": job.priority},
            )
            self._stream.stage_enqueue(pipe, entries, job.priority)
            await pipe.execute()
        self._on_enqueued()
        return Accepted(job.job_id, job.chunks_total)
