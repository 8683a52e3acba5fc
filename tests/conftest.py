"""Fixtures: real Redis, real PostgreSQL, the LLM stand-in, and the rendered service.

Everything runs on loopback ports chosen at random. Redis and PostgreSQL are
Debian's servers started by these fixtures in temporary directories (the test
command installs them); the service runs as a subprocess exactly as the
systemd unit runs it: `python -m shield_orchestrator serve` with the package
rendered from the role's templates and defaults.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import render_service  # noqa: E402

STANDIN = REPO / "roles" / "lab_llm_standin" / "files" / "lab_llm_standin.py"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
API_TOKEN = "test-token-not-a-secret"
PG_PASSWORD = "test-password-not-a-secret"
EMBEDDING_DIM = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing is not up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="shield-tests-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- Redis --------------------------------------------------------------------
@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[Any]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    port = free_port()
    data = workdir / "redis"
    data.mkdir()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(data / "redis.log"),
        ],
    )
    server = RedisServer(port, proc)
    wait_until(lambda: server.client().ping(), 15, "redis-server")
    yield server
    stop_process(proc)


# --- PostgreSQL -----------------------------------------------------------------
@dataclass
class PostgresServer:
    port: int
    datadir: Path
    sockdir: Path
    running: bool = True

    def psql(self, sql: str, database: str = "shield_orchestrator") -> str:
        out = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "orchestrator",
                "-d",
                database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            env={**os.environ, "PGPASSWORD": PG_PASSWORD},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout.strip()

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-w",
                "-t",
                "60",
                *args,
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )

    def stop(self) -> None:
        """An outage: immediate mode, as a crash or a lost host would be."""
        self.pg_ctl("stop", "-m", "immediate")
        self.running = False

    def start(self) -> None:
        self.pg_ctl(
            "start",
            "-l",
            str(self.datadir.parent / "postgres.log"),
            "-o",
            f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1",
        )
        self.running = True


@pytest.fixture(scope="session")
def postgres_server(workdir: Path) -> Iterator[PostgresServer]:
    root = workdir / "postgres"
    datadir, sockdir = root / "data", root / "sock"
    sockdir.mkdir(parents=True)
    shutil.chown(root, "postgres", "postgres")
    shutil.chown(sockdir, "postgres", "postgres")
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD)
    shutil.chown(pwfile, "postgres", "postgres")
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--pwfile",
            str(pwfile),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = PostgresServer(free_port(), datadir, sockdir)
    server.start()
    admin = [
        "runuser",
        "-u",
        "postgres",
        "--",
        "psql",
        "-h",
        str(sockdir),
        "-p",
        str(server.port),
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
    ]
    subprocess.run(
        [*admin, f"CREATE ROLE orchestrator LOGIN PASSWORD '{PG_PASSWORD}'"], check=True, capture_output=True
    )
    subprocess.run([*admin, "CREATE DATABASE shield_orchestrator OWNER orchestrator"], check=True, capture_output=True)
    yield server
    if server.running:
        server.stop()


# --- LLM stand-in -----------------------------------------------------------------
@dataclass
class Standin:
    port: int
    proc: subprocess.Popen[Any]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@pytest.fixture(scope="session")
def llm_standin(workdir: Path) -> Iterator[Standin]:
    """The test/lab stand-in for the external LLM + embedding endpoint."""
    port = free_port()
    log = open(workdir / "standin.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(STANDIN),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--embedding-dim",
            str(EMBEDDING_DIM),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    standin = Standin(port, proc)
    wait_until(lambda: httpx.get(f"{standin.base_url}/models").status_code == 200, 30, "the LLM stand-in")
    yield standin
    stop_process(proc)
    log.close()


# --- the service ----------------------------------------------------------------
@pytest.fixture(scope="session")
def rendered(workdir: Path) -> Path:
    """The package rendered from the role's templates with the role's defaults."""
    return render_service.render(workdir / "src").parent


@dataclass
class ServiceProcess:
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[Any] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, **overrides: Any) -> ServiceProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for key, value in overrides.items():
            self.env[f"ORCHESTRATOR_{key.upper()}"] = str(value)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shield_orchestrator", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait:
            wait_until(self._healthy, 60, f"service on port {self.port} (log: {self.log_path})", 0.2)
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
        return httpx.get(f"{self.url}/health", timeout=2).status_code == 200

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def terminate(self, timeout: float = 90) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def client(self, token: str | None = API_TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def build_env(
    rendered: Path, redis_server: RedisServer, postgres_server: PostgresServer, llm_standin: Standin, root: Path
) -> dict[str, str]:
    """Environment of a service process: fresh Redis db contents and LightRAG state."""
    redis_server.client().flushdb()
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.psql("DROP TABLE IF EXISTS job_status")
    state = root / "state"
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(
        PYTHONPATH=str(rendered),
        ORCHESTRATOR_STATE_DIR=str(state),
        ORCHESTRATOR_LISTEN_HOST="127.0.0.1",
        ORCHESTRATOR_REDIS_HOST="127.0.0.1",
        ORCHESTRATOR_REDIS_PORT=str(redis_server.port),
        ORCHESTRATOR_POSTGRES_HOST="127.0.0.1",
        ORCHESTRATOR_POSTGRES_PORT=str(postgres_server.port),
        ORCHESTRATOR_POSTGRES_PASSWORD=PG_PASSWORD,
        ORCHESTRATOR_API_TOKEN=API_TOKEN,
        ORCHESTRATOR_LLM_BASE_URL=llm_standin.base_url,
        ORCHESTRATOR_EMBEDDING_BASE_URL=llm_standin.base_url,
        ORCHESTRATOR_LLM_API_KEY="standin-key",
        ORCHESTRATOR_EMBEDDING_API_KEY="standin-key",
        ORCHESTRATOR_EMBEDDING_DIM=str(EMBEDDING_DIM),
        ORCHESTRATOR_HOSTNAME="testhost",
        ORCHESTRATOR_PG_SYNC_INTERVAL="0.2",
        ORCHESTRATOR_WORKER_RETRY_BACKOFF_SECONDS="0.2",
    )
    return env


def run_init_db(env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "shield_orchestrator", "init-db"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("{"), out.stdout


@pytest.fixture
def service_env(
    rendered: Path, redis_server: RedisServer, postgres_server: PostgresServer, llm_standin: Standin, tmp_path: Path
) -> dict[str, str]:
    return build_env(rendered, redis_server, postgres_server, llm_standin, tmp_path)


@pytest.fixture
def init_db(service_env: dict[str, str]) -> None:
    run_init_db(service_env)


@pytest.fixture
def service_factory(service_env: dict[str, str], init_db: None, tmp_path: Path) -> Iterator[Any]:
    started: list[ServiceProcess] = []

    def make(**overrides: Any) -> ServiceProcess:
        port = free_port()
        env = dict(service_env, ORCHESTRATOR_LISTEN_PORT=str(port))
        svc = ServiceProcess(env, port, tmp_path / f"service-{len(started)}.log")
        for key, value in overrides.items():
            svc.env[f"ORCHESTRATOR_{key.upper()}"] = str(value)
        started.append(svc)
        return svc

    yield make
    for svc in started:
        if svc.proc is not None:
            stop_process(svc.proc, 90)


@pytest.fixture
def service(service_factory: Any) -> ServiceProcess:
    return service_factory().start()
