"""Real servers on loopback for the tests and the benchmarks: Redis, PostgreSQL and
the LLM stand-in, each in a temporary directory, on a port chosen at random.

Every process is started in a session of its own and stopped by its process
group id, never by name. PostgreSQL's binaries are found with `pg_config`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import redis

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "roles" / "lab_llm_standin" / "files" / "lab_llm_standin.py"
DB_NAME = "shield_orchestrator"
DB_USER = "orchestrator"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """predicate()'s first truthy answer; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


@dataclass
class Process:
    """A child process in a session of its own, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def spawn(
        cls, name: str, argv: list[str], env: Mapping[str, str], logdir: Path, cwd: Path | None = None
    ) -> Process:
        path = logdir / f"{name}.log"
        with open(path, "ab") as out:
            popen = subprocess.Popen(
                argv, env=dict(env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(name, popen, path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def check(self) -> None:
        if not self.alive():
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}: {self.tail(600)!r}")

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM to the process group, SIGKILL if it lingers; the exit status."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # children that outlived their parent (a prefork pool) share its group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.returncode


# --- Redis -----------------------------------------------------------------------
@dataclass
class RedisServer:
    port: int
    proc: Process
    root: Path

    @classmethod
    def start(cls, root: Path) -> RedisServer:
        """As roles/redis_server deploys it (AOF, fsync every second), minus RDB
        snapshots, whose forks would land at random in a measured run."""
        (root / "redis").mkdir(parents=True)
        port = free_port()
        server = cls(port, cls._spawn(root, port), root)
        server.wait_ready()
        return server

    @staticmethod
    def _spawn(root: Path, port: int) -> Process:
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root / "redis"), "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"]
        return Process.spawn("redis", argv, os.environ, root)

    def wait_ready(self) -> None:
        wait_until(lambda: self.alive_and(self.client().ping()), 15, "redis-server")

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop (SIGTERM: the AOF is flushed), stay down a while, start again on the same port and data."""
        self.proc.stop()
        time.sleep(down_seconds)
        argv = list(self.proc.popen.args)  # type: ignore[arg-type]
        self.proc = Process.spawn("redis", [str(arg) for arg in argv], os.environ, self.root)
        self.wait_ready()

    def alive_and(self, answer: bool) -> bool:
        self.proc.check()
        return answer

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)

    def stop(self) -> None:
        self.proc.stop()


# --- PostgreSQL ----------------------------------------------------------------------
def pg_bindir() -> Path:
    """Where initdb and pg_ctl live, as the installed server reports it."""
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True, timeout=30)
    bindir = Path(out.stdout.strip())
    if not (bindir / "pg_ctl").exists():
        raise RuntimeError(f"pg_config --bindir answered {bindir}, which has no pg_ctl: is the server installed?")
    return bindir


PGVECTOR_BINDIR_ENV = "SHIELD_PGVECTOR_BINDIR"


def pgvector_bindir(root: Path) -> Path | None:
    """A PostgreSQL with the pgvector extension, for LightRAG's PGVectorStorage (Debian
    12's server has none): $SHIELD_PGVECTOR_BINDIR, else the server the `pgserver`
    wheel ships (PostgreSQL 16 and pgvector 0.6; copied under `root`, where user
    postgres can read it), else the installed server if it has the extension;
    None when there is none."""
    candidates = [Path(os.environ[PGVECTOR_BINDIR_ENV])] if os.environ.get(PGVECTOR_BINDIR_ENV) else []
    with contextlib.suppress(ImportError):
        import pgserver  # type: ignore[import-not-found, unused-ignore]

        candidates.append(_readable_copy(Path(pgserver.__file__).parent, root))
    candidates.append(pg_bindir())
    for bindir in candidates:
        if list((bindir.parent / "share").glob("**/extension/vector.control")) or _sharedir_has_vector(bindir):
            return bindir
    return None


def _readable_copy(package: Path, root: Path) -> Path:
    """The wheel's server under `root` (its binaries find their libraries at
    $ORIGIN/../../../pgserver.libs): the bin directory of the copy."""
    copy = root / "pgserver-copy"
    if not copy.exists():
        shutil.copytree(package / "pginstall", copy / "pgserver" / "pginstall", symlinks=True)
        shutil.copytree(package.parent / "pgserver.libs", copy / "pgserver.libs", symlinks=True)
        subprocess.run(["chmod", "-R", "a+rX", str(copy)], check=True, timeout=60)
    return copy / "pgserver" / "pginstall" / "bin"


