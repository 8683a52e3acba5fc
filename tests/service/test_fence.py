"""The writer fence (lightrag/fence.py) on the real pinned LightRAG and a real PostgreSQL.

The contract tests run LightRAG's own PostgreSQL storages (PGKVStorage,
PGDocStatusStorage, PGTableGraphStorage; the vectors in files: Debian 12's
PostgreSQL has no pgvector) in process, with the stand-in's LLM called in
process (tests/support/offline_lightrag.py). "Another host" is a plain
connection that raises the fence, as FencedLock does when it takes the lease.
Each test says what breaks it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from shield_orchestrator.lightrag.fence import RAISE_SQL, StaleWriter, WriterFence

from tests.support.helpers import ingest, make_chunks, wait_job
from tests.support.offline_lightrag import TEXTS, OfflineModels, offline_rag
from tests.support.servers import (
    DB_NAME,
    DB_USER,
    PostgresServer,
    RedisServer,
    Standin,
    free_port,
    wait_until,
)
from tests.support.service import (
    EMBEDDING_DIM,
    PG_PASSWORD,
    ServiceProcess,
    build_env,
    run_cli,
    run_init_db,
    settings_env,
)

IDS = list(TEXTS)


def postgres_env(server: PostgresServer) -> dict[str, str]:
    """What LightRAG's PostgreSQL storages read (processor.postgres_environment's keys)."""
    return {
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": str(server.port),
        "POSTGRES_USER": DB_USER,
        "POSTGRES_PASSWORD": PG_PASSWORD,
        "POSTGRES_DATABASE": DB_NAME,
        "POSTGRES_MAX_CONNECTIONS": "10",
        "POSTGRES_CONNECTION_RETRIES": "3",
        "POSTGRES_CONNECTION_RETRY_BACKOFF": "0.2",
        "POSTGRES_CONNECTION_RETRY_BACKOFF_MAX": "0.5",
    }


class Fenced:
    """A LightRAG instance on PostgreSQL with its writer fence attached, and a plain
    connection for what another host does and for reading the tables back."""

    def __init__(self, rag: Any, fence: WriterFence, conn: asyncpg.Connection) -> None:
        self.rag, self.fence, self.conn = rag, fence, conn
        self.told: list[str] = []

    @property
    def db(self) -> Any:
        return self.rag.full_docs.db

    async def other_host_takes(self, token: int) -> int:
        return int(await self.conn.fetchval(RAISE_SQL, self.fence.workspace, token))

    async def rows(self, table: str) -> int:
        sql = f"SELECT count(*) FROM {table} WHERE workspace = $1"
        return int(await self.conn.fetchval(sql, self.rag.full_docs.workspace))


@pytest.fixture
async def fenced(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Fenced]:
    if not postgres_server.running:
        postgres_server.start()
    for key, value in postgres_env(postgres_server).items():
        monkeypatch.setenv(key, value)
    workspace = f"fence_{uuid.uuid4().hex[:10]}"
    rag = offline_rag(
        tmp_path,
        OfflineModels(),
        workspace,
        kv_storage="PGKVStorage",
        doc_status_storage="PGDocStatusStorage",
        graph_storage="PGTableGraphStorage",
    )
    await rag.initialize_storages()
    conn = await asyncpg.connect(
        host="127.0.0.1", port=postgres_server.port, user=DB_USER, password=PG_PASSWORD, database=DB_NAME
    )
    fence = WriterFence(workspace, lease_seconds=3)
    harness = Fenced(rag, fence, conn)
    await fence.attach(rag, harness.told.append)
    try:
        yield harness
    finally:
        await rag.finalize_storages()
        await conn.close()


async def test_a_stale_token_is_refused_and_leaves_nothing_and_the_current_one_lands(fenced: Fenced) -> None:
    """Fails when a write path of LightRAG's PostgreSQL storages escapes the fence
    (a statement not run through `_run_with_retry`'s operation, a write sent by a
    `fetch` the fence reads as a query), or when the check is not in the write's
    transaction."""
    rag, fence = fenced.rag, fenced.fence
    with pytest.raises(StaleWriter, match="not taken the workspace lock yet"):
        await rag.full_docs.upsert({"before": {"content": "x", "file_path": "x"}})
    assert await fence.take(1) == 1
    await rag.ainsert([TEXTS[IDS[0]]], ids=[IDS[0]], file_paths=["a.txt"])
    landed = {table: await fenced.rows(table) for table in ("lightrag_doc_full", "lightrag_doc_status")}
    assert landed == {"lightrag_doc_full": 1, "lightrag_doc_status": 1}
    graph = await rag.chunk_entity_relation_graph.get_all_nodes()
    assert graph, "the first document's entities are in the graph"

    assert await fenced.other_host_takes(2) == 2
    status = rag.doc_status
    record = dict(await status.get_by_id(IDS[0]) or {})
    writes = {
        "kv upsert": lambda: rag.full_docs.upsert({"late": {"content": "late", "file_path": "late"}}),
        "doc-status upsert": lambda: status.upsert({"late": {**record, "file_path": "late.txt"}}),
        "UPDATE ... RETURNING": lambda: status.update_doc_status_fields(IDS[0], {"error_msg": "late"}),
        "graph upsert": lambda: rag.chunk_entity_relation_graph.upsert_node("Late", {"entity_id": "Late"}),
        "kv delete": lambda: rag.full_docs.delete([IDS[0]]),
    }
    already = fence.refused  # the write before the first take
    for number, (what, write) in enumerate(writes.items(), start=1):
        try:
            await write()
        except StaleWriter as error:  # PGKVStorage.delete logs it instead
            assert "token is 1, PostgreSQL's fence is at 2" in str(error)
        assert fence.refused == already + number, what
    assert {table: await fenced.rows(table) for table in landed} == landed
    assert len(await rag.chunk_entity_relation_graph.get_all_nodes()) == len(graph)
    doc = await status.get_by_id(IDS[0])
    assert doc is not None and not doc.get("error_msg")
    assert len(fenced.told) == 1 and "token is 1, PostgreSQL's fence is at 2" in fenced.told[0]
    assert fence.stale

    # A whole document through LightRAG's pipeline: nothing of it lands.
    before = {table: await fenced.rows(table) for table in ("lightrag_doc_chunks", "lightrag_graph_nodes")}
    with pytest.raises(StaleWriter):
        await rag.ainsert([TEXTS[IDS[1]]], ids=[IDS[1]], file_paths=["b.txt"])
    assert await rag.doc_status.get_by_id(IDS[1]) is None
    assert {table: await fenced.rows(table) for table in before} == before

    assert await fence.take(3) == 3  # this host takes the lock again: its writes land
    await rag.full_docs.upsert({"again": {"content": "again", "file_path": "again"}})
    assert await fenced.rows("lightrag_doc_full") == 2


async def test_raising_the_fence_waits_for_a_write_in_flight(fenced: Fenced) -> None:
    """Fails when the check does not hold the fence's row until the writer's
    transaction ends (FOR SHARE, in the same transaction), or when the raise does
    not take the row's lock: the new holder could then write beside the old one."""
    await fenced.fence.take(1)
    await fenced.conn.execute("CREATE TABLE IF NOT EXISTS fence_probe (id text)")
    inside, release = asyncio.Event(), asyncio.Event()

    async def slow_write(connection: Any) -> None:
        async with connection.transaction():
            await connection.execute("INSERT INTO fence_probe VALUES ($1)", fenced.fence.workspace)
            inside.set()
            await release.wait()

    writer = asyncio.create_task(fenced.db._run_with_retry(slow_write))
    await asyncio.wait_for(inside.wait(), 10)
    raised = asyncio.create_task(fenced.other_host_takes(2))
    await asyncio.sleep(0.5)
    assert not raised.done(), "the fence was raised while the old holder's write was in flight"
    release.set()
    await asyncio.wait_for(writer, 10)
    assert await asyncio.wait_for(raised, 10) == 2
    probes = await fenced.conn.fetchval("SELECT count(*) FROM fence_probe WHERE id = $1", fenced.fence.workspace)
    assert probes == 1, "the write that began before the raise landed"
    with pytest.raises(StaleWriter):
        await fenced.db._run_with_retry(slow_write)


