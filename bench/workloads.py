"""W1, W4, W5 and W7 (and what they share with W2/W3/W6: the texts, posting a job, waiting for it).
Each run function measures one run and returns its figures; W2, W3 and W6 are in ingest.py."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
from infra import (
    BENCH,
    BenchError,
    Infra,
    Proc,
    ServiceLauncher,
    SSEClient,
    group_cpu_seconds,
    self_cpu_seconds,
    spawn,
)
from redis.asyncio import Redis

DONE_KEY = "bench:done"
PEER_QUEUE = "bench"
EVENTS_STREAM = "shield:events"
WARMUP_TASKS = 32

PEOPLE = ["Alice Johnson", "Bruno Martins", "Chen Wei", "Dana Okafor", "Erik Lindqvist", "Fatima Zahra"]
ORGS = ["Acme Corporation", "Globex Industries", "Initech Systems", "Umbrella Research", "Stark Logistics"]
CITIES = ["Berlin", "Lisbon", "Nairobi", "Osaka", "Toronto"]


def chunk_text(i: int, tag: str) -> str:
    """About 200 bytes of prose with named entities, unique per (tag, i): LightRAG dedups identical text."""
    person, other = PEOPLE[i % len(PEOPLE)], PEOPLE[(i + 1) % len(PEOPLE)]
    org, city = ORGS[i % len(ORGS)], CITIES[i % len(CITIES)]
    return (
        f"{person} met {other} at the {org} office in {city} during review {tag}-{i}. "
        f"{person} leads the {org} storage team and reports progress to {other}."
    )


def job_body(texts: Iterable[str], offset: int = 0, priority: str | None = None) -> bytes:
    chunks = [
        {"text": text, "source_uri": f"file:///bench/doc-{offset + n}.txt", "metadata": {"n": offset + n}}
        for n, text in enumerate(texts)
    ]
    body: dict[str, Any] = {"chunks": chunks, "source_type": "text"}
    if priority is not None:
        body["priority"] = priority
    return json.dumps(body).encode()


async def post_job(http: httpx.AsyncClient, body: bytes) -> str:
    response = await http.post("/lightrag/ingest-async", content=body, headers={"Content-Type": "application/json"})
    if response.status_code != 202:
        raise BenchError(f"POST /lightrag/ingest-async: HTTP {response.status_code} {response.text[:300]}")
    job_id: str = response.json()["job_id"]
    return job_id


async def poll(predicate: Callable[[], Awaitable[bool] | bool], within: float, what: str, proc: Proc) -> float:
    """Poll every 10 ms; return the wall time at which the predicate held."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.time()
        proc.check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(0.01)


class TimedOut(BenchError):
    """A wait ran past its limit."""


@dataclass
class JobWatch:
    """Finished jobs as SSE delivers them: job_id -> (event type, receipt wall time)."""

    finished: dict[str, tuple[str, float]]

    def __init__(self) -> None:
        self.finished = {}
        self.changed = asyncio.Event()

    def on_event(self, event_type: str, data: dict[str, Any], now: float) -> None:
        self.finished.setdefault(data["job_id"], (event_type, now))
        self.changed.set()

    async def wait(self, job_ids: list[str], within: float, proc: Proc) -> float:
        """Wait until every job finished; return the receipt time of the last one."""
        deadline = time.monotonic() + within
        while not all(job_id in self.finished for job_id in job_ids):
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)
            proc.check()
            if time.monotonic() > deadline:
                done = sum(job_id in self.finished for job_id in job_ids)
                raise TimedOut(f"timed out after {within:.0f}s: {done} of {len(job_ids)} jobs finished")
        failed = [job_id for job_id in job_ids if self.finished[job_id][0] != "ingestion.completed"]
        if failed:
            raise BenchError(f"{len(failed)} jobs failed, e.g. {failed[0]}")
        return max(self.finished[job_id][1] for job_id in job_ids)


# --- W1: pool overhead ----------------------------------------------------------------
Enqueue = Callable[[list[str]], Awaitable[None]]


@dataclass
class W1Run:
    rate: float  # chunks (tasks) per second, first enqueue -> last completion
    cpu: dict[str, float]  # CPU seconds in that window: consumer, redis, enqueuer (this harness)


