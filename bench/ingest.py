"""Real ingestion through LightRAG, three ways: the contestants of W2, W3 and W6.

* shield-orchestrator: the service as deployed (`python -m shield_orchestrator serve`,
  role defaults), one job of n chunks POSTed to /lightrag/ingest-async; the clock stops
  when its ingestion.completed event reaches an SSE client.
* lightrag-server: LightRAG's own server (bench/lightrag_server.py on
  .venv-bench-lightrag), the n texts POSTed to /documents/texts in one request; the
  clock stops when /documents/status_counts shows them all PROCESSED.
* lightrag-inprocess: `ainsert` in a small script (bench/lightrag_inprocess.py on the
  service's virtualenv), LightRAG writing its storages after every document as it
  does by itself; its clock runs from the call to the moment doc status shows every
  document PROCESSED.
* lightrag-floor: the same script with its flushes deferred (--defer-flushes): the
  storages written once, at the end, inside its clock. The least any driver of
  LightRAG can cost: the true floor.

All of them get the same LightRAG settings (LightRAGSettings: the role's, the LLM
cache included, max_parallel_insert what the service gives LightRAG), storages in a
fresh directory, and the same stand-in, whose GET /stats (difference over the run)
shows that they did the same work. Each run reports the settings LightRAG really got
(`lightrag_settings`: what was passed, and the effective values by LightRAG's own
names, read from the contestant: the service's own settings code on its environment,
lightrag-server's /health, the script's LightRAG instance); the harness checks that
they are equal. For each run: chunks/s, chat and embedding calls, CPU seconds of the
contestant's process group and its peak RSS (VmHWM).

W6's fixtures (graphs pre-filled with N documents) are built here once per size with
LightRAG in-process and cached under .cache/bench-fixtures/. W6 on the PostgreSQL
storages (bench/pg_container.py) builds them as databases, and each run of the service
and lightrag-server gets its own copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from infra import (
    BENCH,
    EMBEDDING_DIM,
    REPO,
    BenchError,
    Infra,
    Proc,
    ServiceLauncher,
    SSEClient,
    group_cpu_seconds,
    log,
    peak_rss_mb,
    render_service,
    spawn,
    start_standin,
    wait_for,
)
from pg_container import EMPTY, PgvectorServer
from workloads import JobWatch, TimedOut, post_job

from tests.support.servers import STANDIN, Standin, free_port

SERVICE = "shield-orchestrator"
SERVER = "lightrag-server"
INPROCESS = "lightrag-inprocess"
FLOOR = "lightrag-floor"  # lightrag-inprocess with its flushes deferred: the true floor
CONTESTANTS = (SERVICE, SERVER, INPROCESS, FLOOR)
FIXTURE_CACHE = REPO / ".cache" / "bench-fixtures"
# Where the service keeps LightRAG's local storages: <state_dir>/lightrag/<workspace>
# (the role's orchestrator_workers_state_dir). A W6 run checks afterwards that the
# service did read the fixture put there.
SERVICE_LIGHTRAG_DIR = "lightrag"
STATUS_POLL_S = 0.2  # lightrag-server: GET /documents/status_counts this often
CHAT = "POST /v1/chat/completions"
EMBED = "POST /v1/embeddings"
EMBED_TEXTS = "embedding:texts"


# --- the texts -------------------------------------------------------------------------------
FIRST = (
    "Alice Bruno Chen Dana Erik Fatima Gustav Hana Ivan Julia Kofi Lena Marco Nadia Oscar Priya Quentin Rosa "
    "Samir Tanja Umar Vera Wim Ximena Yusuf Zoe Anton Beatriz Carlos Dmitri Elena Farid Greta Hugo Ines Jonas "
    "Kenji Leila Mateo Noor"
).split()
LAST = (
    "Johnson Martins Wei Okafor Lindqvist Zahra Berg Novak Petrov Schmidt Mensah Costa Rossi Haddad Keller "
    "Sharma Dubois Alvarez Farouk Wagner Siddiqui Moreau Jansen Ortega Demir Laurent Fischer Almeida Romero "
    "Volkov Ivanova Nasser Holm Bauer Ferreira Becker Tanaka Karimi Navarro Aziz"
).split()
ORG_NAMES = (
    "Acme Globex Initech Umbrella Stark Wayne Cyberdyne Tyrell Soylent Hooli Vandelay Aperture Oscorp Nakatomi "
    "Wonka Gekko Massive Dynamic Nordwind Polaris Meridian Halcyon Vertex Zenith Cobalt Sable Orion Juniper "
    "Atlas Helix"
).split()
ORG_KINDS = ("Corporation", "Industries", "Systems", "Laboratories", "Group", "Foundation", "Institute", "Bank")
CITIES = (
    "Berlin Lisbon Nairobi Osaka Toronto Oslo Lagos Lima Quito Riga Vienna Dakar Hanoi Perth Porto Seville "
    "Krakow Tunis Accra Cusco Bergen Malmo Leeds Lyon Graz Brno Turin Kyoto Busan Pune Cebu Davao Recife Belem "
    "Rosario Tartu Gdansk Split Varna Izmir"
).split()


def _pick(i: int, salt: int, size: int) -> int:
    digest = hashlib.blake2b(f"{i}:{salt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % size


def prose(i: int, tag: str) -> str:
    """About 400 characters of prose naming four people, two organisations and two cities,
    unique per (tag, i) (LightRAG dedups identical text). The names depend on i only, from
    pools of 1,600 people, 240 organisations and 40 cities: documents share entities, so a
    graph of many of them grows and merges, as a real one does."""

    def person(salt: int) -> str:
        k = _pick(i, salt, len(FIRST) * len(LAST))
        return f"{FIRST[k % len(FIRST)]} {LAST[k // len(FIRST)]}"

    def org(salt: int) -> str:
        k = _pick(i, salt, len(ORG_NAMES) * len(ORG_KINDS))
        return f"{ORG_NAMES[k % len(ORG_NAMES)]} {ORG_KINDS[k // len(ORG_NAMES)]}"

    p1, p2, p3, p4 = person(1), person(2), person(3), person(4)
    o1, o2 = org(5), org(6)
    c1, c2 = CITIES[_pick(i, 7, len(CITIES))], CITIES[_pick(i, 8, len(CITIES))]
    return (
        f"{p1} of {o1} met {p2} and {p3} at the {o2} office in {c1} for review {tag}-{i}. "
        f"{p1} leads the {o1} data platform team and reports progress to {p2} every week. "
        f"{p3} moved from {c2} to {c1} last year to join {o2}, where {p3} works with {p4} on storage systems."
    )


# "Texts whose entities recur" (issue 19's W3): the same template as prose() but its
# names drawn from a small set, 12 people, 6 organisations and 6 cities, so that
# every entity comes back in most jobs many times over and LightRAG merges its
# descriptions and asks the LLM for summaries (from 8 descriptions on: its
# force_llm_summary_on_merge). prose() is left as it is: its source keys W6's fixtures.
RECURRING_PEOPLE = 12
RECURRING_ORGS = 6
RECURRING_CITIES = 6


def _distinct(i: int, salt: int, pool: int, count: int) -> list[int]:
    """`count` different numbers below `pool`, chosen by (i, salt)."""
    return sorted(range(pool), key=lambda k: _pick(i, salt * 1000 + k, 1 << 30))[:count]


def recurring_prose(i: int, tag: str) -> str:
    """prose()'s template, four people, two organisations and two cities (all different)
    drawn from RECURRING_PEOPLE / _ORGS / _CITIES names: unique text per (tag, i), recurring entities."""
    p1, p2, p3, p4 = (f"{FIRST[k]} {LAST[k]}" for k in _distinct(i, 1, RECURRING_PEOPLE, 4))
    o1, o2 = (f"{ORG_NAMES[k]} {ORG_KINDS[k % len(ORG_KINDS)]}" for k in _distinct(i, 2, RECURRING_ORGS, 2))
    c1, c2 = (CITIES[k] for k in _distinct(i, 3, RECURRING_CITIES, 2))
    return (
        f"{p1} of {o1} met {p2} and {p3} at the {o2} office in {c1} for review {tag}-{i}. "
        f"{p1} leads the {o1} data platform team and reports progress to {p2} every week. "
        f"{p3} moved from {c2} to {c1} last year to join {o2}, where {p3} works with {p4} on storage systems."
    )


TEXT_RECIPES = {"varied": prose, "recurring": recurring_prose}


@dataclass(frozen=True)
class Batch:
    """The documents of one run (the same for every contestant of a round)."""

    texts: list[str]
    ids: list[str]
    file_paths: list[str]

    @classmethod
    def make(cls, n: int, tag: str, first: int = 0, recipe: str = "varied") -> Batch:
        """n documents; recipe "varied" (prose(): entities from large pools) or "recurring"."""
        text = TEXT_RECIPES[recipe]
        numbers = range(first, first + n)
        return cls(
            [text(i, tag) for i in numbers], [f"{tag}-{i}" for i in numbers], [f"{tag}-{i}.txt" for i in numbers]
        )

    def __len__(self) -> int:
        return len(self.texts)

    def job_body(self, priority: str | None = None) -> bytes:
        """The service's POST /lightrag/ingest-async body: one chunk per document."""
        chunks = [
            {"text": text, "source_uri": f"file:///bench/{path}", "metadata": {"n": k}}
            for k, (text, path) in enumerate(zip(self.texts, self.file_paths, strict=True))
        ]
        body: dict[str, Any] = {"chunks": chunks, "source_type": "text"}
        if priority is not None:
            body["priority"] = priority
        return json.dumps(body).encode()

    def part(self, start: int, stop: int) -> Batch:
        return Batch(self.texts[start:stop], self.ids[start:stop], self.file_paths[start:stop])

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps({"texts": self.texts, "ids": self.ids, "file_paths": self.file_paths}))
        return path


