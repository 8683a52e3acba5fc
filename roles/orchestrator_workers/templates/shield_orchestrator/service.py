"""The service: wires the components together and runs them under uvicorn.

Everything is built here, once, and handed to whoever needs it; no module
holds global state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import uvicorn
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from sqlalchemy.ext.asyncio import AsyncEngine

from . import __version__
from .api.app import create_app
from .api.context import AppContext
from .build_info import read_build_info
from .events.bus import EventHub, EventPublisher
from .health import HealthService
from .jobs.dead_letters import DeadLetters
from .jobs.history import JobHistory, create_engine
from .jobs.intake import JobIntake
from .jobs.ledger import JobLedger
from .jobs.projection import JobProjection
from .jobs.tracker import JobTracker
from .lightrag.fence import FencedLock, WriterFence
from .lightrag.llm.slots import LLMSlots
from .lightrag.locks import RedisLeaseLock
from .lightrag.processor import Ledger, LightRAGProcessor, endpoint_addresses
from .lightrag.verify import JobVerifier
from .metrics import Metrics
from .queue.keys import RedisKeys
from .queue.liveness import Heartbeats
from .queue.stream import IngestionStream
from .settings import Settings
from .workers.breaker import DependencyGate
from .workers.pool import PauseReporter, WorkerPool
from .workers.processor import ChunkProcessor
from .workers.stalls import CallWatch

log = logging.getLogger("shield_orchestrator")

WorkspaceLock = AbstractAsyncContextManager[object]


class ProcessorFactory(Protocol):
    """Makes the processor the pool calls: LightRAG's in production, another in the bench."""

    def __call__(
        self,
        settings: Settings,
        gate: DependencyGate,
        lock: WorkspaceLock,
        watch: CallWatch,
        slots: LLMSlots,
        ledger: Ledger,
    ) -> ChunkProcessor: ...


SYNC_STOP_SECONDS = 10
HTTP_GRACEFUL_SECONDS = 10


def make_redis(settings: Settings) -> Redis:
    """The Redis client: straight to redis_host, or to whichever server the
    sentinels name master (a failover is followed by the client itself)."""
    # The service's own ACL user (role redis_server: redis_server_app_user),
    # or the default user when redis_username is empty.
    auth: dict[str, Any] = {"username": settings.redis_username or None, "password": settings.redis_password or None}
    options: dict[str, Any] = {
        "db": settings.redis_db,
        **auth,
        "decode_responses": True,
        "socket_connect_timeout": 5,
        # Above every blocking read (XREADGROUP / XREAD BLOCK is at most a few s).
        "socket_timeout": max(30.0, settings.block_ms / 1000 + 10),
        "health_check_interval": 30,
        "max_connections": max(64, settings.pool_size * 4 + settings.sse_max_clients // 10),
    }
    if settings.sentinels:
        # redis-py's Sentinel.__init__ carries no annotations.
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            settings.sentinels,
            sentinel_kwargs={**auth, "socket_connect_timeout": 5},
        )
        client: Redis = sentinel.master_for(settings.redis_sentinel_master, redis_class=Redis, **options)
        return client
    return Redis(host=settings.redis_host, port=settings.redis_port, **options)


def workspace_lock(settings: Settings, redis: Redis, keys: RedisKeys, metrics: Metrics | None = None) -> WorkspaceLock:
    """One LightRAG pipeline at a time per workspace: in this process for the local
    storages (one host), across hosts for PostgreSQL's: a lease in Redis, and a
    writer fence in PostgreSQL that refuses the writes of a superseded holder."""
    if settings.lightrag_storage == "postgres":
        key = keys.workspace_lock(settings.lightrag_workspace)
        ttl = settings.lightrag_lock_ttl_seconds
        fence = WriterFence(settings.lightrag_workspace, ttl, metrics)
        return FencedLock(RedisLeaseLock(redis, key, ttl_seconds=ttl), fence)
    return asyncio.Lock()


