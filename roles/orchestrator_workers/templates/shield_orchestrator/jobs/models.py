"""Database models: the durable job history in PostgreSQL (SQLAlchemy 2)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """The declarative base of the job history's mapping (job_status, job_duplicates)."""


class JobStatusRow(Base):
    """A job's durable row (table job_status): what the history's queries read and the
    projection upserts. migrations.py makes the schema; this mapping matches its head."""

    __tablename__ = "job_status"

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_type: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    chunks_total: Mapped[int] = mapped_column(Integer, nullable=False)
    chunks_processed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    chunks_failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    job_metadata: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    priority: Mapped[str] = mapped_column(String(8), nullable=False, default="normal")
    generation: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    documents_removed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    chunks_duplicate: Mapped[int] = mapped_column(Integer, nullable=False, default=0)

    # The schema itself is made by migrations.py (Alembic); this mapping is what
    # the queries use and must match the head revision (a test checks it).
    __table_args__ = (Index("ix_job_status_created_at", "created_at"),)


class JobDuplicateRow(Base):
    """A chunk of a finished job whose text the graph already held (table
    job_duplicates): the document that holds it. Written with the job's final row."""

    __tablename__ = "job_duplicates"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("job_status.job_id", ondelete="CASCADE"), primary_key=True
    )
    chunk_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[str] = mapped_column(Text, nullable=False)
