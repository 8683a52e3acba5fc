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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from typing_extensions import TypedDict

from . import lua
from .keys import RedisKeys
from .redis_text import text, text_fields
from .states import FINAL_STATES, JobState


def utcnow() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class ChunkOutcome:
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


@dataclass(frozen=True)
class NewJob:
    job_id: str
    job_type: str
    chunks_total: int
    metadata: dict[str, Any]
    created_at: datetime
    priority: str = "normal"


@dataclass(frozen=True)
class CancelOutcome:
    """cancel_job.lua's reply: 1 cancelled now, 0 already cancelled, -1 finished
    otherwise (status says how), -2 not in Redis."""

    outcome: int
    status: str
    chunks_processed: int


class JobCounts(TypedDict):
    """What every shape of a job carries: identity, state, counters."""

    job_id: str
    job_type: str
    status: str
    chunks_total: int
    chunks_processed: int
    chunks_failed: int


class JobView(JobCounts):
    """The public shape of a job (GET /jobs/{id})."""

    priority: str
    generation: int
    duration_seconds: float | None

    percent_complete: float
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    error_message: str | None
    metadata: dict[str, Any]


def percent(done: int, total: int) -> float:
    return round(100.0 * done / total, 1) if total else 100.0


def _iso(value: object) -> str | None:
    if value is None or value == "":
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _count(value: object) -> int:
    return int(str(value)) if value not in (None, "") else 0


def job_view(fields: Mapping[str, object]) -> JobView:
    """The public shape of a job, from its Redis hash (strings) or its PostgreSQL row."""
    total, processed, failed = (
        _count(fields.get(name)) for name in ("chunks_total", "chunks_processed", "chunks_failed")
    )
    metadata = fields.get("job_metadata") or {}
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return {
        "job_id": str(fields["job_id"]),
        "job_type": str(fields["job_type"]),
        "status": str(fields["status"]),
        "chunks_total": total,
        "chunks_processed": processed,
        "chunks_failed": failed,
        "percent_complete": percent(processed + failed, total),
        "created_at": _iso(fields.get("created_at")),
        "started_at": _iso(fields.get("started_at")),
        "completed_at": _iso(fields.get("completed_at")),
        "error_message": str(fields.get("error_message") or "") or None,
        "metadata": metadata if isinstance(metadata, dict) else {},
        "priority": str(fields.get("priority") or "normal"),
        "generation": _count(fields.get("generation")),
        "duration_seconds": duration(fields.get("started_at") or fields.get("created_at"), fields.get("completed_at")),
    }


def duration(start: object, end: object) -> float | None:
    """Seconds from start to end (ISO 8601 strings or datetimes); None until it ended."""
    times = [value if isinstance(value, datetime) else _parse(value) for value in (start, end)]
    if times[0] is None or times[1] is None:
        return None
    return round((times[1] - times[0]).total_seconds(), 3)


def _parse(value: object) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class DirtyJob:
    """A job PostgreSQL has not caught up with: its id, change version and Redis hash (empty if gone)."""

    job_id: str
    version: str
    fields: dict[str, str]

    @property
    def final(self) -> bool:
        return self.fields.get("status") in FINAL_STATES


class JobTracker:
    def __init__(self, redis: Redis, keys: RedisKeys, *, ttl_seconds: int, recent_jobs_kept: int = 10000) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl = ttl_seconds
        self._recent_kept = recent_jobs_kept
        self._mark_started = lua.register(redis, "mark_started")
        self._record = lua.register(redis, "record_chunks")
        self._settle = lua.register(redis, "settle_dirty")
        self._cancel = lua.register(redis, "cancel_job")
        self._replay = lua.register(redis, "replay_chunks")

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
            keys=[self._keys.job(job_id), self._keys.jobs_dirty],
            args=[utcnow(), job_id, JobState.CANCELLED.value, *(state.value for state in FINAL_STATES)],
        )
        match reply:
            case [outcome, status, processed]:
                return CancelOutcome(int(str(outcome)), text(status), int(str(processed)))
        raise ValueError(f"cancel_job.lua answered {reply!r} for job {job_id}")

    async def take_back(self, job_id: str, indexes: Sequence[int]) -> int:
        """Dead-lettered chunks go back to their job (replay_chunks.lua); how many did
        (-1: Redis does not hold the job)."""
        reply = await self._replay(
            keys=[self._keys.job(job_id), self._keys.job_done(job_id), self._keys.jobs_dirty],
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
        return jobs, len(dirty)

    async def settle(self, jobs: Sequence[DirtyJob]) -> int:
        """PostgreSQL holds these jobs' rows: clear their dirty marks and start the TTL of
        the finished ones. Returns the number of marks cleared."""
        if not jobs:
            return 0
        keys = [self._keys.jobs_dirty]
        args: list[str | int] = [self._ttl]
        for job in jobs:
            keys += [self._keys.job(job.job_id), self._keys.job_done(job.job_id)]
            args += [job.job_id, job.version, "1" if job.final else "0"]
        return int(await self._settle(keys=keys, args=args))


def _record_args(job_id: str, outcomes: Sequence[ChunkOutcome], now: str) -> list[str | int]:
    args: list[str | int] = [now, job_id, JobState.COMPLETED.value, JobState.FAILED.value, JobState.CANCELLED.value]
    for outcome in outcomes:
        args += [outcome.index, "1" if outcome.ok else "0", outcome.error[:2000]]
    return args