@dataclass
class Service:
    """The whole service in one process: every component built once (build), started in
    dependency order, and stopped draining the worker pool first, then letting the
    projection write its last rows before the stores close."""

    settings: Settings
    redis: Redis
    engine: AsyncEngine
    processor: ChunkProcessor
    projection: JobProjection
    publisher: EventPublisher
    hub: EventHub
    pool: WorkerPool
    context: AppContext
    sync_stop: asyncio.Event = field(default_factory=asyncio.Event)
    sync_task: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings, processor_factory: ProcessorFactory = LightRAGProcessor) -> Service:
        redis = make_redis(settings)
        engine = create_engine(settings)
        keys = RedisKeys.from_settings(settings)
        metrics = Metrics()
        build = read_build_info()
        metrics.build_info.labels(build.version, build.tree_sha256, build.release or "").set(1)
        stream = IngestionStream(redis, keys)
        tracker = JobTracker(redis, keys, ttl_seconds=settings.job_status_ttl)
        history = JobHistory(engine)
        projection = JobProjection(tracker, history, metrics, interval=settings.pg_sync_interval)
        publisher = EventPublisher(redis, keys.events, settings.events_stream_maxlen)
        hub = EventHub(
            redis,
            keys.events,
            max_clients=settings.sse_max_clients,
            replay_events=settings.sse_replay_events,
            keepalive_seconds=settings.sse_keepalive_seconds,
        )
        gate = DependencyGate(PauseReporter(publisher, metrics, settings.hostname))
        watch = CallWatch(settings.llm_stall_seconds, endpoint_addresses(settings), metrics)
        slots = LLMSlots.build(settings, redis, metrics)
        lock, ledger = workspace_lock(settings, redis, keys, metrics), JobLedger(tracker, publisher, metrics)
        processor = processor_factory(settings, gate, lock, watch, slots, ledger)
        heartbeats = Heartbeats(redis, keys, host=settings.hostname, ttl_seconds=settings.heartbeat_ttl_seconds)
        pool = WorkerPool(
            redis=redis,
            settings=settings,
            stream=stream,
            processor=processor,
            tracker=tracker,
            events=publisher,
            metrics=metrics,
            gate=gate,
            heartbeats=heartbeats,
            on_job_finished=projection.request_sync,
        )
        intake = JobIntake(
            redis=redis,
            stream=stream,
            tracker=tracker,
            publisher=publisher,
            max_queue_depth=settings.max_queue_depth,
            on_enqueued=projection.request_sync,
            keys=keys,
            idempotency_ttl_seconds=settings.job_status_ttl,
        )
        health = HealthService(
            settings=settings,
            redis=redis,
            history=history,
            stream=stream,
            processor=processor,
            pool=pool,
            projection=projection,
            metrics=metrics,
            build=build,
            calls=watch,
        )
        verifier = processor if isinstance(processor, JobVerifier) else None
        metrics.configured_workers.set(settings.pool_size)
        context = AppContext(
            settings=settings,
            intake=intake,
            tracker=tracker,
            history=history,
            stream=stream,
            hub=hub,
            health=health,
            metrics=metrics,
            rate=pool.rate,
            verifier=verifier,
            publisher=publisher,
            dead_letters=DeadLetters(redis, keys, tracker, history),
            heartbeats=heartbeats,
            on_job_change=projection.request_sync,
            llm=slots,
        )
        return cls(settings, redis, engine, processor, projection, publisher, hub, pool, context)

    def begin_shutdown(self) -> None:
        """First step on SIGTERM/SIGINT: readiness off (/health 503), stop reading new
        chunks, end SSE streams (their clients reconnect elsewhere)."""
        self.context.health.begin_drain()
        self.pool.begin_shutdown()
        self.hub.begin_close()

    async def drain(self) -> None:
        """Between the signal and the listener's close: the API keeps answering
        (job status, cancel) while in-flight chunks finish within the grace period."""
        self.begin_shutdown()
        await self.pool.stop()

    async def start(self) -> None:
        s = self.settings
        log.info(
            "starting %s %s host=%s redis=%s:%d postgres=%s:%d/%s sslmode=%s llm_slots=%d llm_cluster_max_async=%d",
            s.service_name,
            __version__,
            s.hostname,
            s.redis_host,
            s.redis_port,
            s.postgres_host,
            s.postgres_port,
            s.postgres_db,
            s.postgres_sslmode,
            s.llm_max_async,
            s.llm_cluster_max_async,
        )
        await self.redis.ping()
        self.publisher.start()
        await self.processor.start()
        self.sync_task = asyncio.create_task(self.projection.run(self.sync_stop), name="job-sync")
        await self.hub.start()
        await self.pool.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_tasks)

    async def stop(self) -> None:
        self.begin_shutdown()
        await self.pool.stop()
        self.sync_stop.set()
        self.projection.request_sync()
        if self.sync_task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sync_task, SYNC_STOP_SECONDS)
        await self.publisher.stop()
        await self.hub.close()
        await self.processor.stop()
        await self.engine.dispose()
        await self.redis.aclose()
        log.info("%s stopped cleanly", self.settings.service_name)

    def app(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
            await self.start()
            try:
                yield
            finally:
                await self.stop()

        return create_app(self.context, lifespan)


def dump_tasks() -> None:
    """SIGUSR1 (`systemctl kill -s USR1 shield-orchestrator`): every asyncio task's
    stack to the journal, to see what a stuck service waits on."""
    tasks = asyncio.all_tasks()
    log.warning("SIGUSR1: %d asyncio tasks", len(tasks))
    for task in sorted(tasks, key=lambda item: item.get_name()):
        log.warning("task %s:\n%s", task.get_name(), "\n".join(await_chain(task)))


def await_chain(task: asyncio.Task[Any], limit: int = 25) -> list[str]:
    """Where a task waits: its coroutine, then each coroutine it awaits, down to
    the innermost (Task.print_stack shows the outermost frame only)."""
    lines: list[str] = []
    link: Any = None if task.done() else task.get_coro()
    while link is not None and len(lines) < limit:
        frame = getattr(link, "cr_frame", None) or getattr(link, "gi_frame", None) or getattr(link, "ag_frame", None)
        if frame is None:
            lines.append(f"  awaiting {type(link).__name__}")
            break
        lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}')
        link = getattr(link, "cr_await", None) or getattr(link, "gi_yieldfrom", None) or getattr(link, "ag_await", None)
    return lines


