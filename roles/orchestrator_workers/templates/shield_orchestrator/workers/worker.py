"""One worker: a consumer of the group that reads, processes, records and acks.

- It takes no new entry while the pool is paused on a dependency.
- A chunk's own failure spends one of its attempts (backoff between them) and
  after the last one the chunk goes to the dead-letter stream; a transient
  failure (a dependency's) spends none: the chunk stays with the worker,
  pending, until the dependency answers again.
- An entry delivered more than max_deliveries times without finishing (each
  time to a process that then died) is dead-lettered without another try.

A worker decides what happens next; what happened is written by the outcome
settler (outcome.py). It is given its collaborators (WorkerDeps) and never
reaches back into the pool that runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ..metrics import Metrics
from ..queue.redis_text import StreamEntry
from ..queue.stream import IngestionStream
from ..queue.tasks import ChunkTask, MalformedEntry
from ..settings import Settings
from .breaker import DependencyGate
from .faults import Failure, chunk_fault, classify_exception
from .outcome import OutcomeSettler
from .processor import Admission, BatchResult, ChunkProcessor, PipelineProcessor

log = logging.getLogger("shield_orchestrator.workers")

MAX_TRANSIENT_BACKOFF = 30.0
# Batches of a pool in a pipeline at once: chunks waiting for a group commit are in
# them (the pipeline's room bounds what is read; the settler, the Redis writes).
BATCHES_IN_PIPELINE = 256


async def _acquire(semaphore: asyncio.Semaphore, stopping: asyncio.Event) -> bool:
    """Acquire, unless `stopping` is set first (False then, nothing acquired)."""
    if not semaphore.locked():
        await semaphore.acquire()
        return True
    acquiring = asyncio.ensure_future(semaphore.acquire())
    stop = asyncio.ensure_future(stopping.wait())
    await asyncio.wait({acquiring, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if acquiring.done() and not acquiring.cancelled():
        if stopping.is_set():
            semaphore.release()
            return False
        return True
    acquiring.cancel()
    return False


class Reservation:
    """Places of a pipeline reserved for one batch: those its chunks spend are handed
    to the pipeline with them; `release` gives back the rest, once."""

    def __init__(self, pipeline: PipelineProcessor, count: int) -> None:
        self._pipeline = pipeline
        self._count = count

    def take(self, wanted: int) -> int:
        taken = min(wanted, self._count)
        self._count -= taken
        return taken

    def release(self) -> None:
        count, self._count = self._count, 0
        if count:
            self._pipeline.release(count)


class WorkerExit(StrEnum):
    """Why a worker's loop returned: the pool stops, or its task budget is spent."""

    STOPPED = "stopped"
    RECYCLE = "recycle"


@dataclass(frozen=True)
class WorkerDeps:
    """What every worker of a pool shares: its settings, the stream it reads, the
    processor, the outcome settler, the dependency gate, the pool's stop signal and
    the job tracker's admission (a cancelled job's chunks do not start)."""

    settings: Settings
    stream: IngestionStream
    processor: ChunkProcessor
    outcomes: OutcomeSettler
    gate: DependencyGate
    metrics: Metrics
    stopping: asyncio.Event
    admit: Admission
    batch_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(BATCHES_IN_PIPELINE))


