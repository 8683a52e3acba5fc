"""The writer fence: PostgreSQL refuses the writes of a workspace-lock holder that
another host has superseded.

The workspace lock (locks.py) is a lease: a host that stalls past it (a GC
pause, a VM stall, a partition) still holds LightRAG's handles and would write
after another host took the lease. Every take of the lease increments a
fencing counter (`RedisLeaseLock.fence`); here PostgreSQL checks it:

- The fence: one row per workspace in `shield_writer_fence(workspace, token)`,
  created idempotently when the service has opened LightRAG's storages. The
  host that takes the lock raises it to its token (`GREATEST`, in an UPDATE of
  the row: it waits for every write transaction that still holds the row's
  share lock, i.e. the previous holder's writes in flight).
- Every write of LightRAG's PostgreSQL layer (the four PG storages: all their
  statements go through `PostgreSQLDB._run_with_retry`) runs in a transaction
  whose first statement locks that row FOR SHARE and reads it: a token newer
  than the writer's refuses the write (StaleWriter) before any of it is sent,
  in the same transaction. `execute`, `executemany`, a transaction, or a
  `fetch*` whose SQL writes (`UPDATE ... RETURNING`) open it; reads are not
  fenced.
- The writer's token: a LightRAG pipeline run carries the token of the session
  that started it (a context variable, which every task LightRAG starts for
  the run inherits), so a run that outlives its session is refused after any
  later take, this host's own included; anything else carries the token this
  process took last. A write before this process's first take is refused;
  `initialize_storages` (schema, migrations) runs before the fence is attached.
- A stalled writer holds a raise back for one lease at most: its fenced
  transactions run with `idle_in_transaction_session_timeout` at the lease's
  TTL, so PostgreSQL ends a transaction whose host has stopped.
- A refused write is counted (`shield_fence_refused_writes_total`, and
  `/health/detailed`), logged once per superseded token with both tokens
  (LightRAG's own lines about it are held back), and the feeder is told: it
  answers its documents in flight transient (their chunks stay pending and
  come back) and ends its session; the session's buffered vector writes are
  dropped; the next admission takes the lock again.

Only the PostgreSQL storages are fenced. The file storages are one host's
(the deployment refuses several hosts on them), with an in-process lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..metrics import Metrics
from ..workers.faults import Superseded
from .boundary import LightRAGInstance
from .locks import RedisLeaseLock

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("shield_orchestrator.lock")

TABLE = "shield_writer_fence"
CREATE_SQL = "CREATE TABLE IF NOT EXISTS shield_writer_fence (workspace text PRIMARY KEY, token bigint NOT NULL)"
RAISE_SQL = (
    "INSERT INTO shield_writer_fence AS fence (workspace, token) VALUES ($1, $2) "
    "ON CONFLICT (workspace) DO UPDATE SET token = GREATEST(fence.token, EXCLUDED.token) RETURNING token"
)
# The writer's token is also left in the transaction as `shield.writer_token`
# (what an audit trigger can read: tests/service/test_fence.py has one).
CHECK_SQL = (
    "SELECT token, set_config('shield.writer_token', $2, true), "
    "set_config('idle_in_transaction_session_timeout', $3, true) FROM shield_writer_fence "
    "WHERE workspace = $1 FOR SHARE"
)
IDLE_SQL = "SELECT set_config('idle_in_transaction_session_timeout', $1, true)"
REFUSED = "refused by the writer fence"
RUN_END_WAIT_SECONDS = 30.0  # a session's end waits this long at most for its pipeline run to end

_READ_FIRST = frozenset({"SELECT", "WITH", "SHOW", "VALUES", "TABLE", "EXPLAIN"})
_FIRST_WORD = re.compile(r"^[\s(]*(\w+)")
_WRITES = re.compile(r"(?i)\b(INSERT|UPDATE|DELETE|MERGE|TRUNCATE|CREATE|DROP|ALTER|COPY|SET|REMOVE|CALL|DO)\b")

# The token of the pipeline run under way in this context (None: the process's).
_RUN_TOKEN: contextvars.ContextVar[int | None] = contextvars.ContextVar("shield_writer_token", default=None)
# LightRAG's database clients (PostgreSQLDB) this process fences, and their fence.
_FENCES: weakref.WeakKeyDictionary[object, WriterFence] = weakref.WeakKeyDictionary()

Operation = Callable[[Any], Awaitable[Any]]


class StaleWriter(Superseded):
    """A write refused by the writer fence: PostgreSQL holds a newer token than the
    writer's (another host took the workspace lock since), or the writer has none."""

    def __init__(self, workspace: str, token: int | None, current: int | None, what: str = "write") -> None:
        self.workspace, self.token, self.current = workspace, token, current
        if token is None:
            why = "this process has not taken the workspace lock yet"
        elif current is None:
            why = f"no fence is raised for the workspace (this host's token {token})"
        else:
            why = f"this host's token is {token}, PostgreSQL's fence is at {current}: another host took the lock"
        super().__init__(f"{what} {REFUSED} of workspace {workspace!r}: {why}")