def run_tag(workload: str) -> str:
    return f"{workload}-{uuid.uuid4().hex[:8]}"


# --- configuration ------------------------------------------------------------------------
@dataclass(frozen=True)
class LightRAGSettings:
    """The role's LightRAG settings (roles/orchestrator_workers/defaults), given to every contestant."""

    llm_model: str
    embedding_model: str
    embedding_dim: int
    llm_max_async: int
    embedding_max_async: int
    max_parallel_insert: int
    workspace: str
    llm_timeout: int
    embedding_timeout: int
    llm_cache: bool  # LightRAG's enable_llm_cache and enable_llm_cache_for_entity_extract

    @classmethod
    def from_role(cls) -> LightRAGSettings:
        v = render_service.role_variables()

        def get(key: str) -> Any:
            return v[f"orchestrator_workers_{key}"]

        return cls(
            llm_model=str(get("llm_model")),
            embedding_model=str(get("embedding_model")),
            embedding_dim=EMBEDDING_DIM,
            llm_max_async=int(get("llm_max_async")),
            embedding_max_async=int(get("embedding_max_async")),
            max_parallel_insert=pipeline_window(int(get("llm_max_async"))),
            workspace=str(get("lightrag_workspace")),
            llm_timeout=int(float(get("llm_timeout_seconds"))),
            embedding_timeout=int(float(get("embedding_timeout_seconds"))),
            llm_cache=render_service.ansible_bool(get("lightrag_llm_cache")),
        )

    def cell(self, llm_max_async: int, llm_cache: bool) -> LightRAGSettings:
        """The settings of one W2/W3 cell: LLM slots and cache as asked, the window following the slots."""
        return replace(
            self, llm_max_async=llm_max_async, max_parallel_insert=pipeline_window(llm_max_async), llm_cache=llm_cache
        )

    def effective(self) -> dict[str, Any]:
        """What LightRAG is meant to get, by its own parameter names (the keys of `lightrag_settings`)."""
        return {
            "llm_model_name": self.llm_model,
            "llm_model_max_async": self.llm_max_async,
            "default_llm_timeout": self.llm_timeout,
            "embedding_model": self.embedding_model,
            "embedding_dim": self.embedding_dim,
            "embedding_func_max_async": self.embedding_max_async,
            "default_embedding_timeout": self.embedding_timeout,
            "max_parallel_insert": self.max_parallel_insert,
            "workspace": self.workspace,
            "enable_llm_cache": self.llm_cache,
            "enable_llm_cache_for_entity_extract": self.llm_cache,
            "cosine_better_than_threshold": COSINE_THRESHOLD,
        }

    def server_env(self, llm_url: str) -> dict[str, str]:
        """lightrag-server's configuration (lightrag/api/config.py reads these)."""
        return {
            "LLM_BINDING": "openai",
            "LLM_BINDING_HOST": llm_url,
            "LLM_BINDING_API_KEY": "not-needed",
            "LLM_MODEL": self.llm_model,
            "EMBEDDING_BINDING": "openai",
            "EMBEDDING_BINDING_HOST": llm_url,
            "EMBEDDING_BINDING_API_KEY": "not-needed",
            "EMBEDDING_MODEL": self.embedding_model,
            "EMBEDDING_DIM": str(self.embedding_dim),
            "MAX_ASYNC": str(self.llm_max_async),
            "EMBEDDING_FUNC_MAX_ASYNC": str(self.embedding_max_async),
            "MAX_PARALLEL_INSERT": str(self.max_parallel_insert),
            "LLM_TIMEOUT": str(self.llm_timeout),
            "EMBEDDING_TIMEOUT": str(self.embedding_timeout),
            "WORKSPACE": self.workspace,
            "COSINE_THRESHOLD": str(COSINE_THRESHOLD),
            "ENABLE_LLM_CACHE": on_off(self.llm_cache, "true", "false"),
            "ENABLE_LLM_CACHE_FOR_EXTRACT": on_off(self.llm_cache, "true", "false"),
            "WORKERS": "1",
            "LOG_LEVEL": "WARNING",  # the service and the script also keep LightRAG's logger at WARNING
        }

    def script_args(self, llm_url: str) -> list[str]:
        """bench/lightrag_inprocess.py's configuration."""
        return [
            "--llm-url",
            llm_url,
            "--llm-model",
            self.llm_model,
            "--embedding-model",
            self.embedding_model,
            "--embedding-dim",
            str(self.embedding_dim),
            "--llm-max-async",
            str(self.llm_max_async),
            "--embedding-max-async",
            str(self.embedding_max_async),
            "--max-parallel-insert",
            str(self.max_parallel_insert),
            "--llm-timeout",
            str(self.llm_timeout),
            "--embedding-timeout",
            str(self.embedding_timeout),
            "--workspace",
            self.workspace,
            "--llm-cache",
            on_off(self.llm_cache),
        ]


