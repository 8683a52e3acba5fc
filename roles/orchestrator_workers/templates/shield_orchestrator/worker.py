"""One worker: a consumer of the group that reads, processes, records and acks.

- It takes no new entry while the pool is paused on a dependency.
- A chunk's own failure spends one of its attempts (backoff between them) and
  after the last one the chunk goes to the dead-letter stream; a transient
  failure (a dependency's) spends none: the chunk stays with the worker,
  pending, until the dependency answers again.
- An entry delivered more than max_deliveries times without finishing (each
  time to a process that then died) is dead-lettered without another try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

from .chunks import BatchResult, ChunkTask, MalformedEntry
from .events import EventType
from .faults import Failure, chunk_fault, classify_exception
from .job_tracker import ChunkOutcome
from .redis_text import StreamEntry
from .states import JobState

if TYPE_CHECKING:
    from .worker_pool import WorkerPool

log = logging.getLogger("shield_orchestrator.workers")

MAX_TRANSIENT_BACKOFF = 30.0


class WorkerExit(StrEnum):
    STOPPED = "stopped"
    RECYCLE = "recycle"


class Worker:
    def __init__(self, pool: WorkerPool, number: int) -> None:
        self.pool = pool
        self.s = pool.settings
        self.stream = pool.stream
        self.consumer = self.s.consumer_name(number)
        self.inbox = pool.inbox(self.consumer)
        self.tasks_done = 0
        self.state = "starting"

    async def run(self) -> WorkerExit:
        """Consume until the pool stops, or until the task budget is spent (recycle)."""
        await self._drain_own_pending()
        while not self.pool.stopping.is_set():
            self.state = "paused" if self.pool.gate.paused else "idle"
            if not await self.pool.gate.wait_closed(self.pool.stopping):
                break
            while not self.inbox.empty():
                await self.handle(self.inbox.get_nowait(), delivered_before=True)
            self.state = "idle"
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

    async def handle(self, entries: Sequence[StreamEntry], *, delivered_before: bool) -> None:
        tasks = await self._tasks_of(entries)
        if tasks and delivered_before:
            tasks = await self._drop_exhausted(tasks)
        if not tasks:
            return
        self.state = "processing"
        tasks = await self._start_jobs(tasks)
        if not tasks:
            return
        await self.process_with_retries(tasks)
        self.tasks_done += len(tasks)

    async def _start_jobs(self, tasks: list[ChunkTask]) -> list[ChunkTask]:
        """Mark the jobs started (once); a cancelled job's chunks are acked and
        dropped without being processed."""
        cancelled: set[str] = set()
        for job_id in {task.job_id for task in tasks}:
            started, status = await self.pool.tracker.mark_started(job_id)
            if started:
                self.pool.publish(EventType.INGESTION_STARTED, {"job_id": job_id, "worker_id": self.consumer})
            if status == JobState.CANCELLED:
                cancelled.add(job_id)
        if not cancelled:
            return tasks
        skipped = [task for task in tasks if task.job_id in cancelled]
        await self.stream.ack([(task.stream, task.entry_id) for task in skipped])
        log.info("consumer=%s skipped %d chunks of cancelled jobs %s", self.consumer, len(skipped), sorted(cancelled))
        self.pool.metrics.chunks_skipped.inc(len(skipped))
        return [task for task in tasks if task.job_id not in cancelled]

    async def _tasks_of(self, entries: Sequence[StreamEntry]) -> list[ChunkTask]:
        """The chunk tasks among the entries; acks deleted ones, dead-letters malformed ones."""
        tasks: list[ChunkTask] = []
        gone: list[tuple[str, str]] = []
        for stream, entry_id, fields in entries:
            if fields is None:  # deleted after its owner acked it: nothing left to do
                gone.append((stream, entry_id))
                continue
            try:
                tasks.append(ChunkTask.from_entry(entry_id, fields, stream))
            except MalformedEntry as exc:
                log.error("consumer=%s dead-lettering malformed entry %s: %s", self.consumer, entry_id, exc)
                await self.stream.dead_letter(
                    stream, entry_id, fields, error=str(exc), attempts=0, consumer=self.consumer
                )
                self.pool.metrics.chunks_failed.inc()
                self.pool.metrics.chunks_dead_lettered.inc()
        if gone:
            await self.stream.ack(gone)
        return tasks

    async def _drop_exhausted(self, tasks: list[ChunkTask]) -> list[ChunkTask]:
        """Dead-letter the entries delivered more often than max_deliveries."""
        counts = await self.stream.delivery_counts(self.consumer, [(task.stream, task.entry_id) for task in tasks])
        limit = self.s.max_deliveries
        exhausted = [task for task in tasks if counts.get(task.entry_id, 1) > limit]
        if exhausted:
            error = f"delivered more than {limit} times without finishing (its process died processing it)"
            await self.give_up(exhausted, {task.doc_id: error for task in exhausted}, {})
        return [task for task in tasks if task not in exhausted]

    async def _attempt(self, tasks: list[ChunkTask]) -> dict[str, Failure | None]:
        started = time.monotonic()
        try:
            result: BatchResult = await self.pool.processor.process_batch(tasks, self.s.task_timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - any processor failure takes the retry path, classified
            failure = classify_exception(exc, "processor")
            result = {task.doc_id: failure for task in tasks}
        self.pool.metrics.processing_seconds.observe((time.monotonic() - started) / len(tasks))
        missing = chunk_fault("the processor returned no outcome for the chunk")
        return {task.doc_id: result[task.doc_id] if task.doc_id in result else missing for task in tasks}

    async def process_with_retries(self, tasks: list[ChunkTask]) -> None:
        """Until every task is done, dead-lettered, or left pending by a stop."""
        attempts: dict[str, int] = defaultdict(int)
        pending, transient_rounds = tasks, 0
        while pending:
            outcome = await self._attempt(pending)
            done = [task for task in pending if outcome[task.doc_id] is None]
            if done:
                await self.pool.complete(done, self.consumer)
            failed = {task.doc_id: failure for task in pending if (failure := outcome[task.doc_id]) is not None}
            retry = await self._settle_failures([task for task in pending if task.doc_id in failed], failed, attempts)
            if not retry:
                return
            transient = any(failed[task.doc_id].transient for task in retry)
            transient_rounds = transient_rounds + 1 if transient else 0
            if not await self._wait_before_retry(retry, failed, attempts, transient_rounds):
                log.info(
                    "consumer=%s leaving %d chunks pending for the next run (shutting down)", self.consumer, len(retry)
                )
                return
            pending = retry

    async def _settle_failures(
        self, failed: list[ChunkTask], failures: dict[str, Failure], attempts: dict[str, int]
    ) -> list[ChunkTask]:
        """Spend an attempt for the chunks' own faults (dead-letter the exhausted ones),
        pause on the dependencies' ones. Returns the tasks to try again."""
        retry: list[ChunkTask] = []
        exhausted: list[ChunkTask] = []
        for task in failed:
            failure = failures[task.doc_id]
            if failure.transient:
                if failure.dependency in self.pool.gate.dependencies:
                    self.pool.gate.trip(failure.dependency or "", failure.message, failure.retry_after)
                self.pool.metrics.chunks_deferred.inc()
                retry.append(task)
                continue
            attempts[task.doc_id] += 1
            self._report_failure(task, failure.message, attempts[task.doc_id])
            (exhausted if attempts[task.doc_id] >= self.s.retry_attempts else retry).append(task)
        if exhausted:
            await self.give_up(exhausted, {task.doc_id: failures[task.doc_id].message for task in exhausted}, attempts)
        self.pool.metrics.chunks_retried.inc(sum(1 for task in retry if not failures[task.doc_id].transient))
        return retry

    async def _wait_before_retry(
        self, retry: list[ChunkTask], failures: dict[str, Failure], attempts: dict[str, int], transient_rounds: int
    ) -> bool:
        """Backoff before the next attempt; while the pool is paused, until it resumes.
        False when the pool stops meanwhile (the tasks stay pending)."""
        if self.pool.gate.paused:
            self.state = "paused"
            return await self.pool.gate.wait_closed(self.pool.stopping)
        own = [attempts[task.doc_id] for task in retry if not failures[task.doc_id].transient]
        delay = self.s.retry_backoff_seconds * 2 ** (max(own) - 1) if own else 0.0
        if transient_rounds:
            delay = max(delay, min(0.5 * 2 ** (transient_rounds - 1), MAX_TRANSIENT_BACKOFF))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.pool.stopping.wait(), delay)
        return not self.pool.stopping.is_set()

    def _report_failure(self, task: ChunkTask, error: str, attempt: int) -> None:
        attempts = self.s.retry_attempts
        log.warning(
            "consumer=%s chunk failed job=%s chunk=%d attempt=%d/%d error=%s",
            *(self.consumer, task.job_id, task.index, attempt, attempts, error),
        )
        data = {"worker_id": self.consumer, "job_id": task.job_id, "chunk_index": task.index}
        details = {"attempt": attempt, "max_attempts": attempts, "error": error[:500]}
        self.pool.publish(EventType.WORKER_TASK_FAILED, {**data, **details})

    async def give_up(self, tasks: list[ChunkTask], errors: dict[str, str], attempts: dict[str, int]) -> None:
        """Count the chunks as failed, then move them to the dead-letter stream."""
        by_job: dict[str, list[ChunkOutcome]] = defaultdict(list)
        for task in tasks:
            by_job[task.job_id].append(ChunkOutcome(task.index, False, errors[task.doc_id]))
        progress = [await self.pool.tracker.record(job_id, outcomes) for job_id, outcomes in by_job.items()]
        for task in tasks:
            used = attempts.get(task.doc_id, 0)
            log.error(
                "consumer=%s chunk dead-lettered job=%s chunk=%d attempts=%d error=%s",
                *(self.consumer, task.job_id, task.index, used, errors[task.doc_id]),
            )
            await self.stream.dead_letter(
                task.stream,
                task.entry_id,
                task.to_entry(),
                error=errors[task.doc_id],
                attempts=used,
                consumer=self.consumer,
            )
        self.pool.metrics.chunks_failed.inc(len(tasks))
        self.pool.metrics.chunks_dead_lettered.inc(len(tasks))
        self.pool.publish_progress(progress, self.consumer)
