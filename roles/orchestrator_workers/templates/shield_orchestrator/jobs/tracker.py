"""Job tracker: a Redis hash per job, fast and with a TTL once the job is durable.

Redis is the source of truth while a job runs: counters move atomically in Lua
scripts (mark_started.lua, record_chunks.lua), and a per-job set of finished
chunk indexes makes a redelivered chunk count once. Every change marks the job
dirty (a versioned entry of a hash); the PostgreSQL projection (projection.py)
writes dirty jobs and then settles them here (settle_dirty.lua), which starts
a finished job's TTL: nothing expires before PostgreSQL holds its final row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from ..queue import lua
from ..queue.keys import RedisKeys
from ..queue.redis_text import text, text_fields, utcnow
from .states import FINAL_STATES, JobState
from .views import JobView, job_view, percent


@dataclass(frozen=True)
class ChunkOutcome:
    """One chunk's outcome to count: its index in the job, processed or not, and the
    error (stored cut to 2000 characters)."""

    index: int
    ok: bool
    error: str = ""


@dataclass(frozen=True)
class JobProgress:
    """A job's counters after some chunks were recorded (record_chunks.lua's reply)."""

    job_id: str
    newly_counted: int
    chunks_processed: int
    chunks_failed: int
    chunks_total: int
    status: str
    finished: bool

    @classmethod
    def from_reply(cls, job_id: str, reply: object) -> JobProgress:
        match reply:
            case [counted, processed, failed, total, status, finished]:
                return cls(
                    job_id,
                    int(str(counted)),
                    int(str(processed)),
                    int(str(failed)),
                    int(str(total)),
                    str(status),
                    bool(int(str(finished))),
                )
        raise ValueError(f"record_chunks.lua answered {reply!r} for job {job_id}")

    @property
    def exists(self) -> bool:
        return self.newly_counted >= 0

    @property
    def percent_complete(self) -> float:
        return percent(self.chunks_processed + self.chunks_failed, self.chunks_total)


class RetireState(StrEnum):
    """A replace job's retire, as its chunks wait for it."""

    DONE = "done"
    FAILED = "failed"
    PENDING = "pending"
    CANCELLED = "cancelled"  # the job was cancelled (or Redis no longer holds it)


@dataclass(frozen=True)
class NewJob:
    """A job about to be created in Redis (stage_create): id, type, chunk count,
    metadata, creation time and priority."""

    job_id: str
    job_type: str
    chunks_total: int
    metadata: dict[str, Any]
    created_at: datetime
    priority: str = "normal"


@dataclass(frozen=True)
class CancelOutcome:
    """cancel_job.lua's reply: 1 cancelled now, 0 already cancelled, -1 finished
    otherwise (status says how), -2 not in Redis; and the chunks that are in, or on
    their way into, LightRAG (processed, or admitted before the cancel)."""

    outcome: int
    status: str
    chunks_in_lightrag: int


@dataclass(frozen=True)
class DirtyJob:
    """A job PostgreSQL has not caught up with: its id, change version and Redis hash
    (empty if gone); a finished job's content duplicates, written with its final row."""

    job_id: str
    version: str
    fields: dict[str, str]
    duplicates: dict[int, str] = field(default_factory=dict)  # a final job's, for its rows

    @property
    def final(self) -> bool:
        return self.fields.get("status") in FINAL_STATES