def pipeline_window(llm_max_async: int) -> int:
    """LightRAG's max_parallel_insert as the service sets it (pipeline_window() in the
    role's lightrag/processor.py: two documents per LLM slot, at least 4). The harness
    checks it against the service's own code on every run (`lightrag_settings`)."""
    return max(4, 2 * llm_max_async)


def on_off(flag: bool, on: str = "on", off: str = "off") -> str:
    return on if flag else off


COSINE_THRESHOLD = 0.2  # LightRAG's default, which the service passes explicitly too


@dataclass
class RealContext:
    infra: Infra
    launcher: ServiceLauncher
    service_python: str  # the service's virtualenv: the service and lightrag_inprocess.py
    server_python: str  # .venv-bench-lightrag: lightrag-server
    settings: LightRAGSettings = field(default_factory=LightRAGSettings.from_role)

    def workdir(self, name: str) -> Path:
        path = self.infra.root / "contestants" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "BENCH_"))}
        env.update(extra)
        return env


@dataclass
class RealRun:
    """One contestant's run; the rates are over the chunks done (all of them unless cut).
    `settings`: what LightRAG got, {"passed": ..., "effective": ...} (see lightrag_settings)."""

    complete: bool
    chunks_done: int
    seconds: float
    cpu_s: float
    peak_rss_mb: float
    calls: dict[str, int]
    extra: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        return {
            "complete": 1.0 if self.complete else 0.0,
            "chunks_done": float(self.chunks_done),
            "seconds": self.seconds,
            "chunks_per_s": self.chunks_done / self.seconds if self.seconds > 0 else 0.0,
            "llm_calls": float(self.calls.get(CHAT, 0)),
            "embedding_calls": float(self.calls.get(EMBED, 0)),
            "embedding_texts": float(self.calls.get(EMBED_TEXTS, 0)),
            "cpu_s": self.cpu_s,
            "peak_rss_mb": self.peak_rss_mb,
            **self.extra,
        }


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in (CHAT, EMBED, EMBED_TEXTS)}


