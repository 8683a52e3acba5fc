"""Prometheus metrics, in a registry of the service's own (no process-global state)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .queue.stream import QueueStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROCESSING_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The service's Prometheus series, in a registry of its own (two instances never
    share one). The queue gauges are read from the stream's statistics at each scrape,
    and left out (shield_redis_up 0) when Redis does not answer it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.chunks_processed = Counter("shield_chunks_processed", "Chunks processed into LightRAG", registry=r)
        self.chunks_failed = Counter("shield_chunks_failed", "Chunks that failed for good", registry=r)
        self.chunks_retried = Counter("shield_chunks_retried", "Chunk retries after a failed attempt", registry=r)
        self.chunks_dead_lettered = Counter(
            "shield_chunks_dead_lettered", "Chunks moved to the dead-letter stream", registry=r
        )
        self.processing_seconds = Histogram(
            "shield_chunk_processing_seconds",
            "Processing time per chunk (batch time divided by batch size)",
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.redis_up = Gauge(
            "shield_redis_up",
            "1 when this scrape read the queue from Redis; 0 when Redis did not answer (the queue gauges are then "
            "absent)",
            registry=r,
        )
        self.queue = QueueGauges()
        r.register(self.queue)
        self.chunks_deferred = Counter(
            "shield_chunks_deferred",
            "Chunk attempts that failed because of a dependency (no attempt spent; retried once it answers)",
            registry=r,
        )
        self.pool_paused = Gauge(
            "shield_pool_paused", "1 while the pool is paused on this dependency", ["dependency"], registry=r
        )
        self.pool_pauses = Counter(
            "shield_pool_pauses", "Times the pool paused on this dependency", ["dependency"], registry=r
        )
        self.chunks_skipped = Counter(
            "shield_chunks_skipped", "Chunks of cancelled jobs acked without being processed", registry=r
        )
        self.chunks_duplicate = Counter(
            "shield_chunks_duplicate",
            "Chunks whose text the graph already held (content duplicates: processed, listed per job)",
            registry=r,
        )
        self.active_workers = Gauge("shield_active_workers", "Workers running in this process", registry=r)
        self.configured_workers = Gauge(
            "shield_configured_workers", "Workers this process is configured to run", registry=r
        )
        self.dependency_up = Gauge(
            "shield_dependency_up",
            "1 while the dependency answers (as /health/detailed sees it)",
            ["dependency"],
            registry=r,
        )
        self.pg_sync_pending_jobs = Gauge(
            "shield_pg_sync_pending_jobs", "Jobs whose PostgreSQL row the last sync could not write", registry=r
        )
        self.pg_sync_rejected_jobs = Gauge(
            "shield_pg_sync_rejected_jobs", "Jobs whose row PostgreSQL refuses (set aside, retried alone)", registry=r
        )
        self.pg_sync_last_success = Gauge(
            "shield_pg_sync_last_success_timestamp_seconds",
            "When the PostgreSQL sync last wrote (or had nothing to write), Unix time",
            registry=r,
        )
        self.sse_clients = Gauge("shield_sse_clients", "Connected Server-Sent Events clients", registry=r)
        self._endpoint_and_build_metrics(r)
        self._llm_slot_metrics(r)

    def _endpoint_and_build_metrics(self, r: CollectorRegistry) -> None:
        """The calls to the LLM and embedding endpoints (workers/stalls.py), the writer fence's refusals
        (lightrag/fence.py) and the code this process runs."""
        self.endpoint_calls_in_flight = Gauge(
            "shield_endpoint_calls_in_flight",
            "Calls to the endpoint (llm, embedding) waiting for an answer",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_calls_stalled = Gauge(
            "shield_endpoint_calls_stalled",
            "Calls to the endpoint waiting longer than the stall threshold right now",
            ["endpoint"],
            registry=r,
        )
        self.endpoint_stalled_calls = Counter(
            "shield_endpoint_stalled_calls",
            "Calls to the endpoint that waited longer than the stall threshold",
            ["endpoint"],
            registry=r,
        )
        self.fence_refused_writes = Counter(
            "shield_fence_refused_writes",
            "Writes to LightRAG's PostgreSQL storages refused by the writer fence (another host took the workspace)",
            registry=r,
        )
        self.build_info = Gauge(
            "shield_build_info",
            "1, labelled with the version, the SHA-256 of the package's file tree and the release this process runs",
            ["version", "tree_sha256", "release"],
            registry=r,
        )

    def _llm_slot_metrics(self, r: CollectorRegistry) -> None:
        """The chat calls' slots, on this host and across the cluster, and the 429 back-off (lightrag/llm/slots.py)."""
        self.llm_slots = Gauge(
            "shield_llm_slots", "Chat calls this host may make at once (orchestrator_workers_llm_max_async)", registry=r
        )
        self.llm_slots_in_use = Gauge(
            "shield_llm_slots_in_use",
            "This host's LLM slots taken: chat calls in the endpoint, or waiting for the 429 back-off "
            "or a cluster slot",
            registry=r,
        )
        self.llm_cluster_max_async = Gauge(
            "shield_llm_cluster_max_async",
            "The cap on chat calls at once across the hosts sharing Redis (orchestrator_workers_llm_cluster_max_async; "
            "0: none)",
            registry=r,
        )
        self.llm_cluster_slots_in_use = Gauge(
            "shield_llm_cluster_slots_in_use",
            "Cluster slots leased in Redis by every host, read at the scrape (0 without a cap)",
            registry=r,
        )
        self.llm_cluster_slot_wait_seconds = Counter(
            "shield_llm_cluster_slot_wait_seconds",
            "Seconds this host's chat calls waited for a cluster slot (its rate: calls waiting, on average)",
            registry=r,
        )
        self.llm_rate_limited = Counter(
            "shield_llm_rate_limited",
            "429 answers of the LLM endpoint, the SDK's retried ones included (each starts or extends the back-off)",
            registry=r,
        )
        self.llm_backoff_seconds = Gauge(
            "shield_llm_backoff_seconds", "Seconds left of this host's 429 back-off (0: none)", registry=r
        )

    def render(self, stats: QueueStats | None, sse_clients: int) -> bytes:
        """The text format, with the queue gauges from `stats`: None (Redis did not answer)
        leaves them out and sets shield_redis_up to 0; every other series is the process's own."""
        self.redis_up.set(0 if stats is None else 1)
        self.queue.stats = stats
        self.sse_clients.set(sse_clients)
        return generate_latest(self.registry)


class QueueGauges(Collector):
    """The gauges read from Redis at the scrape (the streams' statistics): absent from
    the exposition when Redis did not answer, rather than a stale or made-up value."""

    GAUGES = (
        ("shield_queue_depth", "Chunks accepted and not finished (waiting or being processed)", "queue_depth"),
        ("shield_pending", "Chunks delivered to a worker and not yet acked", "pending"),
        ("shield_dead_letters", "Entries in the dead-letter stream", "dead_letters"),
        ("shield_queue_high_priority_depth", "Chunks of high-priority jobs not finished yet", "high_priority_depth"),
    )

    def __init__(self) -> None:
        self.stats: QueueStats | None = None

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(name, documentation) for name, documentation, _ in self.GAUGES]

    def collect(self) -> Iterable[Metric]:
        stats = self.stats
        if stats is None:
            return []
        return [
            GaugeMetricFamily(name, documentation, value=getattr(stats, field))
            for name, documentation, field in self.GAUGES
        ]


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
