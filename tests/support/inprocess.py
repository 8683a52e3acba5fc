"""The worker pool's parts in process against a real Redis: the wiring of
Service.build cut down to the queue, the job tracker, the outcome settler, the
events and the metrics, around a scripted processor instead of LightRAG.

The processor is the worker's one injected dependency; everything it reports
goes through the real stream, tracker and settler. What the tests assert is
read back from Redis with a client of their own (synchronous: `until` polls
with it from a thread, so the workers under test keep running on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from shield_orchestrator.deployed import BOUNDS, DEFAULTS
from shield_orchestrator.events.bus import EventPublisher
from shield_orchestrator.events.types import decode
from shield_orchestrator.jobs.intake import JobIntake
from shield_orchestrator.jobs.requests import ChunkIn, IngestRequest
from shield_orchestrator.jobs.tracker import JobTracker
from shield_orchestrator.metrics import Metrics, RateMeter
from shield_orchestrator.queue.keys import RedisKeys
from shield_orchestrator.queue.liveness import Heartbeats
from shield_orchestrator.queue.redis_text import StreamEntry
from shield_orchestrator.queue.stream import IngestionStream
from shield_orchestrator.queue.tasks import ChunkTask
from shield_orchestrator.service import make_redis
from shield_orchestrator.settings import Settings
from shield_orchestrator.workers.breaker import DependencyGate, DependencyReport, GateSettings
from shield_orchestrator.workers.faults import LLM, Failure, job_cancelled
from shield_orchestrator.workers.outcome import OutcomeSettler
from shield_orchestrator.workers.pool import PauseReporter, WorkerPool
from shield_orchestrator.workers.processor import Admission, BatchResult
from shield_orchestrator.workers.worker import Inbox, Worker, WorkerDeps

from .servers import wait_until

T = TypeVar("T")
HOST = "test-host"
# Fast, within the deployed bounds (Settings.load validates them).
FAST = {
    "hostname": HOST,
    "pool_size": 1,
    "batch_size": 10,
    "block_ms": 20,
    "retry_attempts": 3,
    "retry_backoff_seconds": 0.05,
    "max_deliveries": 10,
    "heartbeat_ttl_seconds": 3,
    "reclaim_interval_seconds": 1,
    "graceful_shutdown_timeout": 1,
}
OUTCOME_COUNTERS = ("processed", "failed", "retried", "dead_lettered", "deferred", "skipped")


async def until(predicate: Callable[[], T], what: str, within: float = 10.0) -> T:
    """wait_until, off the event loop: the workers under test run while it polls."""
    return await asyncio.to_thread(wait_until, predicate, within, what, 0.02)


@dataclass
class ScriptedProcessor:
    """A ChunkProcessor that records every batch it is given and answers from a
    script: `failures[index]` are the answers of the first attempts of the chunk
    with that index (then it is processed); `raises` is raised for every batch;
    while `hold` is not set, a batch waits for it (`entered` says one does)."""

    failures: dict[int, list[Failure]] = field(default_factory=dict)
    raises: Exception | None = None
    hold: asyncio.Event | None = None
    batches: list[list[tuple[str, int]]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def check(self) -> list[DependencyReport]:
        return []

    async def process_batch(self, tasks: Sequence[ChunkTask]) -> BatchResult:
        self.batches.append([(task.job_id, task.index) for task in tasks])
        self.times.append(time.monotonic())
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.raises is not None:
            raise self.raises
        return {task.doc_id: self._answer(task.index) for task in tasks}

    def _answer(self, index: int) -> Failure | None:
        script = self.failures.get(index)
        return script.pop(0) if script else None

    @property
    def seen(self) -> list[list[int]]:
        """The chunk indexes of each batch, in order."""
        return [[index for _job, index in batch] for batch in self.batches]


@dataclass
class ScriptedPipeline(ScriptedProcessor):
    """A PipelineProcessor (the continuous one's interface) scripted by the test:
    `room` places can be reserved; each submitted task waits until the test
    `finish`es it (by index), with the outcome given then; a task whose job the
    admission refuses is answered `job_cancelled` at once."""

    room: int = 100
    reserved: int = 0
    submitted: list[int] = field(default_factory=list)
    futures: dict[int, asyncio.Future[Failure | None]] = field(default_factory=dict)
    stop_begun: bool = False
    admissions: list[asyncio.Future[None]] = field(default_factory=list)

    def submit(
        self, tasks: Sequence[ChunkTask], admit: Admission, reserved: int = 0
    ) -> dict[str, asyncio.Future[Failure | None]]:
        self.reserved -= reserved
        self.entered.set()
        out: dict[str, asyncio.Future[Failure | None]] = {}
        for task in tasks:
            future = asyncio.get_running_loop().create_future()
            self.submitted.append(task.index)
            self.futures[task.index] = future
            out[task.doc_id] = future
            self.admissions.append(asyncio.ensure_future(self._admit(task, admit, future)))
        return out

    async def _admit(self, task: ChunkTask, admit: Admission, future: asyncio.Future[Failure | None]) -> None:
        if not await admit(task.job_id, [task.index]):
            future.set_result(job_cancelled(task.job_id))

    def finish(self, index: int, outcome: Failure | None = None) -> None:
        self.futures[index].set_result(outcome)

    async def reserve(self, want: int, stopping: asyncio.Event) -> int:
        while not stopping.is_set():
            free = self.room - self.reserved - sum(1 for f in self.futures.values() if not f.done())
            if free > 0:
                taken = min(want, free)
                self.reserved += taken
                return taken
            await asyncio.sleep(0.01)
        return 0

    def release(self, count: int) -> None:
        self.reserved -= count

    def begin_stop(self) -> None:
        self.stop_begun = True


class Rig:
    """One test's slice of the service on the shared Redis: its own key prefix and
    stream names, so that tests never see each other's keys."""

    def __init__(self, port: int, overrides: dict[str, object]) -> None:
        tag = f"t{uuid.uuid4().hex[:10]}"
        env = {
            "redis_host": "127.0.0.1",
            "redis_port": port,
            "key_prefix": f"{tag}:",
            "stream_name": f"{tag}:ingest",
            "events_stream": f"{tag}:events",
            **FAST,
            **overrides,
        }
        self.settings = Settings.load({f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in env.items()}, DEFAULTS, BOUNDS)
        self.tag = tag
        self.redis = make_redis(self.settings)
        self.r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        self.keys = RedisKeys.from_settings(self.settings)
        self.stream = IngestionStream(self.redis, self.keys)
        self.tracker = JobTracker(self.redis, self.keys, ttl_seconds=self.settings.job_status_ttl)
        self.publisher = EventPublisher(self.redis, self.keys.events, self.settings.events_stream_maxlen)
        self.metrics = Metrics()
        self.llm_answers = True
        gate_timing = GateSettings(initial_backoff=0.05, max_backoff=0.2, jitter=lambda: 0.5)
        self.gate = DependencyGate(PauseReporter(self.publisher, self.metrics, HOST), gate_timing)
        self.gate.register(LLM, self._llm_probe)
        self.heartbeats = Heartbeats(self.redis, self.keys, host=HOST, ttl_seconds=self.settings.heartbeat_ttl_seconds)
        self.jobs_finished = 0
        self.outcomes = OutcomeSettler(
            redis=self.redis,
            stream=self.stream,
            tracker=self.tracker,
            events=self.publisher,
            metrics=self.metrics,
            rate=RateMeter(),
            on_job_finished=self._job_finished,
        )
        self.stopping = asyncio.Event()
        self.intake = JobIntake(
            redis=self.redis,
            stream=self.stream,
            tracker=self.tracker,
            publisher=self.publisher,
            max_queue_depth=self.settings.max_queue_depth,
            on_enqueued=lambda: None,
            keys=self.keys,
            idempotency_ttl_seconds=self.settings.job_status_ttl,
        )
        self._tasks: list[asyncio.Task[Any]] = []

    async def open(self) -> Rig:
        await self.stream.ensure_group()
        self.publisher.start()
        return self

    async def close(self) -> None:
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.publisher.stop()
        await self.redis.aclose()
        keys = list(self.r.scan_iter(f"{self.tag}:*"))
        if keys:
            self.r.delete(*keys)
        self.r.close()

    async def _llm_probe(self) -> bool:
        return self.llm_answers

    def _job_finished(self) -> None:
        self.jobs_finished += 1

    # --- putting work in -------------------------------------------------------------
    async def submit(self, chunks: int, priority: str = "normal") -> str:
        """A job of `chunks` chunks through the real intake; its id."""
        body = IngestRequest(chunks=[ChunkIn(text=f"chunk {i}") for i in range(chunks)], priority=priority)
        return (await self.intake.submit(body)).job_id

    def consumer(self, number: int = 1) -> str:
        return self.settings.consumer_name(number)

    async def deliver(self, consumer: str, count: int | None = None) -> list[StreamEntry]:
        """New entries read by `consumer` (they are pending on it until acked)."""
        return await self.stream.read_new(consumer, count or self.settings.batch_size, self.settings.block_ms)

    def worker(self, processor: ScriptedProcessor, number: int = 1) -> Worker:
        deps = WorkerDeps(
            settings=self.settings,
            stream=self.stream,
            processor=processor,
            outcomes=self.outcomes,
            gate=self.gate,
            metrics=self.metrics,
            stopping=self.stopping,
            admit=self.tracker.admit,
        )
        return Worker(deps, number, Inbox())

    def pool(self, processor: ScriptedProcessor) -> WorkerPool:
        return WorkerPool(
            redis=self.redis,
            settings=self.settings,
            stream=self.stream,
            processor=processor,
            tracker=self.tracker,
            events=self.publisher,
            metrics=self.metrics,
            gate=self.gate,
            heartbeats=self.heartbeats,
            on_job_finished=self._job_finished,
        )

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """A task the rig cancels at the end if the test has not finished it."""
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    # --- reading state back ----------------------------------------------------------------
    def _pel(self) -> list[dict[str, Any]]:
        """XPENDING's rows of both streams (entry id, consumer, delivery count)."""
        return [
            row
            for stream in self.keys.streams
            for row in self.r.xpending_range(stream, self.keys.group, "-", "+", 1000)
        ]

    def pending(self) -> dict[str, list[str]]:
        """Consumer -> the entry ids it holds (delivered, not acked)."""
        held: dict[str, list[str]] = {}
        for row in self._pel():
            held.setdefault(row["consumer"], []).append(row["message_id"])
        return held

    def deliveries(self) -> dict[str, int]:
        """How often each pending entry was delivered, by entry id."""
        return {row["message_id"]: int(row["times_delivered"]) for row in self._pel()}

    def depth(self) -> int:
        """Entries left in both streams (acked ones are deleted)."""
        return sum(self.r.xlen(stream) for stream in self.keys.streams)

    def ids(self, entries: Sequence[StreamEntry]) -> list[str]:
        return [entry_id for _stream, entry_id, _fields in entries]

    def job(self, job_id: str) -> tuple[str, int, int, int]:
        """The job hash's (status, chunks_processed, chunks_failed, chunks_total)."""
        fields = self.r.hgetall(self.keys.job(job_id))
        counters = (int(fields[name]) for name in ("chunks_processed", "chunks_failed", "chunks_total"))
        return (fields["status"], *counters)

    def job_field(self, job_id: str, name: str) -> str | None:
        return self.r.hget(self.keys.job(job_id), name)

    def done(self, job_id: str) -> set[int]:
        """The chunk indexes the job has counted."""
        return {int(index) for index in self.r.smembers(self.keys.job_done(job_id))}

    def dead_letters(self) -> list[dict[str, str]]:
        return [fields for _id, fields in self.r.xrange(self.keys.dlq)]

    def counters(self) -> dict[str, float]:
        """The outcome counters of the metrics, by short name."""
        return {name: self.metric(f"shield_chunks_{name}_total") for name in OUTCOME_COUNTERS}

    def metric(self, sample: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(sample, labels)
        return 0.0 if value is None else value

    async def events(self, job_id: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Every event published so far (the publisher flushed first), or a job's."""
        await self.publisher.stop()
        self.publisher.start()
        found = []
        for entry_id, fields in self.r.xrange(self.keys.events):
            event = decode(entry_id, fields)
            if event is not None and (job_id is None or event.data.get("job_id") == job_id):
                found.append((event.type, event.data))
        return found

    async def events_until(self, job_id: str, kind: str, within: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
        """A job's events once one of `kind` is among them: a worker running as a task
        writes the job's counts to Redis a moment before it publishes their event."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            events = await self.events(job_id)
            if any(found == kind for found, _data in events):
                return events
            assert asyncio.get_running_loop().time() < deadline, f"no {kind} event of job {job_id} within {within}s"
            await asyncio.sleep(0.02)

    async def event_types(self, job_id: str | None = None) -> list[str]:
        return [kind for kind, _data in await self.events(job_id)]


async def stopped(task: asyncio.Task[T], stopping: asyncio.Event, within: float = 5.0) -> T:
    """Set `stopping` and the task's result (it must end by itself within `within` seconds)."""
    stopping.set()
    return await asyncio.wait_for(task, within)


async def crashed(task: asyncio.Task[Any]) -> None:
    """Cancel the task as a dying process would end it: nothing after the point it reached runs."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