async def test_a_stalled_writer_holds_the_raise_back_for_one_lease_at_most(fenced: Fenced) -> None:
    """The fenced transaction's idle_in_transaction_session_timeout is the lease: a
    writer stopped mid-transaction (a SIGSTOP, a VM stall) is ended by PostgreSQL,
    the raise goes through, and the writer's retry is refused: nothing of it lands.
    Fails when the timeout is not set in the fenced transaction."""
    fence = WriterFence(fenced.fence.workspace, lease_seconds=1)  # the same workspace, a 1 s lease
    fenced.fence.idle = fence.idle
    await fenced.fence.take(1)
    await fenced.conn.execute("CREATE TABLE IF NOT EXISTS fence_probe (id text)")
    inside = asyncio.Event()
    mark = f"stalled-{fenced.fence.workspace}"

    async def stalled_write(connection: Any) -> None:
        async with connection.transaction():
            await connection.execute("INSERT INTO fence_probe VALUES ($1)", mark)
            inside.set()
            await asyncio.sleep(4)  # the process stops: its transaction stays open, idle

    writer = asyncio.create_task(fenced.db._run_with_retry(stalled_write))
    await asyncio.wait_for(inside.wait(), 10)
    started = time.monotonic()
    assert await asyncio.wait_for(fenced.other_host_takes(2), 10) == 2
    waited = time.monotonic() - started
    assert waited < 3, f"the raise waited {waited:.1f}s for a stalled writer (its lease is 1 s)"
    with pytest.raises(StaleWriter):
        await asyncio.wait_for(writer, 30)
    assert await fenced.conn.fetchval("SELECT count(*) FROM fence_probe WHERE id = $1", mark) == 0