def copy_fixture(fixture: Path | None, workspace_dir: Path) -> None:
    """A copy of the fixture's storages (the files of one LightRAG workspace) in workspace_dir."""
    if fixture is not None:
        shutil.copytree(fixture, workspace_dir)


def doc_count(workspace_dir: Path) -> int:
    """Documents in a LightRAG workspace's doc status file (local storages)."""
    path = workspace_dir / "kv_store_doc_status.json"
    return len(json.loads(path.read_text())) if path.exists() else 0


@dataclass(frozen=True)
class PgGraph:
    """A run on LightRAG's PostgreSQL storages: its own copy of `template` in `server`."""

    server: PgvectorServer
    template: str

    def fresh(self, run_name: str) -> str:
        """The run's database, copied from the template (a graph of 0 or N documents)."""
        database = "run_" + "".join(c if c.isalnum() else "_" for c in run_name.lower())
        self.server.copy(self.template, database)
        return database

    def fresh_env(self, run_name: str, workspace: str) -> dict[str, str]:
        """A fresh database for the run, as the environment LightRAG's PostgreSQL storages read."""
        return self.server.lightrag_env(self.fresh(run_name), workspace)

    def documents(self, database: str, workspace: str) -> int:
        return self.server.doc_count(database, workspace)


PG_STORAGES = {
    "kv_storage": "PGKVStorage",
    "doc_status_storage": "PGDocStatusStorage",
    "graph_storage": "PGTableGraphStorage",
    "vector_storage": "PGVectorStorage",
}  # what the role's lightrag_storage: postgres gives LightRAG


# --- shield-orchestrator ---------------------------------------------------------------------
# The service's LightRAG settings read by its own code, on the environment it was started
# with: its settings loader (the rendered defaults and the ORCHESTRATOR_* overrides), and
# what open_lightrag() in lightrag/processor.py makes of them (pipeline_window() for
# max_parallel_insert). Prints {"passed": the settings, "effective": LightRAG's names}.
SERVICE_SETTINGS_PROBE = """
import json, os
from shield_orchestrator.cli import load_settings
from shield_orchestrator.lightrag.processor import COSINE_THRESHOLD, pipeline_window
s = load_settings(os.environ)
passed = ("llm_model", "llm_max_async", "llm_timeout_seconds", "embedding_model", "embedding_dim",
          "embedding_max_async", "embedding_timeout_seconds", "lightrag_workspace", "lightrag_llm_cache",
          "lightrag_storage", "pool_size")
print(json.dumps({"passed": {name: getattr(s, name) for name in passed}, "effective": {
    "llm_model_name": s.llm_model,
    "llm_model_max_async": s.llm_max_async,
    "default_llm_timeout": int(s.llm_timeout_seconds),
    "embedding_model": s.embedding_model,
    "embedding_dim": s.embedding_dim,
    "embedding_func_max_async": s.embedding_max_async,
    "default_embedding_timeout": int(s.embedding_timeout_seconds),
    "max_parallel_insert": pipeline_window(s),
    "workspace": s.lightrag_workspace,
    "enable_llm_cache": s.lightrag_llm_cache,
    "enable_llm_cache_for_entity_extract": s.lightrag_llm_cache,
    "cosine_better_than_threshold": COSINE_THRESHOLD,
}}))
"""


