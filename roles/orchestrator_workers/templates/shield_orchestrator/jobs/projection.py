"""The PostgreSQL projection: dirty jobs in Redis become rows of job_status (and a
finished job's content duplicates rows of job_duplicates).

The upsert is monotonic (history.py, JobHistory), so replays and concurrent syncs
from several hosts are harmless; when PostgreSQL was down the rows simply
catch up. Only once a job's row is written is the job settled in Redis (which
starts a finished job's TTL).

A batch PostgreSQL refuses while it answers is written again row by row: the
rows it refuses are set aside (logged with the reason, listed in
/health/detailed, tried again alone every minute or when the job changes) and
every other job's row is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.exceptions import RedisError

from ..metrics import Metrics
from .history import JobHistory, JobRow
from .tracker import DirtyJob, JobTracker

log = logging.getLogger("shield_orchestrator.jobs")

SYNC_BATCH = 500
REJECTED_RETRY_SECONDS = 60.0


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
        "documents_removed": int(fields.get("documents_removed") or 0),
        "chunks_duplicate": int(fields.get("chunks_duplicate") or 0),
        "job_metadata": json.loads(fields.get("job_metadata") or "{}"),
        "error_message": fields.get("error_message") or None,
        "created_at": datetime.fromisoformat(fields["created_at"]),
        "started_at": _time(fields.get("started_at")),
        "completed_at": _time(fields.get("completed_at")),
        "updated_at": _time(fields.get("updated_at")) or datetime.now(UTC),
        "priority": fields.get("priority") or "normal",
        "generation": int(fields.get("generation") or 0),
    }


@dataclass
class Rejection:
    """A job whose row PostgreSQL refuses, while it answers."""

    version: str
    reason: str
    since: str
    retry_at: float

    def as_dict(self, job_id: str) -> dict[str, str]:
        return {"job_id": job_id, "reason": self.reason, "since": self.since}


class JobProjection:
    """Writes the jobs Redis marks dirty to job_status, then settles them in Redis (only
    a written row starts a finished job's TTL). Keeps whether PostgreSQL answered
    (`pg_available`) and the rows it refuses (`rejected`, each retried alone)."""

    def __init__(self, tracker: JobTracker, history: JobHistory, metrics: Metrics, *, interval: float) -> None:
        self._tracker = tracker
        self._history = history
        self._metrics = metrics
        self._interval = interval
        metrics.pg_sync_last_success.set(time.time())
        self._wakeup = asyncio.Event()
        self.pg_available = True
        self.rejected: dict[str, Rejection] = {}

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
            jobs, dirty_total = await self._tracker.dirty_jobs(batch + len(self.rejected))
        except RedisError as exc:
            log.warning("job sync: cannot read dirty jobs from Redis: %s", exc)
            return 0
        jobs = [job for job in jobs if not self._set_aside(job)][:batch]
        self._metrics.pg_sync_rejected_jobs.set(len(self.rejected))
        if not jobs:
            self._synced(0)
            return 0
        for job in jobs:
            if not job.fields:
                log.error("job sync: job %s is dirty but its Redis hash is gone", job.job_id)
        writable = [job for job in jobs if job.fields]
        written = await self._write(writable)
        if written is None:
            self._metrics.pg_sync_pending_jobs.set(len(writable))
            return 0
        self._synced(len(writable) - len(written))
        try:
            await self._tracker.settle([job for job in jobs if not job.fields or job.job_id in written])
        except RedisError as exc:
            log.warning("job sync: rows written, Redis unreachable to settle them (retried): %s", exc)
            return len(written)
        if dirty_total > batch:
            self._wakeup.set()
        return len(written)

    def _synced(self, unwritten: int) -> None:
        self._metrics.pg_sync_pending_jobs.set(unwritten)
        self._metrics.pg_sync_rejected_jobs.set(len(self.rejected))
        self._metrics.pg_sync_last_success.set(time.time())

    def _set_aside(self, job: DirtyJob) -> bool:
        """A rejected job waits for its next try, unless it changed meanwhile."""
        rejection = self.rejected.get(job.job_id)
        return rejection is not None and rejection.version == job.version and time.monotonic() < rejection.retry_at

    async def _write(self, jobs: list[DirtyJob]) -> set[str] | None:
        """Upsert the jobs' rows; the ids written, or None when PostgreSQL is unreachable."""
        if not jobs:
            return set()
        try:
            await self._history.upsert(
                [job_row(job.fields) for job in jobs], {job.job_id: job.duplicates for job in jobs if job.duplicates}
            )
        except Exception as exc:  # noqa: BLE001 - sorted out below: PostgreSQL down, or a row it refuses
            if not await self._reachable(exc):
                return None
            written = await self._write_alone(jobs)
        else:
            written = {job.job_id for job in jobs}
        self._reachable_again()
        for job_id in written & set(self.rejected):
            log.info("job sync: PostgreSQL took job %s's row after all", job_id)
            del self.rejected[job_id]
        return written

    async def _write_alone(self, jobs: list[DirtyJob]) -> set[str]:
        """Every row on its own: the refused ones are set aside with their reason."""
        written: set[str] = set()
        for job in jobs:
            try:
                await self._history.upsert([job_row(job.fields)], {job.job_id: job.duplicates})
            except Exception as exc:  # noqa: BLE001 - this row's own problem (or PostgreSQL went away: retried)
                self._reject(job, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
            else:
                written.add(job.job_id)
        return written

    def _reject(self, job: DirtyJob, reason: str) -> None:
        known = self.rejected.get(job.job_id)
        if known is None or known.reason != reason:
            log.error(
                "job sync: PostgreSQL refuses the row of job %s (%s); every other job's row is written, "
                "this one is tried again alone every %.0fs",
                *(job.job_id, reason, REJECTED_RETRY_SECONDS),
            )
        since = known.since if known else datetime.now(UTC).isoformat()
        self.rejected[job.job_id] = Rejection(job.version, reason, since, time.monotonic() + REJECTED_RETRY_SECONDS)

    async def _reachable(self, exc: Exception) -> bool:
        """Whether PostgreSQL answers (so `exc` was about the rows, not the server)."""
        try:
            await self._history.ping()
        except Exception:  # noqa: BLE001 - any failure of a plain SELECT 1 means unreachable
            if self.pg_available:
                log.error("PostgreSQL unreachable, job rows will catch up when it returns: %s", exc)
            self.pg_available = False
            return False
        return True

    def _reachable_again(self) -> None:
        if not self.pg_available:
            log.info("PostgreSQL reachable again; job rows are catching up")
        self.pg_available = True