class Inbox(asyncio.Queue[list[StreamEntry]]):
    """Entries taken over from silent consumers, for one worker to finish (the
    reclaimer puts, the worker gets). `arrived` is set while it holds any: a
    worker waiting for room in the pipeline turns to them at once."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    def _put(self, item: list[StreamEntry]) -> None:
        super()._put(item)
        self.arrived.set()

    def _get(self) -> list[StreamEntry]:
        item = super()._get()
        if not self.qsize():
            self.arrived.clear()
        return item


class Worker:
    """One consumer of the group. Owns its batch from read to outcome: it reads
    (its own pending entries first, then those taken over for it, then new ones),
    processes with retries, and hands every chunk's outcome to the settler. It
    holds no entry past a stop: what it has not settled stays pending."""

    def __init__(self, deps: WorkerDeps, number: int, inbox: Inbox) -> None:
        self.s = deps.settings
        self.stream = deps.stream
        self.processor = deps.processor
        self.outcomes = deps.outcomes
        self.gate = deps.gate
        self.metrics = deps.metrics
        self.stopping = deps.stopping
        self.admit = deps.admit
        self.batch_slots = deps.batch_slots
        self.pipeline = self.processor if isinstance(self.processor, PipelineProcessor) else None
        self.consumer = self.s.consumer_name(number)
        self.inbox = inbox
        self.tasks_done = 0
        self._batches: set[asyncio.Task[None]] = set()  # read from the stream, in the pipeline
        self._taken = 0  # entries read into those batches, ended or not
        self.state = "starting"

    async def run(self) -> WorkerExit:
        """Consume until the pool stops, or until the task budget is spent (recycle).
        With a pipeline processor the worker goes on reading while the batches it
        read are in the pipeline (as much as the pipeline has room for); it returns
        only once they are settled, or left pending by a stop."""
        try:
            await self._drain_own_pending()
            while not self.stopping.is_set():
                self._reap()
                self.state = "paused" if self.gate.paused else "idle"
                if not await self.gate.wait_closed(self.stopping):
                    break
                while not self.inbox.empty():
                    await self.handle(self.inbox.get_nowait(), delivered_before=True)
                self.state = "idle"
                await self._read_and_handle()
                if max(self.tasks_done, self._taken) >= self.s.recycle_after_tasks:
                    await self._settle_batches()
                    return WorkerExit.RECYCLE
            await self._settle_batches()
            return WorkerExit.STOPPED
        finally:
            for batch in self._batches:  # cancelled past the pool's grace: they stay pending
                batch.cancel()

    async def _read_and_handle(self) -> None:
        """Read new entries and handle them. A pipeline processor is read for only as
        much as it can start (its reservation): what stays in the stream can still be
        cancelled, and a high-priority entry is read before the backlog. Its batch is
        handled beside the next reads, not before them: a batch whose chunks wait for
        their commit does not hold the worker back."""
        if self.pipeline is None:
            entries = await self.stream.read_new(self.consumer, self.s.batch_size, self.s.block_ms)
            if entries:
                await self.handle(entries, delivered_before=False)
            return
        self.state = "processing"  # waiting for a batch of this pool to end
        if not await _acquire(self.batch_slots, self.stopping):
            return
        slot = True
        try:
            self.state = "waiting"  # for room in the pipeline
            reserved = await self._reserve(self.pipeline)
            if not reserved:
                return
            self.state = "idle"
            try:
                entries = await self.stream.read_new(self.consumer, reserved, self.s.block_ms)
            except BaseException:
                self.pipeline.release(reserved)
                raise
            self.pipeline.release(reserved - len(entries))
            self._taken += len(entries)  # counted toward the recycle when read: its batch ends later
            if entries:
                reservation = Reservation(self.pipeline, len(entries))
                batch = asyncio.create_task(self.handle(entries, delivered_before=False, reservation=reservation))
                # Given back however the batch ends, even cancelled before it ran.
                batch.add_done_callback(lambda _batch: self._batch_ended(reservation))
                self._batches.add(batch)
                slot = False
        finally:
            if slot:
                self.batch_slots.release()

    async def _reserve(self, pipeline: PipelineProcessor) -> int:
        """Places in the pipeline for a read; 0 once the worker stops, or as soon as
        entries taken over reach its inbox (the run loop handles them first). Another
        worker blocked in its read may hold every place for the whole block, and take
        them again as it returns: waiting for room, taken-over entries waited for ever."""
        if self.inbox.arrived.is_set():
            return 0
        wake = asyncio.Event()
        watchers = [asyncio.ensure_future(event.wait()) for event in (self.stopping, self.inbox.arrived)]
        for watcher in watchers:
            watcher.add_done_callback(lambda _watcher: wake.set())
        try:
            return await pipeline.reserve(self.s.batch_size, wake)
        finally:
            for watcher in watchers:
                watcher.cancel()

    def _batch_ended(self, reservation: Reservation) -> None:
        reservation.release()
        self.batch_slots.release()

    def _reap(self) -> None:
        """Forget the batches that ended; one that raised raises here (the pool restarts the worker)."""
        for batch in [batch for batch in self._batches if batch.done()]:
            self._batches.discard(batch)
            error = None if batch.cancelled() else batch.exception()
            if error is not None:
                raise error

    async def _settle_batches(self) -> None:
        if self._batches:
            self.state = "processing"
            await asyncio.wait(self._batches)
        self._reap()

    async def _drain_own_pending(self) -> None:
        """Finish the entries this consumer was given but never acked (a crash or kill)."""
        while not self.stopping.is_set():
            entries = await self.stream.read_own_pending(self.consumer, self.s.batch_size)
            if not entries:
                return
            log.info("consumer=%s resuming %d own pending entries", self.consumer, len(entries))
            await self.handle(entries, delivered_before=True)

    async def handle(
        self, entries: Sequence[StreamEntry], *, delivered_before: bool, reservation: Reservation | None = None
    ) -> None:
        """Process the entries' chunks to their outcomes; `reservation` holds the places
        of the pipeline reserved for them (spent by the chunks, the rest given back)."""
        try:
            tasks = await self._tasks_of(entries)
            if tasks and delivered_before:
                tasks = await self._drop_exhausted(tasks)
            if tasks:
                self.state = "processing"
                tasks = await self.outcomes.start_jobs(tasks, self.consumer, skip_cancelled=self.pipeline is None)
            if not tasks:
                return
            spent = reservation.take(len(tasks)) if reservation is not None else 0
            if reservation is not None:
                reservation.release()
            await self.process_with_retries(tasks, spent)
            self.tasks_done += len(tasks)
        finally:
            if reservation is not None:
                reservation.release()

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
                await self.outcomes.malformed(stream, entry_id, fields, str(exc), self.consumer)
        await self.outcomes.vanished(gone)
        return tasks

    async def _drop_exhausted(self, tasks: list[ChunkTask]) -> list[ChunkTask]:
        """Dead-letter the entries delivered more often than max_deliveries; drop those
        this consumer no longer holds (finished meanwhile: an entry taken over for it
        is in its inbox and among its own pending ones, whichever it read first)."""
        counts = await self.stream.delivery_counts(self.consumer, [(task.stream, task.entry_id) for task in tasks])
        held = [task for task in tasks if task.entry_id in counts]
        if len(held) < len(tasks):
            log.info("consumer=%s skipping %d entries it no longer holds", self.consumer, len(tasks) - len(held))
        limit = self.s.max_deliveries
        exhausted = [task for task in held if counts[task.entry_id] > limit]
        if exhausted:
            error = f"delivered more than {limit} times without finishing (its process died processing it)"
            await self.outcomes.dead_letter(exhausted, {task.doc_id: error for task in exhausted}, {}, self.consumer)
        return [task for task in held if task not in exhausted]

    async def _attempt(self, tasks: list[ChunkTask], reserved: int = 0) -> AsyncIterator[BatchResult]:
        """The tasks' outcomes, in parts: all at once from a batch processor, each as
        soon as it is known (several known together, together) from a pipeline."""
        started = time.monotonic()
        missing = chunk_fault("the processor returned no outcome for the chunk")
        if self.pipeline is None:
            try:
                result: BatchResult = await self.processor.process_batch(tasks)
            except Exception as exc:  # noqa: BLE001 - any processor failure takes the retry path, classified
                failure = classify_exception(exc, "processor")
                result = {task.doc_id: failure for task in tasks}
            self.metrics.processing_seconds.observe((time.monotonic() - started) / len(tasks))
            yield {task.doc_id: result[task.doc_id] if task.doc_id in result else missing for task in tasks}
            return
        try:
            futures = self.pipeline.submit(tasks, self.admit, reserved)
        except Exception as exc:  # noqa: BLE001 - as above
            self.pipeline.release(reserved)
            failure = classify_exception(exc, "processor")
            yield {task.doc_id: failure for task in tasks}
            return
        waiting = {future: doc_id for doc_id, future in futures.items()}
        for task in tasks:
            if task.doc_id not in futures:
                yield {task.doc_id: missing}
        while waiting:
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            elapsed = time.monotonic() - started
            part: BatchResult = {}
            for future in done:
                part[waiting.pop(future)] = future.result()
                self.metrics.processing_seconds.observe(elapsed)
            yield part

    async def process_with_retries(self, tasks: list[ChunkTask], reserved: int = 0) -> None:
        """Until every task is done, dead-lettered, skipped for a cancelled job, or left
        pending by a stop. Each part of the outcomes is recorded as it comes; the
        first attempt spends the `reserved` places of the pipeline."""
        attempts: dict[str, int] = defaultdict(int)
        pending, transient_rounds = tasks, 0
        while pending:
            failed: dict[str, Failure] = {}
            async for outcome in self._attempt(pending, reserved):
                part = [task for task in pending if task.doc_id in outcome]
                done = [task for task in part if outcome[task.doc_id] is None]
                if done:
                    await self.outcomes.processed(done, self.consumer)
                skipped = [task for task in part if (failure := outcome[task.doc_id]) is not None and failure.cancelled]
                if skipped:
                    await self.outcomes.skipped(skipped, self.consumer)
                failed.update(
                    {
                        task.doc_id: failure
                        for task in part
                        if (failure := outcome[task.doc_id]) is not None and not failure.cancelled
                    }
                )
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
            pending, reserved = retry, 0

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
                if failure.dependency in self.gate.dependencies:
                    self.gate.trip(failure.dependency or "", failure.message, failure.retry_after)
                self.outcomes.deferred()
                retry.append(task)
                continue
            attempts[task.doc_id] += 1
            self.outcomes.attempt_failed(
                task, failure.message, attempts[task.doc_id], self.s.retry_attempts, self.consumer
            )
            (exhausted if attempts[task.doc_id] >= self.s.retry_attempts else retry).append(task)
        if exhausted:
            errors = {task.doc_id: failures[task.doc_id].message for task in exhausted}
            await self.outcomes.dead_letter(exhausted, errors, attempts, self.consumer)
        self.outcomes.retried(sum(1 for task in retry if not failures[task.doc_id].transient))
        return retry

    async def _wait_before_retry(
        self, retry: list[ChunkTask], failures: dict[str, Failure], attempts: dict[str, int], transient_rounds: int
    ) -> bool:
        """Backoff before the next attempt; while the pool is paused, until it resumes.
        False when the pool stops meanwhile (the tasks stay pending)."""
        if self.gate.paused:
            self.state = "paused"
            return await self.gate.wait_closed(self.stopping)
        own = [attempts[task.doc_id] for task in retry if not failures[task.doc_id].transient]
        delay = self.s.retry_backoff_seconds * 2 ** (max(own) - 1) if own else 0.0
        if transient_rounds:
            delay = max(delay, min(0.5 * 2 ** (transient_rounds - 1), MAX_TRANSIENT_BACKOFF))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), delay)
        return not self.stopping.is_set()