def service_settings(python: str, env: dict[str, str]) -> dict[str, Any]:
    """The service's LightRAG settings (SERVICE_SETTINGS_PROBE) on the service's environment."""
    out = subprocess.run([python, "-c", SERVICE_SETTINGS_PROBE], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise BenchError(f"the service's settings could not be read: {out.stderr[-600:]}")
    settings: dict[str, Any] = json.loads(out.stdout)
    return settings


async def run_service(
    ctx: RealContext,
    standin: Standin,
    batch: Batch,
    name: str,
    within: float,
    fixture: Path | None = None,
    postgres: PgGraph | None = None,
) -> RealRun:
    """One job of len(batch) chunks through the service as deployed (role defaults, local
    storages; with `postgres`, lightrag_storage: postgres on a copy of its graph)."""
    n = len(batch)
    workspace_dir: list[Path] = []

    def prepare(state: Path) -> None:
        target = state / SERVICE_LIGHTRAG_DIR / ctx.settings.workspace
        workspace_dir.append(target)
        copy_fixture(fixture, target)

    # W2 and W3 run a cell per llm_max_async and LLM cache: the service gets the cell's values like the others
    overrides: dict[str, Any] = {
        "llm_max_async": ctx.settings.llm_max_async,
        "lightrag_llm_cache": on_off(ctx.settings.llm_cache, "true", "false"),
    }
    database = ""
    if postgres is not None:
        database = await asyncio.to_thread(postgres.fresh, name)
        base_docs = await asyncio.to_thread(postgres.documents, database, ctx.settings.workspace)
        overrides |= {
            "lightrag_storage": "postgres",
            "postgres_host": "127.0.0.1",
            "postgres_port": postgres.server.port,
            "postgres_user": postgres.server.user,
            "postgres_password": postgres.server.password,
            "postgres_db": database,
        }
    service = await ctx.launcher.start(name, noop=False, llm_url=standin.base_url, prepare=prepare, **overrides)
    stop_within = 60.0
    watch = JobWatch()
    body = batch.job_body()
    redis_proc = ctx.infra.redis_proc
    assert redis_proc is not None
    try:
        settings = await asyncio.to_thread(service_settings, ctx.service_python, service.env)
        async with (
            service.client() as http,
            SSEClient(service, "ingestion.completed,ingestion.failed", watch.on_event),
        ):
            before = standin.stats()
            cpu0, redis0 = group_cpu_seconds(service.proc.pid), group_cpu_seconds(redis_proc.pid)
            start = time.time()
            job_id = await post_job(http, body)
            try:
                end = await watch.wait([job_id], within, service.proc)
                complete = True
            except TimedOut:
                end, complete, stop_within = time.time(), False, 5.0
            cpu, redis_cpu = group_cpu_seconds(service.proc.pid) - cpu0, group_cpu_seconds(redis_proc.pid) - redis0
            calls = calls_between(before, standin.stats())
            job = (await http.get(f"/jobs/{job_id}")).json()
        done = int(job["chunks_processed"])
        if complete and done != n:
            raise BenchError(f"{name}: job {job_id} processed {done} of {n} chunks")
        run = RealRun(
            complete, done, end - start, cpu, service.peak_rss_mb(), calls, {"redis_cpu_s": redis_cpu}, settings
        )
    finally:
        service.proc.stop(stop_within)
    if fixture is not None and complete:
        # the service read the fixture: its doc status holds the fixture's documents and the job's
        seen, expected = doc_count(workspace_dir[0]), doc_count(fixture) + n
        if seen < expected:
            raise BenchError(f"{name}: {seen} documents in {workspace_dir[0]}, expected {expected}: fixture not used?")
    if postgres is not None and complete:
        seen = await asyncio.to_thread(postgres.documents, database, ctx.settings.workspace)
        if seen < base_docs + n:
            raise BenchError(f"{name}: {seen} documents in {database}, expected {base_docs + n}: graph not used?")
    return run


# --- lightrag-server -----------------------------------------------------------------------
async def start_server(
    ctx: RealContext, name: str, llm_url: str, fixture: Path | None, postgres_env: dict[str, str] | None = None
) -> tuple[Proc, str]:
    root = ctx.workdir(name)
    (root / ".env").write_text("# bench: lightrag-server is configured by its environment\n")
    working_dir = root / "rag_storage"
    await asyncio.to_thread(copy_fixture, fixture, working_dir / ctx.settings.workspace)
    port = free_port()
    env = ctx.env(
        HOST="127.0.0.1",
        PORT=str(port),
        WORKING_DIR=str(working_dir),
        INPUT_DIR=str(root / "inputs"),
        LOG_DIR=str(root),
        TIKTOKEN_CACHE_DIR=str(root / "tiktoken"),
        **ctx.settings.server_env(llm_url),
    )
    if postgres_env is not None:
        env.update(postgres_env)
        env.update({f"LIGHTRAG_{key.upper()}": value for key, value in PG_STORAGES.items()})
    proc = spawn(name, [ctx.server_python, str(BENCH / "lightrag_server.py")], env, ctx.infra.logs, root)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 180, name, proc)
    except BaseException:
        proc.stop()
        raise
    return proc, url