class CpuMeter:
    """CPU seconds spent by the consumer's process group, Redis and this harness since creation."""

    def __init__(self, consumer: Proc, infra: Infra) -> None:
        assert infra.redis_proc is not None
        self.pgids = {"consumer": consumer.pid, "redis": infra.redis_proc.pid}
        self.start = self.read()

    def read(self) -> dict[str, float]:
        return {**{k: group_cpu_seconds(v) for k, v in self.pgids.items()}, "enqueuer": self_cpu_seconds()}

    def used(self) -> dict[str, float]:
        end = self.read()
        return {key: end[key] - self.start[key] for key in end}


@dataclass
class Context:
    infra: Infra
    launcher: ServiceLauncher
    peers_python: str
    concurrency: int

    def redis(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.infra.redis_port, decode_responses=True)

    def worker_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "BENCH_REDIS_URL": self.infra.redis_url,
            "BENCH_CONCURRENCY": str(self.concurrency),
            "PYTHONPATH": str(BENCH),
        }


async def w1_service(ctx: Context, n: int, job_size: int) -> W1Run:
    """n chunks in jobs of job_size, POSTed one after another; the clock stops when the last
    job's ingestion.completed reached an SSE client and PostgreSQL held every job's final row."""
    bodies = [job_body((chunk_text(i, "w1") for i in range(k, min(k + job_size, n))), k) for k in range(0, n, job_size)]
    service = await ctx.launcher.start("w1-service", noop=True)
    watch = JobWatch()
    try:
        async with service.client() as http, SSEClient(service, "ingestion.completed,ingestion.failed", watch.on_event):
            warm = await post_job(http, job_body(chunk_text(i, "warm") for i in range(WARMUP_TASKS)))
            await watch.wait([warm], 60, service.proc)
            meter = CpuMeter(service.proc, ctx.infra)
            start = time.time()
            job_ids = [await post_job(http, body) for body in bodies]
            sse_end = await watch.wait(job_ids, max(120.0, n / 100), service.proc)

            async def in_postgres() -> bool:
                reply = (await http.get("/jobs", params={"status": "completed", "limit": 100})).json()
                done = {job["job_id"] for job in reply["jobs"] if job["chunks_processed"] == job["chunks_total"]}
                return reply["source"] == "postgresql" and done.issuperset(job_ids)

            pg_end = await poll(in_postgres, 60, "job rows in PostgreSQL", service.proc)
            cpu = meter.used()
        return W1Run(n / (max(sse_end, pg_end) - start), cpu)
    finally:
        service.proc.stop()


async def wait_done(redis: Redis, target: int, within: float, proc: Proc) -> float:
    """Wait until the workers reported `target` completions; return the last completion's time."""
    deadline = time.monotonic() + within
    while True:
        fields = await redis.hgetall(DONE_KEY)
        count = sum(int(value.split()[0]) for value in fields.values())
        if count >= target:
            return max(float(value.split()[1]) for value in fields.values())
        proc.check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {within:.0f}s with {count} of {target} tasks done")
        await asyncio.sleep(0.01)


async def bounded(items: list[str], call: Callable[[str], Awaitable[Any]], limit: int = 32) -> None:
    """Await call(item) for every item, at most `limit` at a time."""
    feed = iter(items)

    async def lane() -> None:
        for item in feed:
            await call(item)

    await asyncio.gather(*(lane() for _ in range(limit)))


@contextlib.asynccontextmanager
async def streaq_client(ctx: Context) -> AsyncIterator[Enqueue]:
    from peers import streaq_app

    async def enqueue(texts: list[str]) -> None:
        await streaq_app.worker.enqueue_many([streaq_app.noop.enqueue(text) for text in texts])

    async with streaq_app.worker:
        yield enqueue


@contextlib.asynccontextmanager
async def saq_client(ctx: Context) -> AsyncIterator[Enqueue]:
    from saq import Queue

    queue = Queue.from_url(ctx.infra.redis_url, name=PEER_QUEUE)
    await queue.connect()

    async def enqueue(texts: list[str]) -> None:
        await bounded(texts, lambda text: queue.enqueue("noop", text=text))

    try:
        yield enqueue
    finally:
        await queue.disconnect()