def _sharedir_has_vector(bindir: Path) -> bool:
    pg_config = bindir / "pg_config"
    if not pg_config.exists():
        return False
    out = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True, check=False, timeout=30)
    return (Path(out.stdout.strip()) / "extension" / "vector.control").exists()


@dataclass
class PostgresServer:
    """A cluster of its own, run as user postgres; role `orchestrator` owns database `shield_orchestrator`."""

    port: int
    root: Path
    password: str
    bindir: Path
    running: bool = False

    @classmethod
    def start_new(cls, root: Path, password: str, bindir: Path | None = None) -> PostgresServer:
        root.mkdir(parents=True, exist_ok=True)
        server = cls(free_port(), root, password, bindir or pg_bindir())
        server.sockdir.mkdir(parents=True)
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(server.sockdir, "postgres", "postgres")
        pwfile = root / "pw"
        pwfile.write_text(password)
        shutil.chown(pwfile, "postgres", "postgres")
        initdb = [str(server.bindir / "initdb"), "-D", str(server.datadir), "-U", "postgres", "--auth-local=trust"]
        server._as_postgres(*initdb, "--auth-host=scram-sha-256", "--pwfile", str(pwfile))
        server.start()
        server.admin(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{password}'", database="postgres")
        server.admin(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}", database="postgres")
        return server

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    def _as_postgres(self, *argv: str, timeout: float = 120) -> str:
        out = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], check=True, capture_output=True, text=True, timeout=timeout
        )
        return out.stdout

    def pg_ctl(self, *args: str) -> None:
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", *args, timeout=90)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1"
        self.pg_ctl("start", "-l", str(self.root / "postgres.log"), "-o", options)
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """Immediate by default: an outage, as a crash or a lost host would be."""
        self.pg_ctl("stop", "-m", mode)
        self.running = False

    def admin(self, sql: str, database: str = DB_NAME) -> str:
        """SQL as the superuser, over the Unix socket."""
        psql = ["psql", "-h", str(self.sockdir), "-p", str(self.port), "-d", database, "-At", "-v", "ON_ERROR_STOP=1"]
        return self._as_postgres(*psql, "-c", sql, timeout=30).strip()

    def psql(self, sql: str, database: str = DB_NAME) -> str:
        """SQL as the service's role, over TCP (what the service does)."""
        argv = ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, "-d", database, "-At"]
        out = subprocess.run(
            [*argv, "-v", "ON_ERROR_STOP=1", "-c", sql],
            env={**os.environ, "PGPASSWORD": self.password},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout.strip()


# --- the LLM stand-in ------------------------------------------------------------------
@dataclass
class Standin:
    """The test/lab stand-in for the external LLM + embedding endpoint (roles/lab_llm_standin)."""

    port: int
    proc: Process
    workdir: Path
    argv: list[str]

    @classmethod
    def start(
        cls,
        root: Path,
        *,
        embedding_dim: int | None,
        extra: list[str] | None = None,
        name: str = "standin",
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        port: int = 0,
    ) -> Standin:
        """`embedding_dim` None: the stand-in's own setting (its environment);
        `port` 0: a free one (give the old one to restart after an outage)."""
        port = port or free_port()
        argv = [python, str(STANDIN), "--host", "127.0.0.1", "--port", str(port)]
        if embedding_dim is not None:
            argv += ["--embedding-dim", str(embedding_dim)]
        argv += extra or []
        standin = cls(port, Process.spawn(name, argv, {**os.environ, **(env or {})}, root), root, argv)
        wait_until(lambda: standin.answering(), 60, "the LLM stand-in")
        return standin

    def answering(self) -> bool:
        self.proc.check()
        return httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def stats(self) -> dict[str, int]:
        calls: dict[str, int] = httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=10).json()["calls"]
        return calls

    def stop(self) -> None:
        self.proc.stop()

    def start_again(self) -> None:
        """After stop(): the same server on the same port (an endpoint that came back)."""
        self.proc = Process.spawn(self.proc.name, self.argv, os.environ, self.workdir)
        wait_until(lambda: self.answering(), 60, "the LLM stand-in")

    def outage(self, status: int, seconds: float, retry_after: float = 0) -> None:
        """Every /v1/ route answers `status` for `seconds` (the stand-in's test switch)."""
        body = {"status": status, "seconds": seconds, "retry_after": retry_after}
        httpx.post(f"{self.root}/admin/outage", json=body, timeout=10).raise_for_status()
