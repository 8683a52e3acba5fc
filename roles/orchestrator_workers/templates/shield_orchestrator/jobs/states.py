"""Job states: one enum for the API, the Lua scripts, the PostgreSQL upsert and the views."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """A job's state. It only moves forward (queued, processing, then completed, failed
    or cancelled), except that replaying a failed job's dead letters takes it back to
    processing."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES

    @property
    def rank(self) -> int:
        """Order of progress: a stored state never moves to a lower rank."""
        return _RANK[self]


FINAL_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
_RANK = {JobState.QUEUED: 0, JobState.PROCESSING: 1, JobState.COMPLETED: 2, JobState.FAILED: 2, JobState.CANCELLED: 2}
