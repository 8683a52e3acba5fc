"""What the workloads run on: processes, Redis, PostgreSQL, the LLM stand-in, the service, an SSE client.

Everything listens on loopback ports chosen at random; every process is started
in a session of its own and stopped by its process-group id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
API_TOKEN = "bench-token-not-a-secret"
PG_PASSWORD = "bench-password-not-a-secret"
EMBEDDING_DIM = 768  # the role's default (nomic-embed-text)

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
import render_service  # noqa: E402

from tests.support.servers import PostgresServer, Process, RedisServer, Standin, free_port  # noqa: E402

Proc = Process


class BenchError(RuntimeError):
    """A contestant or a workload could not run; the message says why."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- statistics ---------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1], "runs": values}


# --- processes -------------------------------------------------------------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every live process in process group `pgid`."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields after the command: state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    """VmHWM of process `pid`: its peak resident set size, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def spawn(name: str, argv: list[str], env: Mapping[str, str], logdir: Path, cwd: Path | None = None) -> Proc:
    return Process.spawn(name, argv, env, logdir, cwd)


async def wait_for(predicate: Callable[[], Any], within: float, what: str, proc: Proc | None = None) -> Any:
    deadline = time.monotonic() + within
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail(600)!r}")
        try:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except (OSError, httpx.HTTPError, redis.RedisError) as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise BenchError(f"timed out after {within:.0f}s waiting for {what} (last error: {last!r})")


