"""PostgreSQL: the connection (URL, TLS), the schema, and the job history queries."""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..settings import Settings
from .models import JobDuplicateRow, JobStatusRow
from .states import JobState
from .views import JobCounts, JobView, job_view


def database_url(settings: Settings) -> URL:
    return URL.create(
        "postgresql+asyncpg",
        username=settings.postgres_user,
        password=settings.postgres_password or None,
        host=settings.postgres_host,
        port=settings.postgres_port,
        database=settings.postgres_db,
    )


def ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    """libpq's sslmode as what asyncpg takes: False, or an SSL context that checks
    what the mode asks for (require: encryption only; verify-ca: the chain;
    verify-full: the chain and the host name), with the client certificate if set."""
    mode = settings.postgres_sslmode
    if mode == "disable":
        return False
    context = ssl.create_default_context(cafile=settings.postgres_sslrootcert or None)
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        context.check_hostname = False
    if settings.postgres_sslcert:
        context.load_cert_chain(settings.postgres_sslcert, settings.postgres_sslkey or None)
    return context


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        database_url(settings),
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"ssl": ssl_context(settings), "timeout": 5, "command_timeout": 10},
    )


class JobRow(JobCounts):
    """A job as the projection writes it."""

    job_metadata: dict[str, Any]
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    priority: str
    generation: int


def state_rank(column: ColumnElement[str]) -> ColumnElement[int]:
    """JobState.rank in SQL."""
    ranks = sorted({state.rank for state in JobState})
    whens = [(column.in_([s.value for s in JobState if s.rank == rank]), rank) for rank in ranks]
    return case(*whens, else_=0)


class JobHistory:
    """The job_status table: a monotonic upsert, and reads for the API."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def upsert(self, rows: Sequence[JobRow], duplicates: Mapping[str, Mapping[int, str]] | None = None) -> None:
        """Insert or update rows so that replays are harmless: counters never go down
        (GREATEST), a status never moves back, the first start and end times stay.
        A newer generation (a dead letter replayed into the job) is the one
        exception: its row replaces state, failures, error and end time as they are.
        `duplicates` (job id -> chunk index -> the document holding its text) go into
        job_duplicates in the same transaction, each chunk once."""
        stmt = insert(JobStatusRow).values(list(rows))
        new, table = stmt.excluded, JobStatusRow.__table__.c
        newer = new.generation > table.generation

        def unless_newer(monotonic: ColumnElement[Any], column: ColumnElement[Any]) -> ColumnElement[Any]:
            return case((newer, column), else_=monotonic)

        stmt = stmt.on_conflict_do_update(
            index_elements=[table.job_id],
            set_={
                "status": unless_newer(
                    case((state_rank(new.status) >= state_rank(table.status), new.status), else_=table.status),
                    new.status,
                ),
                "chunks_processed": func.greatest(table.chunks_processed, new.chunks_processed),
                "chunks_failed": unless_newer(func.greatest(table.chunks_failed, new.chunks_failed), new.chunks_failed),
                "error_message": unless_newer(func.coalesce(new.error_message, table.error_message), new.error_message),
                "started_at": func.coalesce(table.started_at, new.started_at),
                "completed_at": unless_newer(func.coalesce(table.completed_at, new.completed_at), new.completed_at),
                "updated_at": func.greatest(table.updated_at, new.updated_at),
                "generation": func.greatest(table.generation, new.generation),
                "documents_removed": func.greatest(table.documents_removed, new.documents_removed),
                "chunks_duplicate": func.greatest(table.chunks_duplicate, new.chunks_duplicate),
                "job_metadata": literal_column("job_status.job_metadata"),
            },
        )
        held = [
            {"job_id": job_id, "chunk_index": index, "document_id": document}
            for job_id, found in (duplicates or {}).items()
            for index, document in found.items()
        ]
        async with self._engine.begin() as conn:
            await conn.execute(stmt)
            if held:
                await conn.execute(insert(JobDuplicateRow).values(held).on_conflict_do_nothing())

    async def duplicates(self, job_id: str) -> dict[int, str]:
        """A finished job's content duplicates: chunk index -> the document holding its text."""
        query = select(JobDuplicateRow.chunk_index, JobDuplicateRow.document_id).where(JobDuplicateRow.job_id == job_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {int(index): str(document) for index, document in rows}

    async def get(self, job_id: str) -> JobView | None:
        query = select(JobStatusRow.__table__).where(JobStatusRow.job_id == job_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        return job_view(dict(row)) if row else None

    async def list_recent(self, status: JobState | None, limit: int) -> list[JobView]:
        query = select(JobStatusRow.__table__).order_by(JobStatusRow.created_at.desc()).limit(limit)
        if status is not None:
            query = query.where(JobStatusRow.status == status.value)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [job_view(dict(row)) for row in rows]

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