@contextlib.asynccontextmanager
async def taskiq_client(ctx: Context) -> AsyncIterator[Enqueue]:
    from peers import taskiq_app

    async def enqueue(texts: list[str]) -> None:
        await bounded(texts, taskiq_app.noop.kiq)

    await taskiq_app.broker.startup()
    try:
        yield enqueue
    finally:
        await taskiq_app.broker.shutdown()


@contextlib.asynccontextmanager
async def arq_client(ctx: Context) -> AsyncIterator[Enqueue]:
    from arq.connections import RedisSettings, create_pool

    pool = await create_pool(RedisSettings.from_dsn(ctx.infra.redis_url), default_queue_name=PEER_QUEUE)

    async def enqueue(texts: list[str]) -> None:
        await bounded(texts, lambda text: pool.enqueue_job("noop", text))

    try:
        yield enqueue
    finally:
        await pool.aclose()


@contextlib.asynccontextmanager
async def celery_client(ctx: Context) -> AsyncIterator[Enqueue]:
    from peers import celery_app

    def send(texts: list[str]) -> None:
        for text in texts:
            celery_app.noop.delay(text)

    async def enqueue(texts: list[str]) -> None:
        await asyncio.to_thread(send, texts)

    yield enqueue


@dataclass
class Peer:
    name: str
    distribution: str
    module: str
    command: Callable[[str, int], list[str]]  # (venv bin dir, concurrency) -> worker argv
    setting: str
    client: Callable[[Context], contextlib.AbstractAsyncContextManager[Enqueue]]

    def version(self) -> str:
        return metadata.version(self.distribution)

    def unavailable(self) -> str | None:
        """Why this peer cannot run here, or None."""
        try:
            importlib.import_module(f"peers.{self.module}")
        except Exception as exc:
            return f"cannot import: {type(exc).__name__}: {exc}"
        return None


