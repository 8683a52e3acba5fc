"""Health: a cheap liveness answer and a detailed dependency report."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .build_info import BuildInfo
from .jobs.history import JobHistory
from .jobs.projection import JobProjection
from .metrics import Metrics
from .queue.stream import IngestionStream
from .settings import Settings
from .workers.breaker import DependencyReport
from .workers.pool import WorkerPool
from .workers.processor import ChunkProcessor
from .workers.stalls import CallWatch

CHECK_TIMEOUT = 3.0


class HealthService:
    """Answers /health from the process alone and /health/detailed by asking every
    dependency (CHECK_TIMEOUT each), setting the dependency_up gauges as it goes.
    Holds nothing but the components it asks and its start time."""

    def __init__(
        self,
        *,
        settings: Settings,
        redis: Redis,
        history: JobHistory,
        stream: IngestionStream,
        processor: ChunkProcessor,
        pool: WorkerPool,
        projection: JobProjection,
        metrics: Metrics,
        build: BuildInfo,
        calls: CallWatch,
    ) -> None:
        self._calls = calls
        self.draining = False
        self._s = settings
        self._build = build
        self._redis = redis
        self._history = history
        self._stream = stream
        self._processor = processor
        self._pool = pool
        self._projection = projection
        self._metrics = metrics
        self._started = time.monotonic()

    def begin_drain(self) -> None:
        """From the stop signal on, /health answers 503 (draining): a load balancer
        sends new work elsewhere while the API still answers and the pool drains."""
        self.draining = True

    def basic(self) -> dict[str, Any]:
        return {
            "status": "draining" if self.draining else "healthy",
            "timestamp": datetime.now(UTC).isoformat(),
            "version": self._build.version,
            "tree_sha256": self._build.tree_sha256,
            "release": self._build.release,
            "uptime_seconds": round(time.monotonic() - self._started, 1),
        }

    async def detailed(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, report): 503 when a required dependency is down.

        Required: Redis (the queue) and what the processor says it needs.
        PostgreSQL is reported but not required: ingestion goes on with Redis
        and the job rows catch up when it returns.
        """
        redis_report, postgres_report, processor_reports = await asyncio.gather(
            _probe("redis", self._redis.ping(), required=True),
            _probe("postgres", self._history.ping(), required=False),
            self._processor_reports(),
        )
        reports = [redis_report, postgres_report, *processor_reports]
        for report in reports:
            self._metrics.dependency_up.labels(report.name).set(1 if report.up else 0)
        pool = await self._pool_report(redis_up=redis_report.up)
        down_required = [report.name for report in reports if report.required and not report.up]
        if self.draining:
            down_required.append("draining")
        if pool["status"] not in ("running", "paused"):
            down_required.append("worker_pool")
        degraded = any(not report.up for report in reports)
        body = {
            **self.basic(),
            "status": "unhealthy" if down_required else ("degraded" if degraded else "healthy"),
            "build": self._build.as_dict(),
            "endpoint_calls": self._calls.report(),
            "dependencies": {report.name: report.as_dict() for report in reports},
            "worker_pool": pool,
            "postgres_sync": {
                "available": self._projection.pg_available,
                "rejected_jobs": [item.as_dict(job_id) for job_id, item in sorted(self._projection.rejected.items())],
            },
        }
        if down_required:
            body["down"] = down_required
        return (503 if down_required else 200), body

    async def _processor_reports(self) -> list[DependencyReport]:
        try:
            return await asyncio.wait_for(self._processor.check(), CHECK_TIMEOUT + 1)
        except Exception as exc:  # noqa: BLE001 - the processor's own check failed: report it, required
            return [DependencyReport("processor", False, True, {"error": f"{type(exc).__name__}: {exc}"})]

    async def _pool_report(self, *, redis_up: bool) -> dict[str, Any]:
        active = self._pool.active_workers
        configured = self._s.pool_size
        paused = self._pool.gate.open_breakers()
        status = "running" if active == configured else ("degraded" if active else "stopped")
        report: dict[str, Any] = {
            "status": "paused" if paused and active else status,
            "active_workers": active,
            "configured_workers": configured,
            "processing_rate": self._pool.rate.rate(),
            "paused": [
                {"dependency": b.name, "since": b.since, "reason": b.reason, "probes": b.probes} for b in paused
            ],
            "workers": self._workers(),
            "taken_over_from_silent_consumers": self._pool.reclaimer.claimed_total,
        }
        if redis_up:
            try:
                stats = await self._stream.stats()
            except RedisError:
                return report
            report.update(queue_depth=stats.queue_depth, pending=stats.pending, dead_letters=stats.dead_letters)
        return report

    def _workers(self) -> list[dict[str, Any]]:
        """This host's workers, as their heartbeats say."""
        last = self._pool.heartbeats.last_beat
        age = round(time.monotonic() - last, 1) if last is not None else None
        return [
            {"consumer": w.consumer, "state": w.state, "tasks_done": w.tasks_done, "heartbeat_age_seconds": age}
            for w in self._pool.worker_states()
        ]


async def _probe(name: str, probe: Awaitable[object], *, required: bool) -> DependencyReport:
    started = time.monotonic()
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - any failure means "down"
        return DependencyReport(name, False, required, {"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    return DependencyReport(name, True, required, {"latency_ms": round((time.monotonic() - started) * 1000, 1)})