async def run_server(
    ctx: RealContext,
    standin: Standin,
    batch: Batch,
    name: str,
    within: float,
    fixture: Path | None = None,
    postgres: PgGraph | None = None,
) -> RealRun:
    """The texts POSTed to lightrag-server's /documents/texts in one request; done when
    /documents/status_counts shows them all PROCESSED (polled every STATUS_POLL_S)."""
    n = len(batch)
    postgres_env = None
    if postgres is not None:
        postgres_env = await asyncio.to_thread(postgres.fresh_env, name, ctx.settings.workspace)
    proc, url = await start_server(ctx, name, standin.base_url, fixture, postgres_env)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:

            async def counts() -> dict[str, int]:
                reply = await http.get("/documents/status_counts")
                reply.raise_for_status()
                return {k.lower(): int(v) for k, v in reply.json()["status_counts"].items()}

            # what the server read from its environment (its /health "configuration")
            health = await http.get("/health")
            health.raise_for_status()
            settings = {"passed": ctx.settings.server_env(standin.base_url)}
            settings["effective"] = server_effective(health.json()["configuration"], settings["passed"])
            base = await counts()
            before = standin.stats()
            cpu0 = group_cpu_seconds(proc.pid)
            start = time.time()
            reply = await http.post("/documents/texts", json={"texts": batch.texts, "file_sources": batch.file_paths})
            if reply.status_code != 200 or reply.json().get("status") != "success":
                raise BenchError(f"{name}: POST /documents/texts: HTTP {reply.status_code} {reply.text[:300]}")
            track_id = reply.json()["track_id"]
            deadline = time.monotonic() + within
            complete = True
            while True:
                now = await counts()
                processed = now.get("processed", 0) - base.get("processed", 0)
                failed = now.get("failed", 0) - base.get("failed", 0)
                end = time.time()
                if processed + failed >= n:
                    break
                proc.check()
                if time.monotonic() > deadline:
                    complete = False
                    break
                await asyncio.sleep(STATUS_POLL_S)
            cpu = group_cpu_seconds(proc.pid) - cpu0
            calls = calls_between(before, standin.stats())
            rss = peak_rss_mb(proc.pid)
            if failed:
                raise BenchError(f"{name}: {failed} of {n} documents FAILED")
            if complete:  # every document of this request, by its track id
                summary = (await http.get(f"/documents/track_status/{track_id}")).json()["status_summary"]
                if {k.lower().rsplit(".", 1)[-1]: v for k, v in summary.items()}.get("processed") != n:
                    raise BenchError(f"{name}: track {track_id}: {summary}, expected {n} processed")
        return RealRun(complete, processed, end - start, cpu, rss, calls, settings=settings)
    finally:
        proc.stop(60.0)


