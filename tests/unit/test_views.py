"""The public shape of a job from either store, typed Lua replies, keys and states."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from shield_orchestrator.api.routes.ingest import retry_after
from shield_orchestrator.jobs.intake import QueueFull
from shield_orchestrator.jobs.states import FINAL_STATES, JobState
from shield_orchestrator.jobs.tracker import JobProgress
from shield_orchestrator.jobs.views import job_view, percent
from shield_orchestrator.queue.keys import RedisKeys

REDIS_HASH = {
    "job_id": "0b5c6e36-5f4e-4a56-9f8f-1c1b0c6d3c11",
    "job_type": "ingest:text",
    "status": "processing",
    "chunks_total": "8",
    "chunks_processed": "3",
    "chunks_failed": "1",
    "job_metadata": '{"batch":"b1","source_type":"text"}',
    "created_at": "2026-11-29T10:00:00+00:00",
    "started_at": "2026-11-29T10:00:01+00:00",
    "updated_at": "2026-11-29T10:00:02+00:00",
}


def test_job_view_from_a_redis_hash() -> None:
    view = job_view(REDIS_HASH)
    assert view["chunks_total"] == 8 and view["chunks_processed"] == 3 and view["chunks_failed"] == 1
    assert view["percent_complete"] == 50.0
    assert view["metadata"] == {"batch": "b1", "source_type": "text"}
    assert view["started_at"] == "2026-11-29T10:00:01+00:00"
    assert view["completed_at"] is None and view["error_message"] is None


def test_job_view_from_a_postgresql_row() -> None:
    created = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    row = {
        "job_id": "j",
        "job_type": "ingest:text",
        "status": "failed",
        "chunks_total": 2,
        "chunks_processed": 1,
        "chunks_failed": 1,
        "job_metadata": {"k": [1, 2]},
        "error_message": "1 of 2 chunks failed",
        "created_at": created,
        "started_at": None,
        "completed_at": created,
    }
    view = job_view(row)
    assert view["created_at"] == "2026-11-29T10:00:00+00:00"
    assert view["started_at"] is None
    assert view["metadata"] == {"k": [1, 2]}
    assert view["error_message"] == "1 of 2 chunks failed"
    assert view["percent_complete"] == 100.0


def test_percent_of_an_empty_job_is_complete() -> None:
    assert percent(0, 0) == 100.0
    assert percent(1, 3) == 33.3


def test_job_progress_from_the_lua_reply() -> None:
    progress = JobProgress.from_reply("j", [2, 5, 1, 6, "failed", 1])
    assert progress.newly_counted == 2 and progress.finished and progress.status == "failed"
    assert progress.percent_complete == 100.0
    assert not JobProgress.from_reply("j", [-1, 0, 0, 0, "", 0]).exists


@pytest.mark.parametrize("reply", [None, [1, 2, 3], "OK", [1, 2, 3, 4, 5, 6, 7]])
def test_job_progress_refuses_other_replies(reply: object) -> None:
    with pytest.raises(ValueError, match=r"record_chunks\.lua"):
        JobProgress.from_reply("j", reply)


def test_keys_take_their_prefix_from_its_own_setting() -> None:
    keys = RedisKeys(stream="ingest:v2", group="g", events="ev", prefix="acme:")
    assert keys.job("j1") == "acme:job:j1"
    assert keys.job_done("j1") == "acme:job:j1:done"
    assert keys.jobs_dirty == "acme:jobs:dirty" and keys.jobs_recent == "acme:jobs:recent"
    assert keys.dlq == "ingest:v2:dlq"
    assert keys.streams == ("ingest:v2:high", "ingest:v2")
    assert keys.stream_for("high") == "ingest:v2:high" and keys.stream_for("normal") == "ingest:v2"


def test_states() -> None:
    assert FINAL_STATES == {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}
    assert [s.rank for s in JobState] == [0, 1, 2, 2, 2]
    assert JobState("failed").final and not JobState.QUEUED.final


@pytest.mark.parametrize(
    ("depth", "incoming", "limit", "rate", "seconds"),
    [(95, 10, 100, 1.0, 5), (0, 10, 5, 0.0, 5), (10**6, 1, 1, 1.0, 300), (100, 1, 100, 50.0, 1)],
)
def test_retry_after_follows_the_processing_rate(
    depth: int, incoming: int, limit: int, rate: float, seconds: int
) -> None:
    assert retry_after(QueueFull(depth, incoming, limit), rate) == seconds
