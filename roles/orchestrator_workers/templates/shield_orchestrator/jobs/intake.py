"""Intake: a validated job request becomes a job and its tasks in the stream (an
ingest job's chunks; a delete job's document references).

The job's hash, its "queued" event and every task go to Redis in one
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
from ..queue.tasks import chunk_entry, delete_entry, replace_entries
from .requests import DeleteRequest, IngestRequest, ReplaceRequest
from .states import FINAL_STATES
from .tracker import JobTracker, NewJob


class QueueFull(Exception):
    """Accepting the job would take the backlog over max_queue_depth: the depth, the
    incoming chunks and the limit (the API's 429 derives Retry-After from them)."""

    def __init__(self, depth: int, incoming: int, limit: int) -> None:
        super().__init__(f"queue depth {depth} + {incoming} would exceed max_queue_depth {limit}")
        self.depth = depth
        self.incoming = incoming
        self.limit = limit


class ReplaceRunning(Exception):
    """A replace of the same source_uri is queued or running: the job that is."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"a replace of this source_uri is queued or running: job {job_id}")
        self.job_id = job_id


class IdempotencyConflict(Exception):
    """The Idempotency-Key was first used for another request body: the job it made."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the key was first used with another body, for job {job_id}")
        self.job_id = job_id


@dataclass(frozen=True)
class Accepted:
    """A job enqueued whole: its id, type and number of tasks (chunks, or documents to
    delete); `repeated` when an Idempotency-Key found the job a previous request made
    (nothing was enqueued), with the first 12 characters of the key's SHA-256 to log
    (the key itself may be anything the client chose)."""

    job_id: str
    chunks_total: int
    job_type: str
    repeated: bool = False
    key_sha256: str = ""


@dataclass(frozen=True)
class _Watched:
    """What a request's transaction watches: the pipeline; its Idempotency-Key's Redis
    key and the body's fingerprint recorded with the job; a replace's source_uri key."""

    pipe: Pipeline
    key: str | None = None
    fingerprint: str = ""
    replacing: str | None = None


Body = IngestRequest | DeleteRequest | ReplaceRequest


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

    async def submit(self, body: Body, idempotency_key: str | None = None) -> Accepted:
        """Enqueue the job; QueueFull when the backlog would exceed max_queue_depth. With
        an Idempotency-Key already used for the same body: the first job, `repeated`
        (IdempotencyConflict for another body). The key is kept for
        idempotency_ttl_seconds after the first request. A replace while another
        replace of its source_uri is queued or running: ReplaceRunning."""
        replacing = self._keys.replacing(sha256(body.source_uri)) if isinstance(body, ReplaceRequest) else None
        if idempotency_key is None and replacing is None:
            return await self._submit(body, None)
        hashed = sha256(idempotency_key) if idempotency_key is not None else ""
        key = self._keys.idempotency(hashed) if idempotency_key is not None else None
        # An ingest body's fingerprint leaves its job_type out, as before job types: a
        # retry across an upgrade still finds its job.
        fingerprint = sha256(body.model_dump_json(exclude={"job_type"} if isinstance(body, IngestRequest) else None))
        while True:
            async with self._redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(*(name for name in (key, replacing) if name is not None))
                    first = await pipe.get(key) if key is not None else None
                    if first is not None:
                        return self._repeat(str(first), fingerprint, hashed[:12])
                    if replacing is not None:
                        await self._refuse_if_replacing(pipe, replacing)
                    return await self._submit(body, _Watched(pipe, key, fingerprint, replacing))
                except WatchError:
                    continue  # another request with the key committed first: read its job

    async def _refuse_if_replacing(self, pipe: Pipeline, replacing: str) -> None:
        """ReplaceRunning while the source_uri's last replace job is neither final nor gone."""
        running = await pipe.get(replacing)
        if running is None:
            return
        status = await pipe.hget(self._keys.job(str(running)), "status")
        if status is not None and str(status) not in {state.value for state in FINAL_STATES}:
            raise ReplaceRunning(str(running))

    def _repeat(self, record: str, fingerprint: str, key_sha256: str) -> Accepted:
        job_id, first_fingerprint, chunks_total, *job_type = record.split(" ")
        if first_fingerprint != fingerprint:
            raise IdempotencyConflict(job_id)
        # A key recorded before job types has no type: it was an ingest job's.
        return Accepted(job_id, int(chunks_total), job_type[0] if job_type else "ingest", True, key_sha256)

    async def _submit(self, body: Body, watched: _Watched | None) -> Accepted:
        job, entries = self._job_of(body)
        depth = await self._stream.depth()
        if depth + len(entries) > self._max_queue_depth:
            raise QueueFull(depth, len(entries), self._max_queue_depth)
        if watched is None:
            async with self._redis.pipeline(transaction=True) as pipe:
                self._stage(pipe, job, entries)
                await pipe.execute()
        else:
            pipe = watched.pipe
            pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            self._stage(pipe, job, entries)
            if watched.key is not None:
                record = f"{job.job_id} {watched.fingerprint} {job.chunks_total} {body.job_type}"
                pipe.set(watched.key, record, ex=self._idempotency_ttl)
            if watched.replacing is not None:
                pipe.set(watched.replacing, job.job_id, ex=self._idempotency_ttl)
            await pipe.execute()  # WatchError when a request with the key, or a replace, committed meanwhile
        self._on_enqueued()
        return Accepted(job.job_id, job.chunks_total, body.job_type)

    @staticmethod
    def _job_of(body: Body) -> tuple[NewJob, list[dict[str, str]]]:
        """The job and its stream entries: one per chunk, one per document reference, or
        a replace's retire and its chunks."""
        job_id, now = str(uuid.uuid4()), datetime.now(UTC)
        if isinstance(body, ReplaceRequest):
            chunks = [(chunk.text, chunk.metadata) for chunk in body.chunks]
            entries = replace_entries(job_id, body.source_uri, chunks, body.source_type)
            metadata = {**body.metadata, "source_type": body.source_type, "source_uri": body.source_uri}
            return NewJob(job_id, "replace", len(entries), metadata, now, body.priority), entries
        if isinstance(body, DeleteRequest):
            entries = [
                delete_entry(job_id, index, getattr(ref, "doc_id", ""), getattr(ref, "source_uri", ""))
                for index, ref in enumerate(body.documents)
            ]
            job = NewJob(job_id, "delete", len(entries), dict(body.metadata), now, body.priority)
            return job, entries
        entries = [
            chunk_entry(job_id, index, chunk.text, chunk.source_uri, body.source_type, chunk.metadata)
            for index, chunk in enumerate(body.chunks)
        ]
        metadata = {**body.metadata, "source_type": body.source_type}
        return NewJob(job_id, f"ingest:{body.source_type}", len(entries), metadata, now, body.priority), entries

    def _stage(self, pipe: Pipeline, job: NewJob, entries: list[dict[str, str]]) -> None:
        self._tracker.stage_create(pipe, job)
        self._publisher.stage(
            pipe,
            EventType.INGESTION_QUEUED,
            {
                "job_id": job.job_id,
                "job_type": job.job_type,
                "chunks_total": job.chunks_total,
                "priority": job.priority,
            },
        )
        self._stream.stage_enqueue(pipe, entries, job.priority)
