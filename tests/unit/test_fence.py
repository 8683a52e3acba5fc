"""The writer fence's parts without a server (lightrag/fence.py; on a real PostgreSQL:
tests/service/test_fence.py): which statements it fences, the token a write
carries, a take superseded already, a session's end, how a refusal is
classified, what the feeder does when told, and the contract with LightRAG's
PostgreSQL layer that the patch relies on (its source, as pinned)."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from shield_orchestrator.lightrag.feeder import LightRAGFeeder
from shield_orchestrator.lightrag.fence import (
    CHECK_SQL,
    FencedConnection,
    FencedLock,
    StaleWriter,
    WriterFence,
    _QuietRefusals,
    cache_only,
    patch_postgres_fence,
    reads,
)
from shield_orchestrator.workers.breaker import DependencyGate
from shield_orchestrator.workers.faults import STORAGE, FaultKind, classify_exception

from tests.unit.test_feeder import _RECORD, _FakePipeline, text_task

LIGHTRAG_UPDATE_RETURNING = "UPDATE LIGHTRAG_DOC_STATUS SET error_msg = $3 WHERE workspace=$1 AND id=$2 RETURNING id"


@pytest.mark.parametrize(
    ("sql", "only_reads"),
    [
        ("SELECT id FROM lightrag_doc_full WHERE workspace=$1", True),
        ("  (SELECT 1)", True),
        ("WITH a AS (SELECT 1) SELECT * FROM a OFFSET 3", True),
        ("SELECT jsonb_set(properties, '{a}', '1') FROM t", True),
        (LIGHTRAG_UPDATE_RETURNING, False),
        ("INSERT INTO t VALUES ($1)", False),
        ("WITH endpoints AS (INSERT INTO n VALUES (1) RETURNING id) SELECT count(*) FROM endpoints", False),
        ("SELECT id FROM t ORDER BY id FOR UPDATE", False),
        ("DELETE FROM t WHERE id = ANY($1)", False),
        ("CREATE INDEX i ON t (id)", False),
    ],
)
def test_reads_are_queries_that_name_no_write(sql: str, only_reads: bool) -> None:
    assert reads(sql) is only_reads


@pytest.mark.parametrize(
    ("sql", "unfenced"),
    [
        ("INSERT INTO LIGHTRAG_LLM_CACHE(workspace,id,original_prompt) VALUES ($1,$2,$3) ON CONFLICT DO UPDATE", True),
        ("insert into lightrag_llm_cache (id) values ($1)", True),
        ("INSERT INTO LIGHTRAG_DOC_FULL (id) VALUES ($1)", False),
        ("DELETE FROM LIGHTRAG_LLM_CACHE WHERE id IN (SELECT id FROM LIGHTRAG_DOC_CHUNKS)", False),
        ("UPDATE LIGHTRAG_DOC_STATUS SET status = $1", False),
    ],
)
def test_only_the_llm_caches_writes_go_unfenced(sql: str, unfenced: bool) -> None:
    assert cache_only(sql) is unfenced


class FakeConnection:
    """asyncpg's connection as the fence uses it: statements recorded, the fence's
    row answering `stored`."""

    def __init__(self, stored: int | None) -> None:
        self.stored = stored
        self.log: list[str] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.log.append("BEGIN")
        try:
            yield
        except BaseException:
            self.log.append("ROLLBACK")
            raise
        self.log.append("COMMIT")

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, int] | None:
        if sql == CHECK_SQL:
            self.log.append(f"CHECK {args[1]}")
            return None if self.stored is None else {"token": self.stored}
        self.log.append(sql)
        return None

    async def execute(self, sql: str, *args: Any) -> str:
        self.log.append(sql)
        return "OK"

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.log.append(sql)
        return []


def attached_fence(token: int | None) -> WriterFence:
    fence = WriterFence("ws", lease_seconds=3)
    fence._dbs = [object()]
    fence.token = token
    return fence


async def test_a_write_opens_one_checked_transaction_and_a_read_none() -> None:
    raw = FakeConnection(stored=4)
    conn = FencedConnection(raw, attached_fence(4), None)  # type: ignore[arg-type]
    await conn.fetch("SELECT 1")
    await conn.execute("INSERT INTO t VALUES (1)")
    async with conn.transaction():
        await conn.fetch(LIGHTRAG_UPDATE_RETURNING)
        async with conn.transaction():  # a savepoint of the checked one
            await conn.execute("DELETE FROM t")
    assert raw.log == [
        "SELECT 1",
        *("BEGIN", "CHECK 4", "INSERT INTO t VALUES (1)", "COMMIT"),
        *("BEGIN", "CHECK 4", LIGHTRAG_UPDATE_RETURNING, "BEGIN", "DELETE FROM t", "COMMIT", "COMMIT"),
    ]


async def test_a_newer_token_refuses_the_write_before_it_is_sent() -> None:
    told: list[str] = []
    fence = attached_fence(4)
    fence._on_stale = told.append
    raw = FakeConnection(stored=5)
    conn = FencedConnection(raw, fence, None)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(StaleWriter, match="token is 4, PostgreSQL's fence is at 5"):
            await conn.execute("INSERT INTO t VALUES (1)")
    assert raw.log == ["BEGIN", "CHECK 4", "ROLLBACK"] * 2
    assert fence.refused == 2 and fence.stale and len(told) == 1  # told once per superseded token
    with pytest.raises(StaleWriter, match="no fence is raised"):
        await FencedConnection(FakeConnection(None), attached_fence(4), None).execute("DELETE FROM t")  # type: ignore[arg-type]


async def test_a_pipeline_run_writes_under_the_token_of_the_session_that_started_it() -> None:
    """A run that outlives its session is refused once any later take raised the fence."""
    fence = attached_fence(4)
    seen: list[int | None] = []

    async def a_task_of_the_run() -> None:
        await asyncio.sleep(0.05)
        from shield_orchestrator.lightrag import fence as module

        seen.append(module._RUN_TOKEN.get())

    async with fence.run():
        task = asyncio.create_task(a_task_of_the_run())
    fence.token = 5  # the next session's take
    await task
    assert seen == [4]
    raw = FakeConnection(stored=5)
    with pytest.raises(StaleWriter, match="token is 4"):
        await FencedConnection(raw, fence, seen[0]).execute("INSERT INTO t VALUES (1)")  # type: ignore[arg-type]
    assert not fence.stale, "a run of an earlier session does not end the current one"


class FakeLease:
    def __init__(self, fence: int) -> None:
        self.fence = fence
        self.held = False
        self.advanced: list[int] = []

    async def __aenter__(self) -> FakeLease:
        self.held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.held = False

    async def advance_fence(self, at_least: int) -> None:
        self.advanced.append(at_least)


class StoredFence(WriterFence):
    def __init__(self, stored: int) -> None:
        super().__init__("ws", lease_seconds=3)
        self._dbs = [object()]
        self.stored = stored

    async def take(self, token: int) -> int:
        self.stored = max(self.stored, token)
        if self.stored == token:
            self.token = token
        return self.stored


async def test_a_take_behind_postgres_advances_the_counter_and_lets_the_lease_go() -> None:
    """The Redis counter behind PostgreSQL's fence (a failover lost increments): the
    take is refused, the counter is advanced past the fence, the lease is let go."""
    lease = FakeLease(fence=3)
    lock = FencedLock(lease, StoredFence(7))  # type: ignore[arg-type]
    with pytest.raises(StaleWriter, match="the workspace lock's take refused"):
        await lock.__aenter__()
    assert lease.advanced == [7] and not lease.held
    lease.fence = 8
    async with lock:
        assert lock.writer.token == 8 and lease.held


async def test_a_session_ends_after_its_pipeline_run() -> None:
    lease = FakeLease(fence=1)
    lock = FencedLock(lease, StoredFence(0))  # type: ignore[arg-type]
    order: list[str] = []

    async def run() -> None:
        async with lock.writer.run():
            await asyncio.sleep(0.2)
            order.append("run ended")

    await lock.__aenter__()
    running = asyncio.create_task(run())
    await asyncio.sleep(0.01)
    await lock.__aexit__(None, None, None)
    order.append("released")
    await running
    assert order == ["run ended", "released"]


def test_lightrags_own_lines_about_a_refusal_are_held_back() -> None:
    """The fence's one line per superseded token says it; LightRAG's tracebacks, SQL
    and data about the same write do not repeat it, its other lines pass."""
    quiet = _QuietRefusals()
    refused = logging.LogRecord("lightrag", logging.ERROR, "", 0, "error:%s", (StaleWriter("ws", 1, 2),), None)
    other = logging.LogRecord("lightrag", logging.ERROR, "", 0, "Merging stage failed in document %d", (1,), None)
    assert not quiet.filter(refused) and quiet.filter(other)


def test_a_refusal_is_transient_and_no_dependencys_failure() -> None:
    """Classified so, a superseded chunk spends no attempt and opens no breaker."""
    refused = StaleWriter("ws", 1, 2)
    for error in (refused, RuntimeError("LightRAG wrapped it")):
        if error is not refused:
            error.__cause__ = refused
        failure = classify_exception(error, STORAGE)
        assert failure.kind is FaultKind.TRANSIENT and failure.dependency is None, failure


class CountingLock:
    def __init__(self) -> None:
        self.takes = self.releases = 0

    async def __aenter__(self) -> CountingLock:
        self.takes += 1
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.releases += 1


async def _always() -> bool:
    return True


async def test_the_feeder_told_its_session_was_superseded_answers_transient_and_ends_it() -> None:
    """The queued chunk is admitted only under a new take of the lock, not in the
    superseded session."""
    rag = _FakePipeline({"slow": 5.0})
    lock = CountingLock()
    gate = DependencyGate(lambda _change: None)
    feeder = LightRAGFeeder(rag, lock, gate, str, _always, task_timeout=60, window=1, ahead=1)  # type: ignore[arg-type]
    feeder.start()
    futures = feeder.submit([text_task(0, "slow"), text_task(1, "queued")])  # the window takes one
    await asyncio.sleep(0.1)
    assert rag.started == ["slow"] and feeder.in_flight == 1
    feeder.fenced_out("token 1, fence at 2")
    outcome = await asyncio.wait_for(futures["chunk-j-0"], 1)
    assert outcome is not None and outcome.transient and outcome.dependency is None, outcome
    assert "token 1, fence at 2" in outcome.message
    assert await asyncio.wait_for(futures["chunk-j-1"], 5) is None
    assert lock.takes == 2, "the queued chunk went in under a new take of the lock"
    await feeder.stop()


async def test_a_session_whose_documents_were_answered_at_admission_lets_the_lock_go() -> None:
    """Already PROCESSED (a redelivery after a takeover): nothing flies, and the
    session ends at once instead of holding the lock, renewed, until the next
    submission (the other hosts and verify-graph would wait for it)."""
    rag = _FakePipeline()
    rag.doc_status.docs["chunk-j-0"] = {"status": "processed", **_RECORD}
    lock = CountingLock()
    gate = DependencyGate(lambda _change: None)
    feeder = LightRAGFeeder(rag, lock, gate, str, _always, task_timeout=60, window=4, ahead=2)  # type: ignore[arg-type]
    feeder.start()
    assert await asyncio.wait_for(feeder.submit([text_task(0, "done")])["chunk-j-0"], 1) is None
    await asyncio.sleep(0.1)
    assert (lock.takes, lock.releases) == (1, 1)
    await feeder.stop()


# --- the contract with LightRAG's PostgreSQL layer (lightrag-hku 1.5.7) ----------


def _pg_sources() -> dict[str, str]:
    from lightrag.kg import pgtable_impl, postgres_impl

    return {Path(module.__file__ or "").name: inspect.getsource(module) for module in (postgres_impl, pgtable_impl)}


def test_lightrags_pg_layer_writes_only_through_what_the_fenced_connection_wraps() -> None:
    """Fails when LightRAG's PostgreSQL storages call a connection method the fenced
    connection does not wrap (copy_records_to_table, prepare, cursor...), use a
    transaction other than as `async with`, or acquire a connection anywhere but in
    `_run_with_retry` (a write there would escape the fence)."""
    wrapped = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "transaction"}
    outside_operations = {"get_reset_query"}  # PostgreSQLDB's pool reset, not an operation
    for name, source in _pg_sources().items():
        called = set(re.findall(r"\b(?:connection|conn)\.(\w+)\(", source))
        assert called <= wrapped | outside_operations, (name, called - wrapped - outside_operations)
        transactions = re.findall(r"^\s*(.*)\.transaction\(", source, re.MULTILINE)
        assert transactions and all(line.strip().startswith("async with") for line in transactions), name
    acquiring = {
        function.name
        for source in _pg_sources().values()
        for function in ast.walk(ast.parse(source))
        if isinstance(function, ast.AsyncFunctionDef | ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute) and node.attr in ("acquire", "connect")
    }
    # initdb's bootstrap connection creates the vector extension before the pool exists.
    assert acquiring == {"_run_with_retry", "_create_pool_once", "initdb"}, acquiring


def test_the_patch_is_applied_once_over_lightrags_own_run_with_retry() -> None:
    from lightrag.kg.postgres_impl import PostgreSQLDB

    patch_postgres_fence()
    patched = PostgreSQLDB._run_with_retry
    patch_postgres_fence()
    assert PostgreSQLDB._run_with_retry is patched
    original = patched.__wrapped__
    assert not getattr(original, "__shield_fenced__", False)
    parameters = list(inspect.signature(original).parameters)
    assert parameters == ["self", "operation", "with_age", "graph_name", "timing_label"]