# --- two hosts on one PostgreSQL: the holder stops past its lease ------------------

CHUNKS = 8
WORKSPACE = "takeover"
AUDIT = """
CREATE TABLE fence_audit (id bigserial PRIMARY KEY, tbl text NOT NULL, token bigint);
CREATE FUNCTION fence_audit_write() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  INSERT INTO fence_audit (tbl, token)
  VALUES (TG_TABLE_NAME, NULLIF(current_setting('shield.writer_token', true), '')::bigint);
  RETURN NULL;
END $$;
CREATE FUNCTION fence_audit_raise() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  INSERT INTO fence_audit (tbl, token) VALUES (TG_TABLE_NAME, NEW.token);
  RETURN NULL;
END $$;
CREATE TRIGGER fence_audit AFTER INSERT OR UPDATE ON shield_writer_fence
  FOR EACH ROW EXECUTE FUNCTION fence_audit_raise();
DO $$
DECLARE name text;
BEGIN
  FOR name IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'lightrag%' LOOP
    EXECUTE format('CREATE TRIGGER fence_audit AFTER INSERT OR UPDATE OR DELETE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION fence_audit_write()', name);
  END LOOP;
END $$;
"""


@pytest.fixture(scope="module")
def slow_standin(workdir: Path) -> Iterator[Standin]:
    """LLM answers that take 1.5 s: a document is in flight for seconds."""
    extra = ["--delay-ms", "1500", "--embedding-delay-ms", "0"]
    standin = Standin.start(workdir, embedding_dim=EMBEDDING_DIM, extra=extra, name="standin-slow")
    yield standin
    standin.stop()


@pytest.fixture
def two_hosts(
    rendered: Path, redis_server: RedisServer, pgvector_server: PostgresServer, slow_standin: Standin, tmp_path: Path
) -> Iterator[list[ServiceProcess]]:
    """Two services on one PostgreSQL and one Redis, a 3 s lease; stopped after the test."""
    env = build_env(rendered, redis_server, pgvector_server, slow_standin, tmp_path)
    run_init_db(env)
    hosts = []
    for name in ("host-a", "host-b"):
        state = tmp_path / name
        state.mkdir()
        host_env = env | settings_env({"hostname": name, "state_dir": state, "listen_port": (port := free_port())})
        hosts.append(ServiceProcess(host_env, port, tmp_path, name=name))
    settings = {
        "lightrag_storage": "postgres",
        "lightrag_workspace": WORKSPACE,
        "lightrag_lock_ttl_seconds": 3,
        "llm_max_async": 2,
        "pool_size": 2,
        # The fence alone, as its takeover was validated. With the extraction ahead on,
        # the host taking over the stopped host's chunks stalled in 4 of 6 runs: one
        # cause (its other worker, blocked in its read, held every place of the
        # pipeline) is fixed (workers/worker.py, Worker._reserve), and 5 runs of 5
        # then passed alone, but the full suite stalled once more: an open defect of
        # issue 20, in its closing note, which this test is not about.
        "lightrag_llm_cache": False,
    }
    try:
        for host in hosts:  # one after the other: LightRAG's first start creates its tables, racily
            host.start(**settings)
        yield hosts
    finally:
        for host in hosts:
            if host.proc is not None and host.proc.alive():
                os.kill(host.proc.pid, signal.SIGCONT)
            host.stop()


def lock_holder(redis_server: RedisServer, hosts: list[ServiceProcess]) -> ServiceProcess | None:
    owner = str(redis_server.client().get(f"shield:lightrag:lock:{WORKSPACE}") or "")
    pid = int(owner.split(":")[1]) if owner else 0
    return next((host for host in hosts if host.proc is not None and host.proc.pid == pid), None)


