"""Fixtures: real Redis, real PostgreSQL, the LLM stand-in, and the rendered service;
and the worker pool's parts in process against that Redis (tests/support/inprocess.py).

Everything runs on loopback ports chosen at random. Redis and PostgreSQL are
Debian's servers started in temporary directories (the test command installs
them); the service runs as a subprocess exactly as the systemd unit runs it:
`python -m shield_orchestrator serve`, the package rendered from the role's
templates and defaults.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from tests.support.inprocess import Rig
from tests.support.servers import PGVECTOR_BINDIR_ENV, PostgresServer, RedisServer, Standin, free_port, pgvector_bindir
from tests.support.service import EMBEDDING_DIM, PG_PASSWORD, ServiceProcess, build_env, render, run_init_db

ServiceFactory = Callable[..., ServiceProcess]


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="shield-tests-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer.start(workdir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(workdir: Path) -> Iterator[PostgresServer]:
    server = PostgresServer.start_new(workdir / "postgres", PG_PASSWORD)
    yield server
    if server.running:
        server.stop()


@pytest.fixture(scope="module")
def pgvector_server(workdir: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL with pgvector, for LightRAG's PostgreSQL storages (a module's own)."""
    bindir = pgvector_bindir(workdir)
    if bindir is None:
        pytest.fail(
            f"no PostgreSQL with pgvector: requirements-test.txt installs the pgserver wheel"
            f" (or set {PGVECTOR_BINDIR_ENV})"
        )
    server = PostgresServer.start_new(Path(tempfile.mkdtemp(prefix="pgvector-", dir=workdir)), PG_PASSWORD, bindir)
    server.admin("CREATE EXTENSION IF NOT EXISTS vector")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llm_standin(workdir: Path) -> Iterator[Standin]:
    """The test/lab stand-in for the external LLM + embedding endpoint."""
    standin = Standin.start(workdir, embedding_dim=EMBEDDING_DIM)
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def rendered(workdir: Path) -> Path:
    """The package rendered from the role's templates with the role's defaults."""
    return render(workdir / "src")


@pytest.fixture
def service_env(
    rendered: Path, redis_server: RedisServer, postgres_server: PostgresServer, llm_standin: Standin, tmp_path: Path
) -> dict[str, str]:
    return build_env(rendered, redis_server, postgres_server, llm_standin, tmp_path)


@pytest.fixture
def init_db(service_env: dict[str, str]) -> None:
    run_init_db(service_env)


@pytest.fixture
def service_factory(service_env: dict[str, str], init_db: None, tmp_path: Path) -> Iterator[ServiceFactory]:
    started: list[ServiceProcess] = []

    def make(**overrides: object) -> ServiceProcess:
        port = free_port()
        env = dict(service_env, ORCHESTRATOR_LISTEN_PORT=str(port))
        svc = ServiceProcess(env, port, tmp_path, name=f"service-{len(started)}")
        svc.env |= {f"ORCHESTRATOR_{key.upper()}": str(value) for key, value in overrides.items()}
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()


@pytest.fixture
def service(service_factory: ServiceFactory) -> ServiceProcess:
    return service_factory().start()


@pytest.fixture(scope="module")
def module_service_factory(
    rendered: Path,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    llm_standin: Standin,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ServiceProcess]]:
    """Started services that serve a whole test module: make(name, **settings)."""
    started: list[ServiceProcess] = []

    def make(name: str, **overrides: object) -> ServiceProcess:
        root = tmp_path_factory.mktemp(name)
        env = build_env(rendered, redis_server, postgres_server, llm_standin, root)
        run_init_db(env)
        port = free_port()
        env["ORCHESTRATOR_LISTEN_PORT"] = str(port)
        svc = ServiceProcess(env, port, root, name=name)
        started.append(svc)
        return svc.start(**overrides)

    yield make
    for svc in started:
        svc.stop()


@pytest.fixture
async def make_rig(redis_server: RedisServer) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """make(**settings): the queue, tracker and settler in process on keys of their own;
    closed (their tasks stopped, their keys deleted) after the test."""
    rigs: list[Rig] = []

    async def make(**overrides: object) -> Rig:
        rigs.append(Rig(redis_server.port, overrides))
        return await rigs[-1].open()

    yield make
    for rig in rigs:
        await rig.close()


@pytest.fixture
async def rig(make_rig: Callable[..., Awaitable[Rig]]) -> Rig:
    return await make_rig()
