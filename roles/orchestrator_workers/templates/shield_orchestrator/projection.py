"""The PostgreSQL projection: dirty jobs in Redis become rows of job_status.

The upsert is monotonic (database.JobHistory), so replays and concurrent syncs
from several hosts are harmless; when PostgreSQL was down the rows simply
catch up. Only once a job's row is written is the job settled in Redis (which
starts a finished job's TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime

from redis.exceptions import RedisError

from .database import JobHistory, JobRow
from .job_tracker import DirtyJob, JobTracker

log = logging.getLogger("shield_orchestrator.jobs")

SYNC_BATCH = 500


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def job_row(fields: dict[str, str]) -> JobRow:
    """A job's Redis hash as a job_status row."""
    return {
        "job_id": fields["job_id"],
        "job_type": fields["job_type"],
        "status": fields["status"],
        "chunks_total": int(fields["chunks_total"]),
        "chunks_processed": int(fields.get("chunks_processed") or 0),
        "chunks_failed": int(fields.get("chunks_failed") or 0),
        "job_metadata": json.loads(fields.get("job_metadata") or "{}"),
        "error_message": fields.get("error_message") or None,
        "created_at": datetime.fromisoformat(fields["created_at"]),
        "started_at": _time(fields.get("started_at")),
        "completed_at": _time(fields.get("completed_at")),
        "updated_at": _time(fields.get("updated_at")) or datetime.now(UTC),
    }


class JobProjection:
    def __init__(self, tracker: JobTracker, history: JobHistory, *, interval: float) -> None:
        self._tracker = tracker
        self._history = history
        self._interval = interval
        self._wakeup = asyncio.Event()
        self.pg_available = True

    def request_sync(self) -> None:
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Sync dirty jobs until `stop` is set, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._interval)
            self._wakeup.clear()
            await self.sync_once()
        await self.sync_once()

    async def sync_once(self, batch: int = SYNC_BATCH) -> int:
        """Write up to `batch` dirty jobs; return how many rows were written."""
        try:
            jobs, dirty_total = await self._tracker.dirty_jobs(batch)
        except RedisError as exc:
            log.warning("job sync: cannot read dirty jobs from Redis: %s", exc)
            return 0
        if not jobs:
            return 0
        for job in jobs:
            if not job.fields:
                log.error("job sync: job %s is dirty but its Redis hash is gone", job.job_id)
        written = [job for job in jobs if job.fields]
        if written and not await self._write(written):
            return 0
        try:
            await self._tracker.settle(jobs)
        except RedisError as exc:
            log.warning("job sync: rows written, Redis unreachable to settle them (retried): %s", exc)
            return len(written)
        if dirty_total > batch:
            self._wakeup.set()
        return len(written)

    async def _write(self, jobs: list[DirtyJob]) -> bool:
        try:
            await self._history.upsert([job_row(job.fields) for job in jobs])
        except Exception as exc:  # noqa: BLE001 - whatever the cause, retry on the next tick
            if self.pg_available:
                log.error("PostgreSQL unreachable, job rows will catch up when it returns: %s", exc)
            self.pg_available = False
            return False
        if not self.pg_available:
            log.info("PostgreSQL reachable again; job rows are catching up")
        self.pg_available = True
        return True