def audit(pg: PostgresServer) -> list[tuple[int, str, int | None]]:
    rows = pg.admin("SELECT id, tbl, coalesce(token, -1) FROM fence_audit ORDER BY id").splitlines()
    return [(int(i), tbl, None if t == "-1" else int(t)) for i, tbl, t in (row.split("|") for row in rows)]


def refused_writes(host: ServiceProcess) -> float:
    text = host.client().get("/metrics").text
    line = next(line for line in text.splitlines() if line.startswith("shield_fence_refused_writes_total"))
    return float(line.split()[-1])


def test_a_holder_stopped_past_its_lease_writes_nothing_after_the_takeover(
    two_hosts: list[ServiceProcess], redis_server: RedisServer, pgvector_server: PostgresServer
) -> None:
    """SIGSTOP the host that holds the workspace lock with documents in flight; the
    other takes the lock over and writes; SIGCONT: every write the stopped host
    tries is refused (none of its token lands after the takeover's raise), its
    documents are processed again, the job completes, the stopped host works on,
    and verify-graph finds the graph consistent. Fails without the fence (the
    stopped host's writes land after the raise: the audit lists them). The
    feeder's side (answering and ending the superseded session, letting the
    lock go when nothing is in flight) is held by tests/unit/test_fence.py:
    here LightRAG's own abort of the refused batch would answer them too."""
    pg, hosts = pgvector_server, two_hosts
    pg.admin(AUDIT)
    accepted = ingest(hosts[0].client(), make_chunks(CHUNKS, prefix="takeover"))

    def holding_with_documents_in_flight() -> tuple[ServiceProcess, int] | None:
        holder = lock_holder(redis_server, hosts)
        token = int(redis_server.client().get(f"shield:lightrag:lock:{WORKSPACE}:fence") or 0)
        statuses = pg.admin(
            f"SELECT count(*) FROM lightrag_doc_status WHERE workspace = '{WORKSPACE}' AND status = 'processing'"
        )
        held = holder is not None and lock_holder(redis_server, hosts) is holder
        return (holder, token) if held and holder is not None and int(statuses) > 0 else None

    found = wait_until(holding_with_documents_in_flight, 60, "a host holding the lock, documents in flight", 0.05)
    stale, stale_token = found
    other = next(host for host in hosts if host is not stale)
    assert stale.proc is not None
    os.kill(stale.proc.pid, signal.SIGSTOP)
    try:

        def taken_over_and_written() -> int | None:
            raises = [(i, t) for i, tbl, t in audit(pg) if tbl == "shield_writer_fence" and (t or 0) > stale_token]
            if not raises:
                return None
            raised_at, token = raises[0]
            written = [i for i, tbl, t in audit(pg) if i > raised_at and t == token and tbl != "shield_writer_fence"]
            return raised_at if written else None

        try:
            raised_at = wait_until(taken_over_and_written, 60, f"{other.name} taking over and writing", 0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its task dump and health, in {other.stall_report()}") from None
        assert lock_holder(redis_server, hosts) in (other, None)  # None: its session has already ended
    finally:
        os.kill(stale.proc.pid, signal.SIGCONT)

    job = wait_job(hosts[0].client(), accepted["job_id"], timeout=240)
    assert job["status"] == "completed" and job["chunks_processed"] == CHUNKS, job
    trail = audit(pg)
    assert any(t == stale_token for _i, tbl, t in trail if tbl != "shield_writer_fence"), "the holder wrote before"
    late = [(i, tbl) for i, tbl, t in trail if i > raised_at and t == stale_token]
    assert not late, f"writes of the stopped host landed after the takeover: {late}"
    assert refused_writes(stale) > 0, stale.log_text()[-3000:]
    log = stale.log_text()
    assert f"this host's token is {stale_token}, PostgreSQL's fence is at" in log, log[-3000:]

    # The stopped host works on: alone now, it processes a job of its own.
    assert other.terminate() == 0
    again = ingest(stale.client(), make_chunks(2, offset=CHUNKS, prefix="takeover"))
    assert wait_job(stale.client(), again["job_id"], timeout=120)["status"] == "completed"
    lightrag = stale.client().get("/health/detailed").json()["dependencies"]["lightrag"]
    assert lightrag["fence"] > stale_token and lightrag["fence_refused_writes"] > 0, lightrag

    cli = run_cli(stale.env, "verify-graph", timeout=120)
    report = json.loads(cli.stdout.splitlines()[-1])
    assert cli.returncode == 0 and report["consistent"] is True, report
    assert report["counts"]["documents"]["processed"] == CHUNKS + 2, report["counts"]