class Server(uvicorn.Server):
    """uvicorn keeps its own signal handling. On the first signal the service drains
    before uvicorn is told to exit: readiness off (/health 503), no new reads, SSE
    streams ended, in-flight chunks given the grace period, while the API keeps
    answering (job status, cancel); then the listener closes and the lifespan
    shutdown commits and closes the rest. A second signal stops at once (what is
    unfinished stays pending)."""

    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self._drain_requested = False
        self._draining: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self._drain_requested and not self.should_exit and self.started:
            # The first signal: drain first, close the listener after.
            log.info("received signal %d: shutting down gracefully (draining; the API answers until then)", sig)
            self._drain_requested = True
            asyncio.get_event_loop().call_soon_threadsafe(self._start_drain, sig, frame)
            return
        if self._drain_requested and (self._draining is None or not self._draining.done()):
            log.warning("received signal %d again: stopping now; unfinished chunks stay pending", sig)
        self._exit(sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        # In the event loop, not in the signal handler that asked for it.
        self._draining = asyncio.get_running_loop().create_task(self._drain_then_exit(sig, frame), name="drain")

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        try:
            await self.service.drain()
        except Exception:
            log.exception("the drain failed; stopping")
        self._exit(sig, frame)

    def _exit(self, sig: int, frame: FrameType | None) -> None:
        self.service.begin_shutdown()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the captured signal after its shutdown, so the
        # process would die "killed by SIGTERM". A drained, graceful stop is a
        # success: exit 0.
        self._captured_signals.clear()


def serve(settings: Settings, processor_factory: ProcessorFactory = LightRAGProcessor) -> int:
    async def run() -> None:
        service = Service.build(settings, processor_factory)
        config = uvicorn.Config(
            service.app(),
            host=settings.listen_host,
            port=settings.listen_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # HTTP requests are short and SSE streams end at the signal; the
            # worker pool's own grace period runs in the lifespan shutdown.
            timeout_graceful_shutdown=HTTP_GRACEFUL_SECONDS,
        )
        server = Server(config, service)
        await server.serve()
        if not server.started:
            raise SystemExit(1)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        _end_leftover_tasks(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    return 0


LEFTOVER_SECONDS = 5.0  # a task still running once the service stopped gets this long to end when cancelled


def _end_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs once the service has stopped, and wait for it at most
    LEFTOVER_SECONDS (asyncio.run would wait forever). A task of a library that
    swallows its cancellation (found: one of LightRAG's, after a host was superseded
    by the writer fence) must not keep a stopped process alive: it is named in the
    journal and left behind."""
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    _done, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=LEFTOVER_SECONDS))
    for task in pending:
        frames = task.get_stack(limit=1)
        where = f"{frames[0].f_code.co_filename}:{frames[0].f_lineno}" if frames else "?"
        log.warning("task %s did not end when cancelled after the stop (at %s); left behind", task.get_name(), where)