PEERS = [
    Peer(
        "streaq",
        "streaq",
        "streaq_app",
        lambda bin_dir, _c: [f"{bin_dir}/streaq", "run", "peers.streaq_app:worker"],
        "Worker(concurrency=32), 1 process; enqueue_many per 1,000",
        streaq_client,
    ),
    Peer(
        "saq",
        "saq",
        "saq_app",
        lambda bin_dir, _c: [f"{bin_dir}/saq", "peers.saq_app.settings"],
        "concurrency=32, 1 process",
        saq_client,
    ),
    Peer(
        "taskiq",
        "taskiq-redis",
        "taskiq_app",
        lambda bin_dir, c: [
            f"{bin_dir}/taskiq",
            "worker",
            "peers.taskiq_app:broker",
            "--workers",
            "1",
            "--max-async-tasks",
            str(c),
            "--log-level",
            "WARNING",
        ],
        "RedisStreamBroker, --workers 1 --max-async-tasks 32",
        taskiq_client,
    ),
    Peer(
        "arq",
        "arq",
        "arq_app",
        lambda bin_dir, _c: [f"{bin_dir}/arq", "peers.arq_app.WorkerSettings"],
        "max_jobs=32, 1 process",
        arq_client,
    ),
    Peer(
        "celery",
        "celery",
        "celery_app",
        lambda bin_dir, c: [
            f"{bin_dir}/celery",
            "-A",
            "peers.celery_app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(c),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        "--pool threads --concurrency 32 (Redis broker, no result backend)",
        celery_client,
    ),
]


async def w1_peer(ctx: Context, peer: Peer, n: int, batch: int) -> W1Run:
    """n no-op tasks enqueued in batches of `batch` with the peer's client API; the clock
    stops at the last task's completion inside its worker."""
    texts = [chunk_text(i, "w1") for i in range(n)]
    ctx.infra.redis().flushall()
    redis = ctx.redis()
    bin_dir = str(Path(ctx.peers_python).parent)
    proc = spawn(f"w1-{peer.name}", peer.command(bin_dir, ctx.concurrency), ctx.worker_env(), ctx.infra.logs, BENCH)
    try:
        async with peer.client(ctx) as enqueue:
            await enqueue([chunk_text(i, "warm") for i in range(WARMUP_TASKS)])
            await wait_done(redis, WARMUP_TASKS, 60, proc)
            meter = CpuMeter(proc, ctx.infra)
            start = time.time()
            for k in range(0, n, batch):
                await enqueue(texts[k : k + batch])
            end = await wait_done(redis, WARMUP_TASKS + n, max(120.0, n / 100), proc)
            cpu = meter.used()
        return W1Run(n / (end - start), cpu)
    finally:
        proc.stop()
        await redis.aclose()


async def w1_floor(ctx: Context, n: int, batch: int, python: str, consumers: int = 1) -> W1Run:
    """XADD in pipelined batches of `batch` from here; bench/floor.py consumes (XREADGROUP
    COUNT 100, XACK + XDEL pipelined) on `python` (the service's interpreter, or the peers' one
    that has hiredis)."""
    stream, group = "bench:floor", "floor"
    job_id = str(uuid.uuid4())
    entries = [
        {
            "job_id": job_id,
            "index": str(i),
            "text": chunk_text(i, "w1"),
            "source_uri": f"file:///bench/doc-{i}.txt",
            "source_type": "text",
            "metadata": json.dumps({"n": i}, separators=(",", ":")),
        }
        for i in range(n)
    ]
    ctx.infra.redis().flushall()
    redis = ctx.redis()
    await redis.xgroup_create(stream, group, id="0", mkstream=True)
    argv = [python, str(BENCH / "floor.py"), ctx.infra.redis_url, stream, group, str(consumers)]
    proc = spawn("w1-floor", argv, ctx.worker_env(), ctx.infra.logs, BENCH)

    async def produce(items: list[dict[str, str]]) -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for fields in items:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            await pipe.execute()

    try:
        await produce(entries[:WARMUP_TASKS])
        await wait_done(redis, WARMUP_TASKS, 60, proc)
        meter = CpuMeter(proc, ctx.infra)
        start = time.time()
        for k in range(0, n, batch):
            await produce(entries[k : k + batch])
        end = await wait_done(redis, WARMUP_TASKS + n, max(120.0, n / 100), proc)
        return W1Run(n / (end - start), meter.used())
    finally:
        proc.stop()
        await redis.aclose()


# --- W4: latency of an idle pool ---------------------------------------------------------------
W4_STAGES = ("accept", "pickup", "process", "notify")


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def w4_latency(ctx: Context, jobs: int) -> tuple[list[float], dict[str, list[float]]]:
    """Single-chunk jobs one after another: POST sent -> ingestion.completed received (ms).
    Also where the time went, from the job's own timestamps (all in ms): accept = POST sent ->
    created_at, pickup = created_at -> started_at, process = started_at -> completed_at,
    notify = completed_at -> event received."""
    service = await ctx.launcher.start("w4-service", noop=True)
    watch = JobWatch()
    latencies: list[float] = []
    stages: dict[str, list[float]] = {stage: [] for stage in W4_STAGES}
    try:
        async with service.client() as http, SSEClient(service, "ingestion.completed", watch.on_event):
            for i in range(-5, jobs):  # five unmeasured jobs first
                body = job_body([chunk_text(i, "w4")])
                sent = time.time()
                job_id = await post_job(http, body)
                received = await watch.wait([job_id], 30, service.proc)
                if i < 0:
                    continue
                latencies.append((received - sent) * 1000)
                job = (await http.get(f"/jobs/{job_id}")).json()
                marks = [
                    sent,
                    _epoch(job["created_at"]),
                    _epoch(job["started_at"]),
                    _epoch(job["completed_at"]),
                    received,
                ]
                for stage, begin, end in zip(W4_STAGES, marks, marks[1:], strict=False):
                    stages[stage].append((end - begin) * 1000)
        return latencies, stages
    finally:
        service.proc.stop()


# --- W5: SSE fan-out ---------------------------------------------------------------------------
async def w5_fanout(ctx: Context, clients: int, events: int, rate: float) -> dict[str, Any]:
    """`clients` SSE clients; `events` events XADDed to the events stream at `rate` per second,
    each carrying its send time; latency = receipt - send (ms), over every client and event."""
    service = await ctx.launcher.start("w5-service", noop=True)
    received: list[dict[int, float]] = [{} for _ in range(clients)]
    complete: list[int] = []  # clients that have every event
    all_complete = asyncio.Event()

    def handler(k: int) -> Callable[[str, dict[str, Any], float], None]:
        seen = received[k]

        def on_event(_type: str, data: dict[str, Any], now: float) -> None:
            seq = data.get("bench_seq")
            if isinstance(seq, int) and seq not in seen:
                seen[seq] = (now - data["sent"]) * 1000
                if len(seen) == events:
                    complete.append(k)
                    if len(complete) == clients:
                        all_complete.set()

        return on_event

    redis = ctx.redis()
    try:
        async with contextlib.AsyncExitStack() as stack:
            http = await stack.enter_async_context(service.client(timeout=600, connections=clients + 5))
            for k in range(clients):
                await stack.enter_async_context(SSEClient(service, "worker.task_failed", handler(k), http))
            meter = CpuMeter(service.proc, ctx.infra)
            begin = time.monotonic()
            for seq in range(events):
                pause = begin + seq / rate - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                data = {
                    "worker_id": "bench-producer",
                    "job_id": "00000000-0000-0000-0000-000000000000",
                    "chunk_index": seq,
                    "attempt": 1,
                    "max_attempts": 3,
                    "error": "synthetic event of the SSE fan-out benchmark",
                    "bench_seq": seq,
                    "sent": time.time(),
                }
                await redis.xadd(
                    EVENTS_STREAM,
                    {"type": "worker.task_failed", "data": json.dumps(data, separators=(",", ":"))},
                    maxlen=10000,
                    approximate=True,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_complete.wait(), 30)
            cpu = meter.used()
        latencies = [value for seen in received for value in seen.values()]
        missed = sum(events - len(seen) for seen in received)
        frames = max(len(latencies), 1)
        return {
            "latencies": latencies,
            "missed": missed,
            "service_cpu_us_per_frame": cpu["consumer"] * 1e6 / frames,
            "harness_cpu_us_per_frame": cpu["enqueuer"] * 1e6 / frames,
        }
    finally:
        await redis.aclose()
        service.proc.stop()


# --- W7: priorities ----------------------------------------------------------------------------
W7_JOB_SIZE = 1000  # the role's max_chunks_per_job: the backlog is posted in jobs of this size


async def w7_priority(ctx: Context, backlog: int, urgent: int, ms_per_chunk: float = 0) -> dict[str, float]:
    """A small job posted right behind a backlog of `backlog` chunks (no-op processor,
    taking `ms_per_chunk` per chunk): seconds from its POST to its ingestion.completed,
    once at priority high and, for comparison, once at normal; with the queue depth
    when it was posted and the backlog's chunks still waiting when it completed."""
    service = await ctx.launcher.start("w7-service", noop=True, noop_ms_per_chunk=ms_per_chunk)
    watch = JobWatch()
    figures: dict[str, float] = {}
    try:
        async with service.client() as http, SSEClient(service, "ingestion.completed,ingestion.failed", watch.on_event):
            warm = await post_job(http, job_body(chunk_text(i, "w7-warm") for i in range(WARMUP_TASKS)))
            await watch.wait([warm], 60, service.proc)
            for priority in ("high", "normal"):
                tag = f"w7-{priority}-{uuid.uuid4().hex[:6]}"
                texts = [chunk_text(i, tag) for i in range(backlog)]
                backlog_ids = [
                    await post_job(http, job_body(texts[k : k + W7_JOB_SIZE], k))
                    for k in range(0, backlog, W7_JOB_SIZE)
                ]
                body = job_body((chunk_text(i, f"{tag}-urgent") for i in range(urgent)), priority=priority)
                figures[f"{priority}_depth_at_post"] = float((await http.get("/queue")).json()["queue_depth"])
                sent = time.time()
                urgent_id = await post_job(http, body)
                done = await watch.wait([urgent_id], 120, service.proc)
                jobs = [(await http.get(f"/jobs/{job_id}")).json() for job_id in backlog_ids]
                figures[f"{priority}_seconds"] = done - sent
                figures[f"{priority}_backlog_left"] = float(
                    sum(job["chunks_total"] - job["chunks_processed"] for job in jobs)
                )
                await watch.wait(backlog_ids, 300, service.proc)
        return figures
    finally:
        service.proc.stop()