_TABLES = re.compile(r"(?i)\bLIGHTRAG_[A-Z_]+\b")
CACHE_TABLE = "LIGHTRAG_LLM_CACHE"


def cache_only(sql: str) -> bool:
    """Whether a statement touches LightRAG's LLM response cache and no other of its
    tables. Such writes are not fenced: the cache is keyed by what makes an answer
    (prompt, model), so any host may add to it at any time, and every host's
    extraction ahead of the pipeline does (extract.py), holding the lock or not."""
    tables = {name.upper() for name in _TABLES.findall(sql)}
    return tables == {CACHE_TABLE}


def reads(sql: str) -> bool:
    """Whether a statement only reads: it starts as a query and names no writing keyword
    (in doubt it counts as a write, which costs a fenced transaction, nothing more)."""
    first = _FIRST_WORD.match(sql)
    return first is not None and first.group(1).upper() in _READ_FIRST and not _WRITES.search(sql)


class WriterFence:
    """The writer fence of one workspace, as this process holds it.

    Owns the token this process took last (`token`), the LightRAG database
    clients it fences, the count of refused writes, the pipeline runs under
    way, and the callback told when this process's own session is superseded.
    Guarantees, once attached: every write through the clients is checked
    against PostgreSQL's fence in its own transaction and refused (StaleWriter)
    when the fence is newer than the writer's token; `take` returns only once
    the fence is raised, i.e. once the previous holder's writes in flight have
    ended; each superseded token is logged once and told once."""

    def __init__(self, workspace: str, lease_seconds: float, metrics: Metrics | None = None) -> None:
        self.workspace = workspace
        self.token: int | None = None
        self.refused = 0
        self.stale = False  # the session under this token was superseded
        self.idle = f"{max(1000, int(lease_seconds * 1000))}ms"
        self._metrics = metrics
        self._dbs: list[Any] = []
        self._rag: LightRAGInstance | None = None
        self._on_stale: Callable[[str], None] = lambda reason: None
        self._told: set[int | None] = set()
        self._runs = 0
        self._no_runs = asyncio.Event()
        self._no_runs.set()

    @property
    def attached(self) -> bool:
        return bool(self._dbs)

    async def attach(self, rag: LightRAGInstance, on_stale: Callable[[str], None]) -> None:
        """Fence the instance's PostgreSQL clients (after `initialize_storages`); the
        table is created if it is not there."""
        patch_postgres_fence()
        dbs = postgres_clients(rag)
        if not dbs:
            raise RuntimeError("the writer fence needs LightRAG's PostgreSQL storages")
        await _unfenced(dbs[0], _create_table)
        for db in dbs:
            _FENCES[db] = self
        self._dbs, self._rag, self._on_stale = dbs, rag, on_stale
        _carry_tokens(rag, self)
        lightrag_log = logging.getLogger("lightrag")
        if not any(isinstance(known, _QuietRefusals) for known in lightrag_log.filters):
            lightrag_log.addFilter(_QuietRefusals())

    async def take(self, token: int) -> int:
        """Raise the fence to `token` (waits for the writes in flight under older ones);
        the fence's token after: above `token` when this take was superseded already."""

        async def raise_fence(connection: asyncpg.Connection) -> int:
            return int(await connection.fetchval(RAISE_SQL, self.workspace, token))

        stored = int(await _unfenced(self._dbs[0], raise_fence))
        if stored == token:
            self.token, self.stale = token, False
        return stored

    async def check(self, connection: asyncpg.Connection, run_token: int | None) -> None:
        """In the writer's transaction: lock the fence's row FOR SHARE and refuse the write
        (StaleWriter) when its token is newer than the writer's."""
        token = run_token if run_token is not None else self.token
        if token is None:
            raise self._refuse(None, None)
        row = await connection.fetchrow(CHECK_SQL, self.workspace, str(token), self.idle)
        current = None if row is None else int(row["token"])
        if current is None or current > token:
            raise self._refuse(token, current)

    def _refuse(self, token: int | None, current: int | None) -> StaleWriter:
        error = StaleWriter(self.workspace, token, current)
        self.refused += 1
        if self._metrics is not None:
            self._metrics.fence_refused_writes.inc()
        if token in self._told:
            return error
        self._told.add(token)
        if token is None or token != self.token:
            log.error("%s%s", error, "" if token is None else " (a pipeline run of an earlier session)")
            return error
        self.stale = True
        log.error("%s; this host ends its session, its documents in flight come back", error)
        self._on_stale(str(error))
        return error

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """A pipeline run: it, and every task it starts, writes under the current token."""
        self._runs += 1
        self._no_runs.clear()
        reset = _RUN_TOKEN.set(self.token)
        try:
            yield
        finally:
            _RUN_TOKEN.reset(reset)
            self._runs -= 1
            if not self._runs:
                self._no_runs.set()

    async def end_session(self) -> None:
        """Before the lock is let go: the session's pipeline run ends first (at most
        RUN_END_WAIT_SECONDS), and a superseded session's buffered vector writes go."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._no_runs.wait(), RUN_END_WAIT_SECONDS)
        if self.stale and self._rag is not None:
            for storage in (self._rag.chunks_vdb, self._rag.entities_vdb, self._rag.relationships_vdb):
                await storage.drop_pending_index_ops()
            log.info("the superseded session's buffered vector writes are dropped (fence %s)", self.token)

    def report(self) -> dict[str, str | int | float]:
        return {"fence": self.token or 0, "fence_refused_writes": self.refused}


class _QuietRefusals(logging.Filter):
    """LightRAG's own error lines about a refused write (its tracebacks, the SQL and
    the data it tried): the fence's one line per superseded token says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return REFUSED not in record.getMessage()


