"""The one place a chunk's outcome is written.

Whatever happens to a chunk a worker holds ends here, and only here: it is
processed (counted in its job, acked), fails an attempt (an event, a retry),
is dead-lettered (counted as failed, moved to the dead-letter stream), belongs
to a cancelled job (acked unprocessed), or is not a chunk at all (dead-lettered
at once). The order of the writes is what makes a crash between them safe: a
chunk's count is recorded before its entry is acked, and the tracker counts a
chunk once however often it is delivered, so a redelivery after a crash never
counts twice and an ack is never lost for a counted chunk.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from ..events.bus import EventPublisher
from ..events.types import EventType, JsonObject
from ..jobs.states import JobState
from ..jobs.tracker import ChunkOutcome, JobProgress, JobTracker
from ..metrics import Metrics, RateMeter
from ..queue.redis_text import utcnow
from ..queue.stream import IngestionStream
from ..queue.tasks import ChunkTask

log = logging.getLogger("shield_orchestrator.workers")

PROGRESS_JOBS_KEPT = 4096
CONCURRENT_WRITES = 16


class OutcomeSettler:
    """Owns a chunk's outcome: the job tracker's counts, the stream's ack or dead
    letter, the outcome metrics and the job's progress events. Guarantees that a
    chunk is counted before it is acked, and counted once per job, and that the
    progress events this process publishes for a job never count backwards."""

    def __init__(
        self,
        *,
        redis: Redis,
        stream: IngestionStream,
        tracker: JobTracker,
        events: EventPublisher,
        metrics: Metrics,
        rate: RateMeter,
        on_job_finished: Callable[[], None],
    ) -> None:
        self._redis = redis
        self._stream = stream
        self._tracker = tracker
        self._events = events
        self._metrics = metrics
        self._rate = rate
        self._on_job_finished = on_job_finished
        # Per job, the highest count published: the workers of a process settle
        # chunks concurrently and their replies can come back out of order.
        self._progress_published: dict[str, int] = {}
        # Outcomes written at once: a group commit answers many batches together,
        # and each write takes a connection of the Redis client's pool.
        self._writes = asyncio.Semaphore(CONCURRENT_WRITES)

    async def start_jobs(
        self, tasks: Sequence[ChunkTask], consumer: str, *, skip_cancelled: bool = True
    ) -> list[ChunkTask]:
        """Mark the tasks' jobs started (once each); the chunks of a cancelled job are
        acked unprocessed, unless the processor's admission decides (a chunk that
        entered LightRAG before the cancel runs on). Returns the tasks to process."""
        cancelled: set[str] = set()
        for job_id in {task.job_id for task in tasks}:
            started, status = await self._tracker.mark_started(job_id)
            if started:
                self._events.publish(EventType.INGESTION_STARTED, {"job_id": job_id, "worker_id": consumer})
            if status == JobState.CANCELLED and skip_cancelled:
                cancelled.add(job_id)
        if not cancelled:
            return list(tasks)
        await self.skipped([task for task in tasks if task.job_id in cancelled], consumer)
        return [task for task in tasks if task.job_id not in cancelled]

    async def skipped(self, tasks: Sequence[ChunkTask], consumer: str) -> None:
        """Chunks of cancelled jobs, never handed to LightRAG: acked unprocessed."""
        if not tasks:
            return
        async with self._writes:
            await self._stream.ack([(task.stream, task.entry_id) for task in tasks])
        jobs = sorted({task.job_id for task in tasks})
        log.info("consumer=%s skipped %d chunks of cancelled jobs %s", consumer, len(tasks), jobs)
        self._metrics.chunks_skipped.inc(len(tasks))

    async def vanished(self, entries: Sequence[tuple[str, str]]) -> None:
        """Entries deleted after their owner acked them: nothing is left to do but ack."""
        if entries:
            await self._stream.ack(list(entries))

    async def malformed(self, stream: str, entry_id: str, fields: dict[str, str], error: str, consumer: str) -> None:
        """An entry that is not a chunk task: dead-lettered at once, never retried."""
        log.error("consumer=%s dead-lettering malformed entry %s: %s", consumer, entry_id, error)
        await self._stream.dead_letter(stream, entry_id, fields, error=error, attempts=0, consumer=consumer)
        self._metrics.chunks_failed.inc()
        self._metrics.chunks_dead_lettered.inc()

    async def processed(self, tasks: Sequence[ChunkTask], consumer: str) -> None:
        """Count the chunks as processed and ack their entries, in one round trip.

        The pipeline runs in order: a connection lost after the counts and before
        the ack leaves the entries pending, and their redelivery is not counted
        again (the done-set), so this is as safe as two round trips."""
        by_job: dict[str, list[ChunkOutcome]] = defaultdict(list)
        for task in tasks:
            by_job[task.job_id].append(ChunkOutcome(task.index, True))
        now = utcnow()
        async with self._writes, self._redis.pipeline(transaction=False) as pipe:
            for job_id, outcomes in by_job.items():
                await self._tracker.stage_record(pipe, job_id, outcomes, now)
            self._stream.stage_ack(pipe, [(task.stream, task.entry_id) for task in tasks])
            replies = await pipe.execute()
        progress = [JobProgress.from_reply(job_id, reply) for job_id, reply in zip(by_job, replies, strict=False)]
        self._metrics.chunks_processed.inc(len(tasks))
        self._rate.add(len(tasks))
        self._publish_progress(progress, consumer)

    def attempt_failed(self, task: ChunkTask, error: str, attempt: int, max_attempts: int, consumer: str) -> None:
        """A chunk's own fault spent one of its attempts (it is retried, or dead-lettered after the last)."""
        log.warning(
            "consumer=%s chunk failed job=%s chunk=%d attempt=%d/%d error=%s",
            *(consumer, task.job_id, task.index, attempt, max_attempts, error),
        )
        data = {"worker_id": consumer, "job_id": task.job_id, "chunk_index": task.index}
        details = {"attempt": attempt, "max_attempts": max_attempts, "error": error[:500]}
        self._events.publish(EventType.WORKER_TASK_FAILED, {**data, **details})

    def retried(self, count: int) -> None:
        """Chunks that will be tried again after their own fault."""
        self._metrics.chunks_retried.inc(count)

    def deferred(self) -> None:
        """A chunk attempt that failed on a dependency: no attempt spent, tried again once it answers."""
        self._metrics.chunks_deferred.inc()

    async def dead_letter(
        self, tasks: Sequence[ChunkTask], errors: dict[str, str], attempts: dict[str, int], consumer: str
    ) -> None:
        """Count the chunks as failed, then move them to the dead-letter stream."""
        by_job: dict[str, list[ChunkOutcome]] = defaultdict(list)
        for task in tasks:
            by_job[task.job_id].append(ChunkOutcome(task.index, False, errors[task.doc_id]))
        async with self._writes:
            progress = [await self._tracker.record(job_id, outcomes) for job_id, outcomes in by_job.items()]
        for task in tasks:
            used = attempts.get(task.doc_id, 0)
            log.error(
                "consumer=%s chunk dead-lettered job=%s chunk=%d attempts=%d error=%s",
                *(consumer, task.job_id, task.index, used, errors[task.doc_id]),
            )
            await self._stream.dead_letter(
                task.stream, task.entry_id, task.to_entry(), error=errors[task.doc_id], attempts=used, consumer=consumer
            )
        self._metrics.chunks_failed.inc(len(tasks))
        self._metrics.chunks_dead_lettered.inc(len(tasks))
        self._publish_progress(progress, consumer)

    def _publish_progress(self, progress: Sequence[JobProgress], consumer: str) -> None:
        for item in progress:
            if not item.exists:
                log.error("consumer=%s job %s has no tracking record; its chunk was acked", consumer, item.job_id)
                continue
            if item.newly_counted == 0:
                continue
            done = item.chunks_processed + item.chunks_failed
            if not item.finished and done <= self._progress_published.get(item.job_id, -1):
                continue  # a count another worker of this process has already reported past
            self._progress_published[item.job_id] = done
            if len(self._progress_published) > PROGRESS_JOBS_KEPT:
                del self._progress_published[next(iter(self._progress_published))]
            data: JsonObject = {
                "job_id": item.job_id,
                "chunks_processed": item.chunks_processed,
                "chunks_failed": item.chunks_failed,
                "chunks_total": item.chunks_total,
                "percent_complete": item.percent_complete,
                "worker_id": consumer,
            }
            self._events.publish(EventType.INGESTION_PROGRESS, data)
            if item.finished:
                self._progress_published.pop(item.job_id, None)
                self._on_job_finished()
                completed = item.status == JobState.COMPLETED
                self._events.publish(EventType.INGESTION_COMPLETED if completed else EventType.INGESTION_FAILED, data)
                log.info(
                    "job %s %s processed=%d failed=%d total=%d",
                    *(item.job_id, item.status, item.chunks_processed, item.chunks_failed, item.chunks_total),
                )