class JobTracker:
    """The jobs' Redis hashes: created in the intake's transaction, moved by Lua scripts
    that count a chunk once however often it is delivered, marked dirty on every change
    for the projection; a finished job's TTL starts only once its row is settled."""

    def __init__(self, redis: Redis, keys: RedisKeys, *, ttl_seconds: int, recent_jobs_kept: int = 10000) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._recent_kept = recent_jobs_kept
        self._mark_started = lua.register(redis, "mark_started", __file__)
        self._record = lua.register(redis, "record_chunks", __file__)
        self._settle = lua.register(redis, "settle_dirty", __file__)
        self._cancel = lua.register(redis, "cancel_job", __file__)
        self._admit = lua.register(redis, "admit_chunks", __file__)
        self._replay = lua.register(redis, "replay_chunks", __file__)
        self._removed = lua.register(redis, "record_removed", __file__)
        self._duplicates = lua.register(redis, "record_duplicates", __file__)

    # --- writes ---------------------------------------------------------------------
    def stage_create(self, pipe: Pipeline, job: NewJob) -> None:
        """Create the job's hash as part of the caller's transaction."""
        created = job.created_at.isoformat()
        pipe.hset(
            self._keys.job(job.job_id),
            mapping={
                "job_id": job.job_id,
                "job_type": job.job_type,
                "status": JobState.QUEUED.value,
                "chunks_total": job.chunks_total,
                "chunks_processed": 0,
                "chunks_failed": 0,
                "priority": job.priority,
                "job_metadata": json.dumps(job.metadata, separators=(",", ":")),
                "created_at": created,
                "updated_at": created,
            },
        )
        pipe.zadd(self._keys.jobs_recent, {job.job_id: job.created_at.timestamp()})
        pipe.zremrangebyrank(self._keys.jobs_recent, 0, -self._recent_kept - 1)
        pipe.hincrby(self._keys.jobs_dirty, job.job_id, 1)

    async def mark_started(self, job_id: str) -> tuple[bool, str]:
        """Move a queued job to processing: (whether this call did, the job's state
        after it; "" for a job Redis does not hold)."""
        reply = await self._mark_started(
            keys=[self._keys.job(job_id), self._keys.jobs_dirty],
            args=[utcnow(), job_id, JobState.QUEUED.value, JobState.PROCESSING.value],
        )
        match reply:
            case [started, status]:
                return bool(int(str(started))), text(status)
        raise ValueError(f"mark_started.lua answered {reply!r} for job {job_id}")

    async def cancel(self, job_id: str) -> CancelOutcome:
        """Cancel the job unless it finished (cancel_job.lua)."""
        reply = await self._cancel(
            keys=[self._keys.job(job_id), self._keys.jobs_dirty, self._keys.job_admitted(job_id)],
            args=[utcnow(), job_id, JobState.CANCELLED.value, *(state.value for state in FINAL_STATES)],
        )
        match reply:
            case [outcome, status, processed]:
                return CancelOutcome(int(str(outcome)), text(status), int(str(processed)))
        raise ValueError(f"cancel_job.lua answered {reply!r} for job {job_id}")

    async def admit(self, job_id: str, indexes: Sequence[int]) -> bool:
        """Whether these chunks of the job may enter LightRAG (admit_chunks.lua): no
        when the job was cancelled, unless a chunk entered before the cancel (a
        redelivery of what the cancel already counted). An admitted chunk is counted
        by a later cancel as in, or on its way into, LightRAG."""
        reply = await self._admit(
            keys=[self._keys.job(job_id), self._keys.job_admitted(job_id)],
            args=[JobState.CANCELLED.value, *indexes],
        )
        return bool(int(str(reply)))

    async def record_removed(self, job_id: str, documents: int, retire: bool = False) -> int:
        """A delete job's task, or a replace job's retire, removed this many documents
        (record_removed.lua; a retire also marks the job `retired`): the job's count
        after it (-1: Redis does not hold the job)."""
        reply = await self._removed(
            keys=[self._keys.job(job_id), self._keys.jobs_dirty],
            args=[utcnow(), job_id, documents, "1" if retire else "0"],
        )
        return int(str(reply))

    async def record_duplicates(self, job_id: str, holders: Mapping[int, str]) -> int:
        """Chunks of the job (by index) whose text LightRAG already held, with the
        document that holds it (record_duplicates.lua: each chunk once): how many were
        new (-1: Redis does not hold the job)."""
        args: list[str | int] = [utcnow(), job_id]
        for index, document in sorted(holders.items()):
            args += [index, document]
        reply = await self._duplicates(
            keys=[self._keys.job(job_id), self._keys.job_duplicates(job_id), self._keys.jobs_dirty], args=args
        )
        return int(str(reply))

    async def retire_state(self, job_id: str) -> RetireState:
        """Where a replace job's retire (index 0) stands: done (its chunks may enter),
        failed (counted without being done: dead-lettered), pending, or cancelled with
        its job."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(self._keys.job(job_id), ["retired", "status"])
            pipe.sismember(self._keys.job_done(job_id), "0")
            (retired, status), counted = await pipe.execute()
        if retired is not None:
            return RetireState.DONE
        if status is None or status == JobState.CANCELLED.value:
            return RetireState.CANCELLED
        return RetireState.FAILED if counted else RetireState.PENDING

    async def take_back(self, job_id: str, indexes: Sequence[int]) -> int:
        """Dead-lettered chunks go back to their job (replay_chunks.lua); how many did
        (-1: Redis does not hold the job)."""
        reply = await self._replay(
            keys=[
                self._keys.job(job_id),
                self._keys.job_done(job_id),
                self._keys.jobs_dirty,
                self._keys.job_duplicates(job_id),
            ],
            args=[utcnow(), job_id, JobState.FAILED.value, JobState.PROCESSING.value, *indexes],
        )
        return int(str(reply))

    async def restore(self, view: JobView, counted: Sequence[int]) -> None:
        """A job whose Redis hash has expired, back from its PostgreSQL row (a replay
        of one of its dead letters): the hash, and the done set of the chunks it
        counted."""
        key = self._keys.job(view["job_id"])
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "job_id": view["job_id"],
                    "job_type": view["job_type"],
                    "status": view["status"],
                    "chunks_total": view["chunks_total"],
                    "chunks_processed": view["chunks_processed"],
                    "chunks_failed": view["chunks_failed"],
                    "priority": view.get("priority") or "normal",
                    "generation": view.get("generation") or 0,
                    "documents_removed": view.get("documents_removed") or 0,
                    "chunks_duplicate": view.get("chunks_duplicate") or 0,
                    "job_metadata": json.dumps(view["metadata"], separators=(",", ":")),
                    "created_at": view["created_at"] or utcnow(),
                    "started_at": view["started_at"] or "",
                    "completed_at": view["completed_at"] or "",
                    "error_message": view["error_message"] or "",
                    "updated_at": utcnow(),
                },
            )
            if counted:
                pipe.sadd(self._keys.job_done(view["job_id"]), *counted)
            await pipe.execute()

    async def stage_record(self, pipe: Pipeline, job_id: str, outcomes: Sequence[ChunkOutcome], now: str) -> None:
        """Count chunk outcomes as part of the caller's pipeline; its reply parses with
        JobProgress.from_reply."""
        await self._record(
            keys=[self._keys.job(job_id), self._keys.job_done(job_id), self._keys.jobs_dirty],
            args=_record_args(job_id, outcomes, now),
            client=pipe,
        )

    async def record(self, job_id: str, outcomes: Sequence[ChunkOutcome]) -> JobProgress:
        reply = await self._record(
            keys=[self._keys.job(job_id), self._keys.job_done(job_id), self._keys.jobs_dirty],
            args=_record_args(job_id, outcomes, utcnow()),
        )
        return JobProgress.from_reply(job_id, reply)

    # --- reads --------------------------------------------------------------------
    async def get(self, job_id: str) -> JobView | None:
        """The job from Redis; None when Redis no longer (or never) held it."""
        fields = text_fields(await self._redis.hgetall(self._keys.job(job_id)))
        return job_view(fields) if fields else None

    async def duplicates(self, job_id: str) -> dict[int, str] | None:
        """The job's chunks found already in the graph (index -> the document holding
        the text); None when Redis no longer (or never) held the job."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(self._keys.job(job_id))
            pipe.hgetall(self._keys.job_duplicates(job_id))
            exists, found = await pipe.execute()
        if not exists:
            return None
        return {int(index): document for index, document in text_fields(found).items()}

    async def list_recent(self, status: JobState | None, limit: int) -> list[JobView]:
        """Newest first, from Redis alone (while PostgreSQL is unreachable)."""
        jobs: list[JobView] = []
        start, page = 0, max(limit, 100)
        while len(jobs) < limit:
            ids = [
                text(job_id) for job_id in await self._redis.zrevrange(self._keys.jobs_recent, start, start + page - 1)
            ]
            if not ids:
                break
            start += page
            async with self._redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self._keys.job(job_id))
                hashes = [text_fields(fields) for fields in await pipe.execute()]
            matching = [fields for fields in hashes if fields and (status is None or fields.get("status") == status)]
            jobs += [job_view(fields) for fields in matching[: limit - len(jobs)]]
        return jobs

    # --- the PostgreSQL projection's side -------------------------------------------
    async def dirty_jobs(self, limit: int) -> tuple[list[DirtyJob], int]:
        """Up to `limit` dirty jobs with their current hash, and how many are dirty in all."""
        dirty = text_fields(await self._redis.hgetall(self._keys.jobs_dirty))
        items = list(dirty.items())[:limit]
        if not items:
            return [], 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, _version in items:
                pipe.hgetall(self._keys.job(job_id))
            snapshots = [text_fields(fields) for fields in await pipe.execute()]
        jobs = [DirtyJob(job_id, version, fields) for (job_id, version), fields in zip(items, snapshots, strict=True)]
        with_duplicates = [job for job in jobs if job.final and int(job.fields.get("chunks_duplicate") or 0)]
        if with_duplicates:
            async with self._redis.pipeline(transaction=False) as pipe:
                for job in with_duplicates:
                    pipe.hgetall(self._keys.job_duplicates(job.job_id))
                for job, found in zip(with_duplicates, await pipe.execute(), strict=True):
                    job.duplicates.update({int(index): holder for index, holder in text_fields(found).items()})
        return jobs, len(dirty)

    async def settle(self, jobs: Sequence[DirtyJob]) -> int:
        """PostgreSQL holds these jobs' rows: clear their dirty marks and start the TTL of
        the finished ones. Returns the number of marks cleared."""
        if not jobs:
            return 0
        keys = [self._keys.jobs_dirty]
        args: list[str | int] = [self._ttl]
        for job in jobs:
            keys += [
                self._keys.job(job.job_id),
                self._keys.job_done(job.job_id),
                self._keys.job_admitted(job.job_id),
                self._keys.job_duplicates(job.job_id),
            ]
            args += [job.job_id, job.version, "1" if job.final else "0"]
        return int(await self._settle(keys=keys, args=args))


def _record_args(job_id: str, outcomes: Sequence[ChunkOutcome], now: str) -> list[str | int]:
    args: list[str | int] = [now, job_id, JobState.COMPLETED.value, JobState.FAILED.value, JobState.CANCELLED.value]
    for outcome in outcomes:
        args += [outcome.index, "1" if outcome.ok else "0", outcome.error[:2000]]
    return args