class FencedLock:
    """The workspace lock across hosts with its writer fence: the lease (locks.py),
    and PostgreSQL's fence raised to the lease's token at each take.

    Owns the lease and the fence. Guarantees: a take returns only once the
    fence is at its token (older writes in flight have ended) or it raises
    StaleWriter (the fence was ahead: the Redis counter is advanced past it and
    the lease let go, so the next take succeeds); a release first lets the
    session's pipeline run end. Before the fence is attached (the CLI's
    verify-graph, which writes nothing) it is the lease alone."""

    def __init__(self, lease: RedisLeaseLock, fence: WriterFence) -> None:
        self.lease = lease
        self.writer = fence

    @property
    def fence(self) -> int:
        return self.lease.fence

    async def contended(self) -> bool:
        return await self.lease.contended()

    async def __aenter__(self) -> FencedLock:
        await self.lease.__aenter__()
        if not self.writer.attached:
            return self
        try:
            stored = await self.writer.take(self.lease.fence)
        except BaseException:
            await self.lease.__aexit__(None, None, None)
            raise
        if stored > self.lease.fence:
            await self.lease.advance_fence(stored)
            await self.lease.__aexit__(None, None, None)
            error = StaleWriter(self.writer.workspace, self.lease.fence, stored, "the workspace lock's take")
            log.warning("%s; the fencing counter is advanced past it for the next take", error)
            raise error
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.writer.attached:
            await self.writer.end_session()
        await self.lease.__aexit__(exc_type, exc, tb)


async def fence_writes(lock: object, rag: LightRAGInstance, on_stale: Callable[[str], None]) -> None:
    """Attach the lock's writer fence to the instance's storages (a FencedLock's; any
    other lock is left as it is: the file storages are not fenced)."""
    if isinstance(lock, FencedLock):
        await lock.writer.attach(rag, on_stale)


def fence_report(lock: object) -> dict[str, str | int | float]:
    """The fence's token and refused writes, for /health/detailed (empty without one)."""
    return lock.writer.report() if isinstance(lock, FencedLock) and lock.writer.attached else {}


