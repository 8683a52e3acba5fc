"""Worker pool: asyncio workers consuming the ingestion stream through its consumer group.

Delivery is at-least-once and nothing is lost:
- an entry is acked (XACK + XDEL) only after its outcome is recorded in the job
  tracker, and the tracker counts a chunk once however often it is delivered;
- a worker first finishes its own pending entries (left by a previous run of
  the same consumer), and reclaims other consumers' entries with XAUTOCLAIM once
  they have been idle longer than the task timeout (a dead consumer);
- failed chunks are retried with exponential backoff, then dead-lettered with
  their error and attempt count, so a poison chunk never blocks the queue; an
  entry delivered more often than the retry budget (it killed its process) is
  dead-lettered without another try;
- on shutdown the workers stop reading, in-flight batches get a grace period,
  and whatever is unfinished stays pending for the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from enum import StrEnum

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from .chunks import BatchResult, ChunkProcessor, ChunkTask, MalformedEntry
from .event_bus import EventPublisher
from .events import EventType, JsonObject
from .job_tracker import ChunkOutcome, JobProgress, JobTracker, utcnow
from .metrics import Metrics
from .redis_text import StreamEntry
from .settings import Settings
from .states import JobState
from .stream import IngestionStream, is_group_missing

log = logging.getLogger("shield_orchestrator.workers")


class RateMeter:
    """Chunks finished per second over a sliding window."""

    def __init__(self, window: float = 60.0) -> None:
        self._window = window
        self._marks: deque[tuple[float, int]] = deque()
        self._started = time.monotonic()

    def add(self, count: int) -> None:
        self._marks.append((time.monotonic(), count))

    def rate(self) -> float:
        now = time.monotonic()
        while self._marks and self._marks[0][0] < now - self._window:
            self._marks.popleft()
        span = min(self._window, max(now - self._started, 1.0))
        return round(sum(count for _, count in self._marks) / span, 3)


class WorkerExit(StrEnum):
    STOPPED = "stopped"
    RECYCLE = "recycle"


class Worker:
    """One consumer of the group: reads, processes, records, acks."""

    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.s = pool.settings
        self.stream = pool.stream
        self.consumer = self.s.consumer_name(number)
        self.tasks_done = 0
        self._next_reclaim = time.monotonic()

    async def run(self) -> WorkerExit:
        """Consume until the pool stops, or until the task budget is spent (recycle)."""
        await self._drain_own_pending()
        while not self.pool.stopping.is_set():
            if time.monotonic() >= self._next_reclaim:
                await self._reclaim_idle()
                period = min(self.s.reclaim_interval_seconds, max(self.s.task_timeout_seconds / 2, 1.0))
                self._next_reclaim = time.monotonic() + period
            entries = await self.stream.read_new(self.consumer, self.s.batch_size, self.s.block_ms)
            if entries:
                await self.handle(entries, delivered_before=False)
            if self.tasks_done >= self.s.recycle_after_tasks:
                return WorkerExit.RECYCLE
        return WorkerExit.STOPPED

    async def _drain_own_pending(self) -> None:
        """Finish the entries this consumer was given but never acked (a crash or kill)."""
        while not self.pool.stopping.is_set():
            entries = await self.stream.read_own_pending(self.consumer, self.s.batch_size)
            if not entries:
                return
            log.info("consumer=%s resuming %d own pending entries", self.consumer, len(entries))
            await self.handle(entries, delivered_before=True)

    async def _reclaim_idle(self) -> None:
        """Take over entries another consumer has held longer than the task timeout."""
        cursor = "0-0"
        min_idle_ms = int(self.s.task_timeout_seconds * 1000)
        while not self.pool.stopping.is_set():
            cursor, claimed = await self.stream.claim_idle(self.consumer, min_idle_ms, cursor, self.s.batch_size)
            if claimed:
                log.warning(
                    "consumer=%s reclaimed %d entries idle for more than %ss from a dead consumer",
                    self.consumer,
                    len(claimed),
                    self.s.task_timeout_seconds,
                )
                await self.handle(claimed, delivered_before=True)
            if cursor in ("0-0", "0"):
                return

    async def handle(self, entries: Sequence[StreamEntry], *, delivered_before: bool) -> None:
        tasks = await self._tasks_of(entries)
        if tasks and delivered_before:
            tasks = await self._drop_exhausted(tasks)
        if not tasks:
            return
        for job_id in {task.job_id for task in tasks}:
            if await self.pool.tracker.mark_started(job_id):
                self.pool.publish(EventType.INGESTION_STARTED, {"job_id": job_id, "worker_id": self.consumer})
        await self.process_with_retries(tasks)
        self.tasks_done += len(tasks)

    async def _tasks_of(self, entries: Sequence[StreamEntry]) -> list[ChunkTask]:
        """The chunk tasks among the entries; acks deleted ones, dead-letters malformed ones."""
        tasks: list[ChunkTask] = []
        gone: list[str] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted after its owner acked it: nothing left to do
                gone.append(entry_id)
                continue
            try:
                tasks.append(ChunkTask.from_entry(entry_id, fields))
            except MalformedEntry as exc:
                log.error("consumer=%s dead-lettering malformed entry %s: %s", self.consumer, entry_id, exc)
                await self.stream.dead_letter(entry_id, fields, error=str(exc), attempts=0, consumer=self.consumer)
                self.pool.metrics.chunks_failed.inc()
                self.pool.metrics.chunks_dead_lettered.inc()
        if gone:
            await self.stream.ack(gone)
        return tasks

    async def _drop_exhausted(self, tasks: list[ChunkTask]) -> list[ChunkTask]:
        """Dead-letter the entries delivered more often than the retry budget allows."""
        counts = await self.stream.delivery_counts(self.consumer, [task.entry_id for task in tasks])
        limit = self.s.retry_attempts + 1
        exhausted = [task for task in tasks if counts.get(task.entry_id, 1) > limit]
        if exhausted:
            error = f"delivered more than {limit} times without finishing (its worker died processing it)"
            await self.give_up(exhausted, {task.doc_id: error for task in exhausted}, limit)
        return [task for task in tasks if task not in exhausted]

    async def _attempt(self, tasks: list[ChunkTask]) -> BatchResult:
        started = time.monotonic()
        try:
            result = await self.pool.processor.process_batch(tasks, self.s.task_timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - any processor failure takes the retry path
            message = f"{type(exc).__name__}: {exc}"
            result = {task.doc_id: message for task in tasks}
        self.pool.metrics.processing_seconds.observe((time.monotonic() - started) / len(tasks))
        return result

    async def process_with_retries(self, tasks: list[ChunkTask]) -> None:
        attempts = self.s.retry_attempts
        pending = tasks
        for attempt in range(1, attempts + 1):
            result = await self._attempt(pending)
            done = [task for task in pending if task.doc_id in result and result[task.doc_id] is None]
            failed = [task for task in pending if task not in done]
            if done:
                await self.pool.complete(done, self.consumer)
            if not failed:
                return
            errors = {task.doc_id: result.get(task.doc_id) or "processor returned no result" for task in failed}
            self._report_failures(failed, errors, attempt)
            if attempt == attempts:
                await self.give_up(failed, errors, attempt)
                return
            self.pool.metrics.chunks_retried.inc(len(failed))
            if not await self._backoff(attempt):
                log.info(
                    "consumer=%s leaving %d failed chunks pending for the next run (shutting down)",
                    self.consumer,
                    len(failed),
                )
                return
            pending = failed

    async def _backoff(self, attempt: int) -> bool:
        """Wait before the next attempt; False when the pool stops meanwhile."""
        delay = self.s.retry_backoff_seconds * 2 ** (attempt - 1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pool.stopping.wait(), delay)
        return not self.pool.stopping.is_set()

    def _report_failures(self, failed: list[ChunkTask], errors: dict[str, str], attempt: int) -> None:
        attempts = self.s.retry_attempts
        for task in failed:
            error = errors[task.doc_id]
            log.warning(
                "consumer=%s chunk failed job=%s chunk=%d attempt=%d/%d error=%s",
                self.consumer,
                task.job_id,
                task.index,
                attempt,
                attempts,
                error,
            )
            self.pool.publish(
                EventType.WORKER_TASK_FAILED,
                {
                    "worker_id": self.consumer,
                    "job_id": task.job_id,
                    "chunk_index": task.index,
                    "attempt": attempt,
                    "max_attempts": attempts,
                    "error": error[:500],
                },
            )

    async def give_up(self, tasks: list[ChunkTask], errors: dict[str, str], attempts: int) -> None:
        """Count the chunks as failed, then move them to the dead-letter stream."""
        by_job: dict[str, list[ChunkOutcome]] = defaultdict(list)
        for task in tasks:
            by_job[task.job_id].append(ChunkOutcome(task.index, False, errors[task.doc_id]))
        progress = [await self.pool.tracker.record(job_id, outcomes) for job_id, outcomes in by_job.items()]
        for task in tasks:
            error = errors[task.doc_id]
            log.error(
                "consumer=%s chunk dead-lettered job=%s chunk=%d attempts=%d error=%s",
                self.consumer,
                task.job_id,
                task.index,
                attempts,
                error,
            )
            await self.stream.dead_letter(
                task.entry_id, task.to_entry(), error=error, attempts=attempts, consumer=self.consumer
            )
        self.pool.metrics.chunks_failed.inc(len(tasks))
        self.pool.metrics.chunks_dead_lettered.inc(len(tasks))
        self.pool.publish_progress(progress, self.consumer)


class WorkerPool:
    def __init__(
        self,
        *,
        redis: Redis,
        settings: Settings,
        stream: IngestionStream,
        processor: ChunkProcessor,
        tracker: JobTracker,
        events: EventPublisher,
        metrics: Metrics,
        on_job_finished: Callable[[], None],
    ) -> None:
        self._redis = redis
        self.settings = settings
        self.stream = stream
        self.processor = processor
        self.tracker = tracker
        self.events = events
        self.metrics = metrics
        self._on_job_finished = on_job_finished
        self.stopping = asyncio.Event()
        self.rate = RateMeter()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._active: set[int] = set()
        self._stop_requested: float | None = None

    @property
    def active_workers(self) -> int:
        return len(self._active)

    def publish(self, event_type: EventType, data: JsonObject) -> None:
        self.events.publish(event_type, data)

    async def start(self) -> None:
        s = self.settings
        if await self.stream.ensure_group():
            log.info("created consumer group %s on stream %s", s.consumer_group, s.stream_name)
        for number in range(1, s.pool_size + 1):
            self._tasks[number] = asyncio.create_task(self._supervise(number), name=f"worker-{number}")
        log.info(
            "worker pool started workers=%d stream=%s group=%s consumers=%s..%s batch=%d",
            s.pool_size,
            s.stream_name,
            s.consumer_group,
            s.consumer_name(1),
            s.consumer_name(s.pool_size),
            s.batch_size,
        )
        consumers = [s.consumer_name(n) for n in self._tasks]
        self.publish(
            EventType.WORKER_POOL_STARTED, {"host": s.hostname, "workers": s.pool_size, "consumers": consumers}
        )

    def begin_shutdown(self) -> None:
        if not self.stopping.is_set():
            self._stop_requested = time.monotonic()
            log.info(
                "worker pool stopping: no new reads, in-flight chunks get %ss",
                self.settings.graceful_shutdown_timeout,
            )
            self.stopping.set()

    async def stop(self) -> None:
        self.begin_shutdown()
        tasks = list(self._tasks.values())
        if not tasks:
            return
        # The grace period counts from the signal, not from this call, so that
        # the whole stop stays within the unit's TimeoutStopSec.
        elapsed = time.monotonic() - (self._stop_requested or time.monotonic())
        grace = max(self.settings.graceful_shutdown_timeout - elapsed, 0.1)
        _done, unfinished = await asyncio.wait(tasks, timeout=grace)
        for task in unfinished:
            task.cancel()
        if unfinished:
            log.warning(
                "graceful shutdown timeout: %d workers cancelled; their unfinished chunks stay pending",
                len(unfinished),
            )
            await asyncio.wait(unfinished, timeout=5)
        self.publish(EventType.WORKER_POOL_STOPPED, {"host": self.settings.hostname, "workers": len(tasks)})
        log.info("worker pool stopped workers=%d", len(tasks))

    async def _supervise(self, number: int) -> None:
        """Run worker `number`, recycling its loop after its task budget and restarting it after a crash."""
        consumer = self.settings.consumer_name(number)
        while not self.stopping.is_set():
            worker = Worker(self, number)
            self._set_active(number, True)
            log.info("worker started consumer=%s", consumer)
            self.publish(EventType.WORKER_STARTED, {"worker_id": consumer, "host": self.settings.hostname})
            reason = "cancelled"
            try:
                reason = await self._run_worker(worker)
            finally:
                self._set_active(number, False)
                log.info("worker stopped consumer=%s tasks=%d reason=%s", consumer, worker.tasks_done, reason)
                self.publish(
                    EventType.WORKER_STOPPED, {"worker_id": consumer, "tasks": worker.tasks_done, "reason": reason}
                )
            if reason == WorkerExit.RECYCLE:
                log.info("consumer=%s recycled its loop after %d tasks", consumer, worker.tasks_done)

    async def _run_worker(self, worker: Worker) -> str:
        """One run of a worker's loop; the reason it ended. Redis trouble and crashes
        end the run (after a pause), never the supervisor."""
        consumer = worker.consumer
        try:
            return await worker.run()
        except ResponseError as exc:
            if not is_group_missing(exc):
                log.error("consumer=%s: Redis refused a command (%s); restarting its loop in 2s", consumer, exc)
                await asyncio.sleep(2)
                return f"redis error: {exc}"
            log.error(
                "consumer=%s: consumer group %s on %s is missing (Redis flushed or restarted without "
                "persistence?); recreating it",
                consumer,
                self.settings.consumer_group,
                self.settings.stream_name,
            )
            await self._recreate_group()
            return "consumer group missing"
        except RedisError as exc:
            log.error("consumer=%s lost Redis (%s); restarting its loop in 2s", consumer, exc)
            await asyncio.sleep(2)
            return f"redis error: {exc}"
        except Exception:
            log.exception("consumer=%s crashed; restarting its loop in 1s (its entries stay pending)", consumer)
            await asyncio.sleep(1)
            return "crashed"

    def _set_active(self, number: int, active: bool) -> None:
        if active:
            self._active.add(number)
        else:
            self._active.discard(number)
        self.metrics.active_workers.set(len(self._active))

    async def _recreate_group(self) -> None:
        try:
            await self.stream.ensure_group()
        except RedisError as exc:
            log.error("cannot recreate the consumer group: %s; retrying in 2s", exc)
            await asyncio.sleep(2)

    async def complete(self, tasks: Sequence[ChunkTask], consumer: str) -> None:
        """Count the chunks as processed and ack their entries, in one round trip.

        The pipeline runs in order: a connection lost after the counts and before
        the ack leaves the entries pending, and their redelivery is not counted
        again (the done-set), so this is as safe as two round trips."""
        by_job: dict[str, list[ChunkOutcome]] = defaultdict(list)
        for task in tasks:
            by_job[task.job_id].append(ChunkOutcome(task.index, True))
        now = utcnow()
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, outcomes in by_job.items():
                await self.tracker.stage_record(pipe, job_id, outcomes, now)
            self.stream.stage_ack(pipe, [task.entry_id for task in tasks])
            replies = await pipe.execute()
        progress = [JobProgress.from_reply(job_id, reply) for job_id, reply in zip(by_job, replies, strict=False)]
        self.metrics.chunks_processed.inc(len(tasks))
        self.rate.add(len(tasks))
        self.publish_progress(progress, consumer)

    def publish_progress(self, progress: Sequence[JobProgress], consumer: str) -> None:
        for item in progress:
            if not item.exists:
                log.error("consumer=%s job %s has no tracking record; its chunk was acked", consumer, item.job_id)
                continue
            if item.newly_counted == 0:
                continue
            data: JsonObject = {
                "job_id": item.job_id,
                "chunks_processed": item.chunks_processed,
                "chunks_failed": item.chunks_failed,
                "chunks_total": item.chunks_total,
                "percent_complete": item.percent_complete,
                "worker_id": consumer,
            }
            self.publish(EventType.INGESTION_PROGRESS, data)
            if item.finished:
                self._on_job_finished()
                final = (
                    EventType.INGESTION_COMPLETED if item.status == JobState.COMPLETED else EventType.INGESTION_FAILED
                )
                self.publish(final, data)
                log.info(
                    "job %s %s processed=%d failed=%d total=%d",
                    item.job_id,
                    item.status,
                    item.chunks_processed,
                    item.chunks_failed,
                    item.chunks_total,
                )