# --- Redis and PostgreSQL ------------------------------------------------------------
class Infra:
    """Redis and PostgreSQL of the benchmark's own (tests/support/servers.py), in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis_server: RedisServer | None = None
        self.postgres: PostgresServer | None = None

    @property
    def redis_port(self) -> int:
        assert self.redis_server is not None
        return self.redis_server.port

    @property
    def redis_proc(self) -> Proc | None:
        return self.redis_server.proc if self.redis_server else None

    @property
    def pg_port(self) -> int:
        assert self.postgres is not None
        return self.postgres.port

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def redis(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.redis_port, decode_responses=True)

    async def start(self) -> None:
        self.redis_server = await asyncio.to_thread(RedisServer.start, self.logs)
        self.postgres = await asyncio.to_thread(PostgresServer.start_new, self.root / "postgres", PG_PASSWORD)

    def reset(self) -> None:
        """Empty Redis and the job table between runs."""
        assert self.postgres is not None
        self.redis().flushall()
        self.postgres.admin("DROP TABLE IF EXISTS job_duplicates, job_status, alembic_version")

    def stop(self) -> None:
        if self.postgres is not None and self.postgres.running:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.postgres.stop("fast")
        if self.redis_server is not None:
            self.redis_server.stop()
            self.redis_server = None


# --- the LLM stand-in ------------------------------------------------------------------
async def start_standin(
    python: str, logdir: Path, delay_ms: int, name: str, embedding_delay_ms: int | None = None
) -> Standin:
    """The stand-in, every chat call answered after delay_ms, every embedding call after
    embedding_delay_ms (None: delay_ms too)."""
    extra = ["--delay-ms", str(delay_ms), "--no-failure-injection", "--log-level", "warning"]
    if embedding_delay_ms is not None:
        extra += ["--embedding-delay-ms", str(embedding_delay_ms)]
    return await asyncio.to_thread(
        Standin.start, logdir, embedding_dim=EMBEDDING_DIM, extra=extra, name=name, python=python
    )


# --- the service ---------------------------------------------------------------------
@dataclass
class Service:
    proc: Proc
    port: int
    env: dict[str, str] = field(default_factory=dict)  # the environment it was started with

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 120, connections: int = 100) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    def peak_rss_mb(self) -> float:
        """VmHWM of the service process: its peak resident set size."""
        return peak_rss_mb(self.proc.pid)


@dataclass
class ServiceLauncher:
    python: str
    infra: Infra
    extra_env: dict[str, str] = field(default_factory=dict)  # experiments: ORCHESTRATOR_* overrides
    src: Path = field(init=False)

    def __post_init__(self) -> None:
        self.src = render_service.render(self.infra.root / "src").parent

    def env(self, state_dir: Path, port: int, llm_url: str, overrides: Mapping[str, Any]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
        env.update(
            PYTHONPATH=str(self.src),
            ORCHESTRATOR_LISTEN_HOST="127.0.0.1",
            ORCHESTRATOR_LISTEN_PORT=str(port),
            ORCHESTRATOR_REDIS_HOST="127.0.0.1",
            ORCHESTRATOR_REDIS_PORT=str(self.infra.redis_port),
            ORCHESTRATOR_POSTGRES_HOST="127.0.0.1",
            ORCHESTRATOR_POSTGRES_PORT=str(self.infra.pg_port),
            ORCHESTRATOR_POSTGRES_PASSWORD=PG_PASSWORD,
            ORCHESTRATOR_STATE_DIR=str(state_dir),
            ORCHESTRATOR_LLM_BASE_URL=llm_url,
            ORCHESTRATOR_EMBEDDING_BASE_URL=llm_url,
            ORCHESTRATOR_EMBEDDING_DIM=str(EMBEDDING_DIM),
            ORCHESTRATOR_HOSTNAME="benchhost",
            ORCHESTRATOR_API_TOKEN=API_TOKEN,
            # 20,000 chunks may wait at once; the default (100,000) would do, but
            # the bench must never measure a 429.
            ORCHESTRATOR_MAX_QUEUE_DEPTH="1000000",
        )
        env.update({f"ORCHESTRATOR_{key.upper()}": str(value) for key, value in overrides.items()})
        env.update(self.extra_env)
        return env

    async def start(
        self,
        name: str,
        *,
        noop: bool,
        llm_url: str = "http://127.0.0.1:9/v1",
        prepare: Callable[[Path], None] | None = None,
        noop_ms_per_chunk: float = 0,
        reset: bool = True,
        **overrides: Any,
    ) -> Service:
        """A fresh service: empty Redis, new job table, new LightRAG state directory
        (given to `prepare` before the service starts, e.g. to put a graph in it).
        `noop_ms_per_chunk`: the no-op processor takes that long per chunk (W7).
        `reset=False`: Redis and the job table as they are (another host of W8)."""
        if reset:
            self.infra.reset()
        state = self.infra.root / "state" / name
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)
        if prepare is not None:
            await asyncio.to_thread(prepare, state)
        port = free_port()
        env = self.env(state, port, llm_url, overrides)
        env["BENCH_NOOP_MS_PER_CHUNK"] = str(noop_ms_per_chunk)
        init = await asyncio.to_thread(
            subprocess.run,
            [self.python, "-m", "shield_orchestrator", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if init.returncode != 0:
            raise BenchError(f"migrate failed: {init.stderr[-600:]}")
        argv = [self.python, str(BENCH / "noop_service.py")] if noop else [self.python, "-m", "shield_orchestrator"]
        if not noop:
            argv.append("serve")
        proc = spawn(name, argv, env, self.infra.logs)
        service = Service(proc, port, env)
        try:
            await wait_for(
                lambda: httpx.get(f"{service.url}/health", timeout=2).status_code == 200, 120, f"service {name}", proc
            )
        except BaseException:
            proc.stop()
            raise
        return service


# --- a Server-Sent Events client ----------------------------------------------------------
OnEvent = Callable[[str, dict[str, Any], float], None]


class SSEClient:
    """Reads /events/stream; calls on_event(type, data, receipt wall time) for every event.
    Lean on purpose (raw bytes, one JSON decode per event): in W5 a hundred of them share
    the machine with the service they measure. `http` shares one client among many."""

    def __init__(
        self, service: Service, event_types: str, on_event: OnEvent, http: httpx.AsyncClient | None = None
    ) -> None:
        self.service = service
        self.event_types = event_types
        self.on_event = on_event
        self.http = http
        self.connected = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            http = self.http or await stack.enter_async_context(self.service.client(timeout=600))
            response = await stack.enter_async_context(
                http.stream("GET", "/events/stream", params={"event_types": self.event_types})
            )
            if response.status_code != 200:
                raise BenchError(f"SSE connect: HTTP {response.status_code}")
            buffer = b""
            async for chunk in response.aiter_raw():
                now = time.time()
                buffer += chunk
                while (end := buffer.find(b"\n\n")) >= 0:
                    frame, buffer = buffer[:end], buffer[end + 2 :]
                    self.connected.set()  # the first frame is the ": connected" comment
                    event_type, data = "", b""
                    for line in frame.split(b"\n"):
                        if line.startswith(b"event: "):
                            event_type = line[7:].decode()
                        elif line.startswith(b"data: "):
                            data = line[6:]
                    if event_type and data:
                        self.on_event(event_type, json.loads(data), now)

    async def __aenter__(self) -> SSEClient:
        self.task = asyncio.create_task(self._run())
        waiter = asyncio.create_task(self.connected.wait())
        done, _ = await asyncio.wait({self.task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self.task in done:
                self.task.result()  # raises what went wrong
            raise BenchError("SSE client did not connect in 30s")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self.task
