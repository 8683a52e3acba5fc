"""The service under test: rendered from the role's templates and defaults, run as
the systemd unit runs it (`python -m shield_orchestrator serve`), configured
through ORCHESTRATOR_* variables."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .servers import PostgresServer, Process, RedisServer, Standin, wait_until

API_TOKEN = "test-token-not-a-secret"
PG_PASSWORD = "test-password-not-a-secret"
EMBEDDING_DIM = 64

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import render_service  # noqa: E402


def render(output_dir: Path) -> Path:
    """The package rendered with the role's defaults; the directory to put on PYTHONPATH."""
    return render_service.render(output_dir).parent


def settings_env(overrides: dict[str, object]) -> dict[str, str]:
    return {f"ORCHESTRATOR_{key.upper()}": str(value) for key, value in overrides.items()}


def build_env(
    rendered: Path, redis: RedisServer, postgres: PostgresServer, standin: Standin, root: Path
) -> dict[str, str]:
    """Environment of a service process: fresh Redis contents and LightRAG state."""
    redis.client().flushdb()
    if not postgres.running:
        postgres.start()
    postgres.psql("DROP TABLE IF EXISTS job_duplicates, job_status, alembic_version")
    state = root / "state"
    state.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(rendered)
    env |= settings_env(
        {
            "state_dir": state,
            "listen_host": "127.0.0.1",
            "redis_host": "127.0.0.1",
            "redis_port": redis.port,
            "postgres_host": "127.0.0.1",
            "postgres_port": postgres.port,
            "postgres_password": PG_PASSWORD,
            "api_token": API_TOKEN,
            "llm_base_url": standin.base_url,
            "embedding_base_url": standin.base_url,
            "llm_api_key": "standin-key",
            "embedding_api_key": "standin-key",
            "embedding_dim": EMBEDDING_DIM,
            "hostname": "testhost",
            "pg_sync_interval": 0.2,
            "retry_backoff_seconds": 0.2,
        }
    )
    return env


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shield_orchestrator", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def run_init_db(env: dict[str, str]) -> None:
    out = run_cli(env, "migrate")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("{"), out.stdout


@dataclass
class ServiceProcess:
    env: dict[str, str]
    port: int
    log_dir: Path
    name: str = "service"
    proc: Process | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self, wait: bool = True, **overrides: object) -> ServiceProcess:
        assert self.proc is None or not self.proc.alive(), "already running"
        self.env |= settings_env(overrides)
        self.proc = Process.spawn(
            self.name, [sys.executable, "-m", "shield_orchestrator", "serve"], self.env, self.log_dir
        )
        self.starts += 1
        if wait:
            wait_until(self._healthy, 60, f"service on port {self.port} (log: {self.log_path})", 0.2)
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive():
            raise AssertionError(f"service exited with {self.proc.popen.returncode}:\n{self.log_text()[-3000:]}")
        return httpx.get(f"{self.url}/health", timeout=2).status_code == 200

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stall_report(self) -> str:
        """What a stuck service waits on, for a failing test's message: its SIGUSR1 task
        dump (written to its log) and /health/detailed, saved beside its log; the
        report's path and its last 20,000 characters (CI keeps only the output)."""
        assert self.proc is not None
        before = self.log_text().count("SIGUSR1: ")
        self.proc.popen.send_signal(signal.SIGUSR1)
        with contextlib.suppress(AssertionError):
            wait_until(lambda: self.log_text().count("SIGUSR1: ") > before, 5, "the task dump")
        try:
            detailed = self.client().get("/health/detailed", timeout=5).text
        except httpx.HTTPError as exc:
            detailed = f"/health/detailed did not answer: {exc!r}"
        report = self.log_dir / f"{self.name}-stall.txt"
        text = f"{self.log_text()[-60000:]}\n\n/health/detailed:\n{detailed}\n"
        report.write_text(text)
        return f"{report}:\n{text[-20000:]}"

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM (what systemctl stop sends) and the exit status."""
        assert self.proc is not None
        self.proc.popen.send_signal(signal.SIGTERM)
        return self.proc.popen.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.popen.kill()
        self.proc.popen.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.alive():
            self.proc.stop(90)

    def client(self, token: str | None = API_TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)