class FencedConnection:
    """The connection an operation of LightRAG's PostgreSQL layer gets while its
    client is fenced: asyncpg's, with every write inside a fenced transaction.

    Owns the nesting depth of the transactions it opened. Guarantees: the
    outermost transaction checks the fence first (the check's share lock is
    held to its end), a write outside any transaction gets a fenced one of its
    own, an inner transaction is a savepoint of the checked one."""

    def __init__(self, connection: asyncpg.Connection, fence: WriterFence, token: int | None) -> None:
        self._connection = connection
        self._fence = fence
        self._token = token
        self._depth = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    @contextlib.asynccontextmanager
    async def transaction(self, **options: Any) -> AsyncIterator[Any]:
        async with self._connection.transaction(**options) as transaction:
            if not self._depth:
                await self._fence.check(self._connection, self._token)
            self._depth += 1
            try:
                yield transaction
            finally:
                self._depth -= 1

    async def _write(self, method: Callable[..., Awaitable[Any]], sql: str, *args: Any, **kwargs: Any) -> Any:
        if self._depth:
            return await method(sql, *args, **kwargs)
        if cache_only(sql):
            # Not fenced, but bounded like a fenced write: a host stopped inside it
            # (SIGSTOP, a VM stall) must not hold the cache row's lock, on which
            # another host's write of the same answer would wait for ever.
            async with self._connection.transaction():
                await self._connection.execute(IDLE_SQL, self._fence.idle)
                return await method(sql, *args, **kwargs)
        async with self.transaction():
            return await method(sql, *args, **kwargs)

    async def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        return await self._write(self._connection.execute, sql, *args, **kwargs)

    async def executemany(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        return await self._write(self._connection.executemany, sql, *args, **kwargs)

    async def fetch(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if reads(sql):
            return await self._connection.fetch(sql, *args, **kwargs)
        return await self._write(self._connection.fetch, sql, *args, **kwargs)

    async def fetchrow(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if reads(sql):
            return await self._connection.fetchrow(sql, *args, **kwargs)
        return await self._write(self._connection.fetchrow, sql, *args, **kwargs)

    async def fetchval(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if reads(sql):
            return await self._connection.fetchval(sql, *args, **kwargs)
        return await self._write(self._connection.fetchval, sql, *args, **kwargs)


def patch_postgres_fence() -> None:
    """Route every operation of LightRAG's PostgreSQL clients through a FencedConnection
    when the client is fenced (lightrag-hku 1.5.7: `PostgreSQLDB._run_with_retry`
    runs each one on a pooled connection; tests/service/test_fence.py holds it to
    that). A client that is not fenced runs as LightRAG has it. Applied once."""
    from lightrag.kg.postgres_impl import PostgreSQLDB

    original = PostgreSQLDB._run_with_retry
    if getattr(original, "__shield_fenced__", False):
        return

    async def run_with_retry(self: object, operation: Operation, **kwargs: Any) -> Any:
        fence = _FENCES.get(self)
        if fence is None:
            return await original(self, operation, **kwargs)
        token = _RUN_TOKEN.get()

        async def fenced(connection: asyncpg.Connection) -> Any:
            return await operation(FencedConnection(connection, fence, token))

        return await original(self, fenced, **kwargs)

    run_with_retry.__shield_fenced__ = True  # type: ignore[attr-defined]
    run_with_retry.__wrapped__ = original  # type: ignore[attr-defined]  # LightRAG's own
    PostgreSQLDB._run_with_retry = run_with_retry


def postgres_clients(rag: LightRAGInstance) -> list[Any]:
    """The distinct PostgreSQLDB clients of the instance's storages."""
    from lightrag.kg.postgres_impl import PostgreSQLDB

    found: dict[int, Any] = {}
    for storage in rag._index_storages():
        db = getattr(storage, "db", None)
        if isinstance(db, PostgreSQLDB):
            found.setdefault(id(db), db)
    return list(found.values())


async def _unfenced(db: Any, operation: Operation) -> Any:
    """An operation on the client as LightRAG runs it (the fence's own statements)."""
    run = getattr(type(db)._run_with_retry, "__wrapped__", type(db)._run_with_retry)
    return await run(db, operation)


async def _create_table(connection: asyncpg.Connection) -> None:
    async with connection.transaction():
        # Two hosts starting at once: CREATE TABLE IF NOT EXISTS can race on the catalog.
        await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", TABLE)
        await connection.execute(CREATE_SQL)


def _carry_tokens(rag: LightRAGInstance, fence: WriterFence) -> None:
    """Every pipeline run the feeder starts carries the session's token (WriterFence.run)."""
    run = rag.apipeline_process_enqueue_documents
    if getattr(run, "__shield_fenced__", False):
        return

    async def run_under_token() -> None:
        async with fence.run():
            await run()

    run_under_token.__shield_fenced__ = True  # type: ignore[attr-defined]
    rag.apipeline_process_enqueue_documents = run_under_token
