"""The pure parts of the queue's backup (queue/snapshot.py) and its two commands:
what import-queue accepts as a snapshot, the SCAN pattern of a key prefix, the
counts the commands answer, the binary keys kept as bytes, and the file
export-queue writes (its owner's only, replaced whole)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from shield_orchestrator.cli import parser
from shield_orchestrator.commands import write_private
from shield_orchestrator.queue.snapshot import FORMAT, SnapshotError, _encode, glob_escape, summary, validate


def a_snapshot(**changes: Any) -> dict[str, Any]:
    snapshot: dict[str, Any] = {
        "format": FORMAT,
        "streams": {
            "high": {
                "entries": [["1-0", {"job_id": "a"}]],
                "group": {"last_delivered_id": "1-0", "pending": [["1-0", "h-worker-1", 2, 5]]},
            },
            "normal": {"entries": [["2-0", {"job_id": "b"}], ["3-0", {"job_id": "b"}]], "group": None},
            "dlq": {"entries": [], "group": None},
        },
        "keys": [
            {"key": "job:a", "type": "hash", "ttl_ms": None, "value": {"status": "queued"}},
            {"key": "job:a:done", "type": "set", "ttl_ms": 10, "value": ["0"]},
            {"key": "jobs:recent", "type": "zset", "ttl_ms": None, "value": [["a", 1.5]]},
        ],
    }
    snapshot.update(changes)
    return snapshot


def test_a_snapshot_is_counted_by_stream_and_by_job() -> None:
    assert summary(validate(a_snapshot())) == {
        "streams": {
            "high": {"entries": 1, "pending": 1},
            "normal": {"entries": 2, "pending": 0},
            "dlq": {"entries": 0, "pending": 0},
        },
        "keys": 3,
        "jobs": 1,
    }


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ([], "not a queue snapshot"),
        (a_snapshot(format="shield-orchestrator-queue/0"), "not a queue snapshot"),
        (a_snapshot(streams={"other": {"entries": []}}), "streams: expected"),
        (a_snapshot(streams={"high": {"group": None}}), "streams.high: expected entries"),
        (a_snapshot(keys={}), "keys: expected a list"),
        (a_snapshot(keys=[{"key": "job:a", "type": "list", "value": []}]), "not a key of a known type"),
    ],
)
def test_import_refuses_what_is_not_a_snapshot_naming_why(document: object, complaint: str) -> None:
    with pytest.raises(SnapshotError, match=complaint):
        validate(document)


def test_a_prefix_is_matched_literally_by_scan() -> None:
    assert glob_escape("shield:") == "shield:"
    assert glob_escape("a*b?[c]\\:") == "a\\*b\\?\\[c\\]\\\\:"


def test_a_bitmap_is_kept_as_its_bytes() -> None:
    raw = b"\x80\x40\xff\x00"
    assert base64.b64decode(str(_encode("string", raw))) == raw
    assert _encode("set", {"2", "10"}) == ["10", "2"]
    assert _encode("zset", [("a", 1)]) == [["a", 1.0]]


def test_the_commands_are_parsed() -> None:
    args = parser().parse_args(["--env-file", "e", "export-queue", "--output", "/x/queue.json"])
    assert (args.command, args.output) == ("export-queue", "/x/queue.json")
    assert parser().parse_args(["import-queue", "--input", "q.json"]).input == "q.json"
    with pytest.raises(SystemExit):
        parser().parse_args(["export-queue"])


def test_the_export_is_its_owners_only_and_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "queue.json"
    (tmp_path / "queue.json.partial").write_text("left by a crash")
    write_private(str(target), '{"a": 1}')
    write_private(str(target), '{"b": 2}')
    assert target.read_text() == '{"b": 2}'
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["queue.json"]
