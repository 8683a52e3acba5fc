"""Schema migrations of the job history, with Alembic.

Alembic's runtime (MigrationContext, Operations, its alembic_version table)
runs the revisions below, written as plain functions in this module rather
than in an Alembic script directory (alembic.ini, env.py, versions/): the
migrations need no configuration of their own and ship as one module of the
package. `python -m shield_orchestrator migrate` upgrades to the head,
idempotently, under a PostgreSQL advisory lock (two hosts deploying at once
take turns); `--to REVISION` goes down as well.

A database created by an earlier release (init-db, no alembic_version table
but a job_status table) is stamped at the first revision, which is exactly
that schema, and upgraded from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .states import JobState

LOCK_KEY = 74_011_2201  # pg_advisory_lock key of the migrations (any host, any process)
TABLE = "job_status"


@dataclass(frozen=True)
class Revision:
    """One schema step: its id, the revision it follows, and how to apply and undo it
    (plain functions of Alembic's Operations)."""

    id: str
    down: str | None
    message: str
    upgrade: Callable[[Operations], None]
    downgrade: Callable[[Operations], None]


def _initial_up(op: Operations) -> None:
    op.create_table(
        TABLE,
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("job_type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("chunks_total", sa.Integer, nullable=False),
        sa.Column("chunks_processed", sa.Integer, nullable=False),
        sa.Column("chunks_failed", sa.Integer, nullable=False),
        sa.Column("job_metadata", sa.dialects.postgresql.JSONB, nullable=False),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_job_status_status", TABLE, ["status"])
    op.create_index("ix_job_status_created_at", TABLE, ["created_at"])


def _initial_down(op: Operations) -> None:
    op.drop_table(TABLE)


STATES_0002 = tuple(state.value for state in JobState)


def _cancel_replay_priority_up(op: Operations) -> None:
    """The cancelled state, replays (a generation that may move a row back from
    failed once) and priorities."""
    op.add_column(TABLE, sa.Column("priority", sa.String(8), nullable=False, server_default="normal"))
    op.add_column(TABLE, sa.Column("generation", sa.Integer, nullable=False, server_default="0"))
    allowed = ", ".join(f"'{state}'" for state in STATES_0002)
    op.create_check_constraint("ck_job_status_status", TABLE, f"status IN ({allowed})")


def _cancel_replay_priority_down(op: Operations) -> None:
    op.drop_constraint("ck_job_status_status", TABLE, type_="check")
    op.drop_column(TABLE, "generation")
    op.drop_column(TABLE, "priority")


def _job_types_up(op: Operations) -> None:
    """Job types: the documents a delete job removed."""
    op.add_column(TABLE, sa.Column("documents_removed", sa.Integer, nullable=False, server_default="0"))


def _job_types_down(op: Operations) -> None:
    op.drop_column(TABLE, "documents_removed")


DUPLICATES = "job_duplicates"


def _duplicates_up(op: Operations) -> None:
    """Content duplicates: the count per job, and per chunk the document holding its text."""
    op.add_column(TABLE, sa.Column("chunks_duplicate", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        DUPLICATES,
        sa.Column("job_id", sa.String(36), sa.ForeignKey(f"{TABLE}.job_id", ondelete="CASCADE"), primary_key=True),
        sa.Column("chunk_index", sa.Integer, primary_key=True),
        sa.Column("document_id", sa.Text, nullable=False),
    )


def _duplicates_down(op: Operations) -> None:
    op.drop_table(DUPLICATES)
    op.drop_column(TABLE, "chunks_duplicate")


REVISIONS = (
    Revision("0001", None, "job_status: the schema init-db created", _initial_up, _initial_down),
    Revision(
        "0002",
        "0001",
        "cancelled state, replay generation, priority",
        _cancel_replay_priority_up,
        _cancel_replay_priority_down,
    ),
    Revision("0003", "0002", "job types: documents removed by a delete job", _job_types_up, _job_types_down),
    Revision("0004", "0003", "content duplicates per job and per chunk", _duplicates_up, _duplicates_down),
)
HEAD = REVISIONS[-1].id


@dataclass(frozen=True)
class MigrationReport:
    """What a migration did: the revision before, the one it brought the schema to, and
    the revisions run, in order."""

    before: str | None
    after: str | None
    applied: list[str]


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _plan(start: str | None, target: str | None) -> tuple[list[Revision], bool]:
    """The revisions to run from start to target, and whether that is an upgrade."""
    order = [None, *(revision.id for revision in REVISIONS)]
    if target not in order:
        raise ValueError(f"unknown revision {target!r}; known: {', '.join(str(item) for item in order[1:])}")
    here, there = order.index(start), order.index(target)
    if there >= here:
        return list(REVISIONS[here:there]), True
    return list(reversed(REVISIONS[there:here])), False


def migrate_sync(conn: Connection, target: str | None = HEAD) -> MigrationReport:
    """Bring the schema to `target` (None: no table at all), in one transaction."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    context = MigrationContext.configure(conn)
    before = context.get_current_revision()
    if before is None and sa.inspect(conn).has_table(TABLE):
        before = "0001"  # created by init-db, before migrations existed: that is revision 0001
        _set_version(conn, before)
    steps, upgrade = _plan(before, target)
    op = Operations(context)
    for revision in steps:
        (revision.upgrade if upgrade else revision.downgrade)(op)
        _set_version(conn, revision.id if upgrade else revision.down)
    return MigrationReport(before, target, [revision.id for revision in steps])


def _set_version(conn: Connection, revision: str | None) -> None:
    """Alembic's own version table (alembic_version), with the one revision in force."""
    conn.execute(
        sa.text(
            "CREATE TABLE IF NOT EXISTS alembic_version "
            "(version_num VARCHAR(32) NOT NULL, CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
        )
    )
    conn.execute(sa.text("DELETE FROM alembic_version"))
    if revision is not None:
        conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES (:rev)"), {"rev": revision})


async def migrate(engine: AsyncEngine, target: str | None = HEAD) -> MigrationReport:
    async with engine.begin() as conn:
        return await conn.run_sync(migrate_sync, target)