def server_effective(config: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """lightrag-server's settings by LightRAG's names, from its /health configuration
    (embedding_dim is not in it: as passed)."""
    return {
        "llm_model_name": config["llm_model"],
        "llm_model_max_async": config["max_async"],
        "default_llm_timeout": config["llm_timeout"],
        "embedding_model": config["embedding_model"],
        "embedding_dim": int(env["EMBEDDING_DIM"]),
        "embedding_func_max_async": config["embedding_func_max_async"],
        "default_embedding_timeout": config["embedding_timeout"],
        "max_parallel_insert": config["max_parallel_insert"],
        "workspace": config["workspace"],
        "enable_llm_cache": config["enable_llm_cache"],
        "enable_llm_cache_for_entity_extract": config["enable_llm_cache_for_extract"],
        "cosine_better_than_threshold": config["cosine_threshold"],
    }


# --- lightrag-inprocess ---------------------------------------------------------------------
async def run_inprocess(
    ctx: RealContext,
    standin: Standin,
    batch: Batch,
    name: str,
    within: float,
    fixture: Path | None = None,
    postgres: PgGraph | None = None,
    defer: bool = False,
) -> RealRun:
    """bench/lightrag_inprocess.py: initialises LightRAG, then (on `go`) ainsert and waits for PROCESSED.
    `defer` (lightrag-floor): its flushes deferred, the storages written once at the end, inside the clock."""
    n = len(batch)
    postgres_env: dict[str, str] = {}
    if postgres is not None:
        postgres_env = await asyncio.to_thread(postgres.fresh_env, name, ctx.settings.workspace)
    root = ctx.workdir(name)
    control = root / "control"
    control.mkdir()
    working_dir = root / "rag_storage"
    await asyncio.to_thread(copy_fixture, fixture, working_dir / ctx.settings.workspace)
    argv = [
        ctx.service_python,
        str(BENCH / "lightrag_inprocess.py"),
        "--texts",
        str(batch.write(root / "texts.json")),
        "--working-dir",
        str(working_dir),
        "--control",
        str(control),
        *(["--storage", "postgres"] if postgres is not None else []),
        *(["--defer-flushes"] if defer else []),
        *ctx.settings.script_args(standin.base_url),
    ]
    proc = spawn(name, argv, ctx.env(**postgres_env), ctx.infra.logs, root)
    stop_within = 60.0
    try:
        await wait_file(control / "ready", 180, proc, name)
        # the script's arguments, and what its LightRAG instance holds (written before `ready`)
        settings = {"passed": argv[argv.index("--control") + 2 :]}
        settings["effective"] = json.loads((control / "settings.json").read_text())
        before = standin.stats()
        cpu0 = group_cpu_seconds(proc.pid)
        (control / "go").touch()
        complete = True
        try:
            await wait_file(control / "done.json", within, proc, name)
            result = json.loads((control / "done.json").read_text())
            seconds, processed, failed = result["end"] - result["start"], result["processed"], result["failed"]
        except TimedOut:
            complete, stop_within = False, 5.0
            seconds = within
            progress = control / "progress.json"
            state = json.loads(progress.read_text()) if progress.exists() else {"processed": 0, "failed": 0}
            processed, failed = state["processed"], state["failed"]
        cpu = group_cpu_seconds(proc.pid) - cpu0
        calls = calls_between(before, standin.stats())
        rss = peak_rss_mb(proc.pid)
        if failed:
            raise BenchError(f"{name}: {failed} of {n} documents FAILED")
        return RealRun(complete, processed, seconds, cpu, rss, calls, settings=settings)
    finally:
        proc.stop(stop_within)


def exists(path: Path) -> bool:
    return path.exists()


async def wait_file(path: Path, within: float, proc: Proc, name: str) -> None:
    deadline = time.monotonic() + within
    while not exists(path):
        if not proc.alive():
            raise BenchError(f"{name} exited with {proc.popen.returncode}: {proc.tail(800)!r}")
        if time.monotonic() > deadline:
            raise TimedOut(f"{name}: no {path.name} after {within:.0f}s")
        await asyncio.sleep(0.02)


# lightrag-floor: lightrag-inprocess with its flushes deferred (the true floor)
RUNNERS: dict[str, Callable[..., Awaitable[RealRun]]] = {
    SERVICE: run_service,
    SERVER: run_server,
    INPROCESS: run_inprocess,
    FLOOR: partial(run_inprocess, defer=True),
}
SETTINGS = {
    SERVICE: "python -m shield_orchestrator serve, role defaults, {storages}; one job of n chunks",
    SERVER: "lightrag-server 1.5.7 (.venv-bench-lightrag), {storages}; one POST /documents/texts of n texts",
    INPROCESS: "LightRAG.ainsert in bench/lightrag_inprocess.py on the service's venv, {storages}, "
    "its storages written after every document",
    FLOOR: "LightRAG.ainsert in bench/lightrag_inprocess.py --defer-flushes, {storages}, "
    "its storages written once at the end, inside the clock (the true floor)",
}
STORAGES = {"local": "local storages", "postgres": "PostgreSQL storages"}


def setting(name: str, storage: str) -> str:
    """How a contestant ran, naming the storages it ran on ("local" or "postgres")."""
    return SETTINGS[name].format(storages=STORAGES[storage])


# --- W6's fixtures ----------------------------------------------------------------------------
def lightrag_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "from importlib.metadata import version; print(version('lightrag-hku'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def fixture_key(ctx: RealContext) -> str:
    """The cache's key: LightRAG's version and the recipe (the texts, the stand-in that
    extracts from them, the in-process builder and the settings it gets)."""
    recipe = hashlib.sha256()
    recipe.update(inspect.getsource(prose).encode())
    recipe.update(json.dumps([FIRST, LAST, ORG_NAMES, ORG_KINDS, CITIES]).encode())
    recipe.update(STANDIN.read_bytes())
    recipe.update((BENCH / "lightrag_inprocess.py").read_bytes())
    recipe.update(repr(ctx.settings).encode())
    return f"lightrag-{lightrag_version(ctx.service_python)}-{recipe.hexdigest()[:12]}"


async def ensure_fixtures(ctx: RealContext, sizes: list[int], within: float, step: int) -> dict[str, Any]:
    """Every size's fixture, from the cache or built: from the largest smaller one already
    there (the same documents in the same order), `step` documents at a time, each step
    cached as a checkpoint (docs-N) until the next one exists, so that a build cut by its
    time limit (`within` seconds per size) goes on from there next time. Returns what was done."""
    cache = FIXTURE_CACHE / fixture_key(ctx)
    cache.mkdir(parents=True, exist_ok=True)
    wanted = sorted(s for s in set(sizes) if s > 0)
    report: dict[str, Any] = {"dir": str(cache), "built_s": {}, "cached": [], "step": step}
    standin: Standin | None = None
    try:
        for size in wanted:
            if (cache / f"docs-{size}" / "manifest.json").exists():
                (cache / f"docs-{size}" / "wanted").touch()
                report["cached"].append(size)
                continue
            if standin is None:
                standin = await start_standin(ctx.service_python, ctx.infra.logs, 0, "fixture-standin")
            built = [int(path.parent.name[5:]) for path in cache.glob("docs-*/manifest.json")]
            base = max((s for s in built if s < size), default=0)
            t0 = time.monotonic()
            deadline = t0 + within
            log(f"W6 fixture: building {size:,} documents (from {base:,}, {step:,} at a time) in {cache}")
            checkpoint = base if base and not (cache / f"docs-{base}" / "wanted").exists() else 0
            while base < size:
                top = min(size, (base // step + 1) * step)
                await build_fixture(ctx, standin, cache, base, top, deadline - time.monotonic())
                if checkpoint:  # superseded by the step just built
                    shutil.rmtree(cache / f"docs-{checkpoint}", ignore_errors=True)
                base, checkpoint = top, top if top < size else 0
            (cache / f"docs-{size}" / "wanted").touch()  # a size someone asked for: kept
            report["built_s"][str(size)] = round(time.monotonic() - t0, 1)
    finally:
        if standin is not None:
            standin.proc.stop()
    return report


async def build_fixture(ctx: RealContext, standin: Standin, cache: Path, base: int, size: int, within: float) -> None:
    building = cache / f"building-{size}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    workspace_dir = building / "rag_storage" / ctx.settings.workspace
    if base:
        await asyncio.to_thread(shutil.copytree, cache / f"docs-{base}", workspace_dir)
        for marker in ("manifest.json", "wanted"):
            (workspace_dir / marker).unlink(missing_ok=True)
    proc = await run_builder(ctx, standin, f"fixture-{size}", building, base, size, within)
    if proc.popen.returncode != 0 or doc_count(workspace_dir) != size:
        raise BenchError(f"W6 fixture of {size} documents failed ({proc.popen.returncode}): {proc.tail(800)!r}")
    manifest = {
        "documents": size,
        "recipe": "bench/ingest.py prose(i, 'fixture'), i = 0 .. documents - 1",
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": ctx.settings.__dict__,
    }
    (workspace_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    target = cache / f"docs-{size}"
    shutil.rmtree(target, ignore_errors=True)
    os.replace(workspace_dir, target)
    shutil.rmtree(building, ignore_errors=True)


async def run_builder(
    ctx: RealContext,
    standin: Standin,
    name: str,
    root: Path,
    base: int,
    size: int,
    within: float,
    postgres: dict[str, str] | None = None,
) -> Proc:
    """bench/lightrag_inprocess.py inserting documents base .. size-1 into the graph in
    root/rag_storage (or, given `postgres`, LightRAG's PostgreSQL storages there), to
    its end; fails when it is still running after `within` seconds."""
    batch = Batch.make(size - base, "fixture", first=base)
    argv = [
        ctx.service_python,
        str(BENCH / "lightrag_inprocess.py"),
        "--texts",
        str(batch.write(root / "texts.json")),
        "--working-dir",
        str(root / "rag_storage"),
        *(["--storage", "postgres"] if postgres is not None else []),
        *ctx.settings.script_args(standin.base_url),
    ]
    proc = spawn(name, argv, ctx.env(**(postgres or {})), ctx.infra.logs, root)
    try:
        deadline = time.monotonic() + within
        while proc.alive():
            if time.monotonic() > deadline:
                raise BenchError(f"{name}: {base:,} -> {size:,} documents not built in time (limit per size)")
            await asyncio.sleep(0.5)
    finally:
        proc.stop()
    return proc


async def ensure_pg_fixtures(ctx: RealContext, pg: PgvectorServer, sizes: list[int], within: float) -> dict[str, Any]:
    """W6 on PostgreSQL: the graph of every size as a database (w6_docs_<n>), built in
    one database (w6_build) with LightRAG in-process on the PostgreSQL storages, the
    same documents in the same order as the local fixtures, copied after each size.
    Built for each benchmark (the container does not outlive it): about a minute per
    1,000 documents here."""
    wanted = sorted(s for s in set(sizes) if s > 0)
    report: dict[str, Any] = {"server": pg.name, "built_s": {}, "databases": {"0": EMPTY}}
    if not wanted:
        return report
    build = "w6_build"
    await asyncio.to_thread(pg.copy, EMPTY, build)
    standin = await start_standin(ctx.service_python, ctx.infra.logs, 0, "fixture-pg-standin")
    try:
        base = 0
        for size in wanted:
            t0 = time.monotonic()
            log(f"W6 on PostgreSQL: building {size:,} documents (from {base:,}) in {pg.name}")
            root = ctx.workdir(f"fixture-pg-{size}")
            postgres = pg.lightrag_env(build, ctx.settings.workspace)
            proc = await run_builder(ctx, standin, f"fixture-pg-{size}", root, base, size, within, postgres)
            count = await asyncio.to_thread(pg.doc_count, build, ctx.settings.workspace)
            if proc.popen.returncode != 0 or count != size:
                raise BenchError(
                    f"W6 PostgreSQL fixture of {size} documents failed ({proc.popen.returncode}, "
                    f"{count} documents): {proc.tail(800)!r}"
                )
            database = f"w6_docs_{size}"
            await asyncio.to_thread(pg.copy, build, database)
            report["databases"][str(size)] = database
            report["built_s"][str(size)] = round(time.monotonic() - t0, 1)
            base = size
    finally:
        standin.proc.stop()
    return report


def fixture_dir(report: dict[str, Any], size: int) -> Path | None:
    return Path(report["dir"]) / f"docs-{size}" if size > 0 else None
