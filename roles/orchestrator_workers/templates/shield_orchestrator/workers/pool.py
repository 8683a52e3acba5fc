"""Worker pool: asyncio workers consuming the ingestion stream through its consumer group.

Delivery is at-least-once and nothing is lost:
- an entry is acked (XACK + XDEL) only after its outcome is recorded in the job
  tracker, and the tracker counts a chunk once however often it is delivered;
- a worker first finishes its own pending entries (left by a previous run of
  the same consumer); entries held by a consumer whose heartbeat has lapsed
  are taken over at once by a live one (liveness.py), never those of a live one;
- failures are classified (faults.py): a chunk's own fault spends an attempt
  and ends in the dead-letter stream after the last; a dependency's pauses the
  pool (breaker.py) until it answers again;
- on shutdown the workers stop reading, in-flight batches get a grace period,
  and whatever is unfinished stays pending.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ..events.bus import EventPublisher
from ..events.types import EventType, JsonObject
from ..jobs.tracker import JobTracker
from ..metrics import Metrics, RateMeter
from ..queue.liveness import Heartbeats, Reclaimer, WorkerState
from ..queue.stream import IngestionStream, is_group_missing
from ..settings import Settings
from .breaker import DependencyGate, PauseChange
from .outcome import OutcomeSettler
from .processor import ChunkProcessor, PipelineProcessor
from .worker import Inbox, Worker, WorkerDeps, WorkerExit

log = logging.getLogger("shield_orchestrator.workers")


class PauseReporter:
    """One journal line, one event and the metrics for each change of a breaker."""

    def __init__(self, events: EventPublisher, metrics: Metrics, host: str) -> None:
        self._events = events
        self._metrics = metrics
        self._host = host

    def __call__(self, change: PauseChange) -> None:
        data: JsonObject = {"host": self._host, "dependency": change.dependency, "since": change.since}
        if change.paused:
            log.warning(
                "worker pool paused: %s is unavailable (%s); no new chunks are taken, held ones stay pending",
                change.dependency,
                change.reason[:300],
            )
            self._metrics.pool_paused.labels(change.dependency).set(1)
            self._metrics.pool_pauses.labels(change.dependency).inc()
            self._events.publish(EventType.WORKER_POOL_PAUSED, {**data, "reason": change.reason[:500]})
        else:
            log.info("worker pool resumed: %s answers again after %.1fs", change.dependency, change.paused_seconds)
            self._metrics.pool_paused.labels(change.dependency).set(0)
            self._events.publish(EventType.WORKER_POOL_RESUMED, {**data, "paused_seconds": change.paused_seconds})


class WorkerPool:
    """Owns this process's workers and what runs beside them: it starts one
    supervised worker per configured slot (recycled after its task budget,
    restarted after a crash), the heartbeats, the reclaimer of silent consumers'
    entries and the breakers' probes; on stop it stops reading, gives in-flight
    batches the grace period and leaves whatever is unfinished pending."""

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
        gate: DependencyGate,
        heartbeats: Heartbeats,
        on_job_finished: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.processor = processor
        self.tracker = tracker
        self.events = events
        self.metrics = metrics
        self.gate = gate
        self.heartbeats = heartbeats
        self.reclaimer = Reclaimer(stream, heartbeats, interval=settings.reclaim_interval_seconds)
        self.stopping = asyncio.Event()
        self.rate = RateMeter()
        self.outcomes = OutcomeSettler(
            redis=redis,
            stream=stream,
            tracker=tracker,
            events=events,
            metrics=metrics,
            rate=self.rate,
            on_job_finished=on_job_finished,
        )
        self._deps = WorkerDeps(
            settings=settings,
            stream=stream,
            processor=processor,
            outcomes=self.outcomes,
            gate=gate,
            metrics=metrics,
            stopping=self.stopping,
            admit=tracker.admit,
        )
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._workers: dict[int, Worker] = {}
        self._inboxes: dict[str, Inbox] = {}
        self._background: list[asyncio.Task[None]] = []
        self._stop_requested: float | None = None
        self._stopped: asyncio.Task[None] | None = None

    @property
    def active_workers(self) -> int:
        return len(self._workers)

    def inbox(self, consumer: str) -> Inbox:
        """Entries taken over from silent consumers, for this worker to finish."""
        return self._inboxes.setdefault(consumer, Inbox())

    def worker_states(self) -> list[WorkerState]:
        return [WorkerState(w.consumer, w.state, w.tasks_done) for w in self._workers.values()]

    def publish(self, event_type: EventType, data: JsonObject) -> None:
        self.events.publish(event_type, data)

    async def start(self) -> None:
        s = self.settings
        if await self.stream.ensure_group():
            log.info("created consumer group %s on stream %s", s.consumer_group, s.stream_name)
        consumers = [s.consumer_name(number) for number in range(1, s.pool_size + 1)]
        for consumer in consumers:
            self.inbox(consumer)
        # Beat before the first read: a consumer is never seen without its heartbeat.
        await self.heartbeats.beat([WorkerState(name, "starting", 0) for name in consumers])
        self._background = [
            asyncio.create_task(self.heartbeats.run(self.stopping, self.worker_states), name="heartbeats"),
            asyncio.create_task(self.reclaimer.run(self.stopping, self._inboxes), name="reclaimer"),
            asyncio.create_task(self.gate.run(self.stopping), name="breakers"),
        ]
        for number in range(1, s.pool_size + 1):
            self._tasks[number] = asyncio.create_task(self._supervise(number), name=f"worker-{number}")
        log.info(
            "worker pool started workers=%d stream=%s group=%s consumers=%s..%s batch=%d",
            *(s.pool_size, s.stream_name, s.consumer_group, consumers[0], consumers[-1], s.batch_size),
        )
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
            if isinstance(self._deps.processor, PipelineProcessor):
                self._deps.processor.begin_stop()

    async def stop(self) -> None:
        """Stop reading, give in-flight batches the grace period, leave the rest
        pending. Idempotent: the drain on a signal and the final stop share it."""
        if self._stopped is None:
            self._stopped = asyncio.create_task(self._stop(), name="pool-stop")
        await asyncio.shield(self._stopped)

    async def _stop(self) -> None:
        self.begin_shutdown()
        tasks = list(self._tasks.values())
        if tasks:
            await self._drain(tasks)
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            await self.heartbeats.forget(list(self._inboxes))
        except RedisError as exc:
            log.warning("heartbeats not removed (%s); they lapse by themselves", exc)
        self.publish(EventType.WORKER_POOL_STOPPED, {"host": self.settings.hostname, "workers": len(tasks)})
        log.info("worker pool stopped workers=%d", len(tasks))

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
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

    async def _supervise(self, number: int) -> None:
        """Run worker `number`, recycling its loop after its task budget and restarting it after a crash."""
        consumer = self.settings.consumer_name(number)
        while not self.stopping.is_set():
            worker = Worker(self._deps, number, self.inbox(consumer))
            self._set_active(number, worker)
            log.info("worker started consumer=%s", consumer)
            self.publish(EventType.WORKER_STARTED, {"worker_id": consumer, "host": self.settings.hostname})
            reason = "cancelled"
            try:
                reason = await self._run_worker(worker)
            finally:
                self._set_active(number, None)
                log.info("worker stopped consumer=%s tasks=%d reason=%s", consumer, worker.tasks_done, reason)
                stopped = {"worker_id": consumer, "tasks": worker.tasks_done, "reason": reason}
                self.publish(EventType.WORKER_STOPPED, stopped)
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
                *(consumer, self.settings.consumer_group, self.settings.stream_name),
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

    def _set_active(self, number: int, worker: Worker | None) -> None:
        if worker is not None:
            self._workers[number] = worker
        else:
            self._workers.pop(number, None)
        self.metrics.active_workers.set(len(self._workers))

    async def _recreate_group(self) -> None:
        try:
            await self.stream.ensure_group()
        except RedisError as exc:
            log.error("cannot recreate the consumer group: %s; retrying in 2s", exc)
            await asyncio.sleep(2)
