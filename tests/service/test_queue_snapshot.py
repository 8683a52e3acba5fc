"""The queue's part of a backup (queue/snapshot.py: export-queue, import-queue) on a
real Redis: a snapshot taken from one slice of keys and restored into another holds
every entry with its id, what the group had pending on which consumer and how often
delivered, the dead letters and the jobs' keys with their TTL; the restored entries
are then read as the pool reads them (own pending, new, taken over)."""

from __future__ import annotations

import json
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from shield_orchestrator import commands
from shield_orchestrator.cli import parser
from shield_orchestrator.queue.snapshot import SnapshotError, export_queue, import_queue

from tests.support.inprocess import Rig

MakeRig = Callable[..., Awaitable[Rig]]


def streams_of(rig: Rig) -> dict[str, list[tuple[str, dict[str, str]]]]:
    return {
        role: rig.r.xrange(name)
        for role, name in (("high", rig.keys.high), ("normal", rig.keys.stream), ("dlq", rig.keys.dlq))
    }


def pel_of(rig: Rig) -> dict[str, list[tuple[str, str, int]]]:
    return {
        stream[len(rig.tag) :]: [
            (row["message_id"], row["consumer"], row["times_delivered"])
            for row in rig.r.xpending_range(stream, rig.keys.group, "-", "+", 1000)
        ]
        for stream in rig.keys.streams
    }


def last_delivered(rig: Rig) -> list[str]:
    return [
        next(g["last-delivered-id"] for g in rig.r.xinfo_groups(stream) if g["name"] == rig.keys.group)
        for stream in rig.keys.streams
    ]


async def a_busy_queue(rig: Rig) -> tuple[str, str]:
    """Two jobs, some entries pending on two consumers (one delivered twice), one dead letter."""
    normal = await rig.submit(4)
    urgent = await rig.submit(2, priority="high")
    first, second = rig.consumer(1), rig.consumer(2)
    await rig.deliver(first, 2)  # the two high-priority entries
    [(_stream, _id, fields)] = await rig.deliver(second, 1)
    await rig.stream.read_own_pending(second, 1)  # delivered again: twice
    assert fields is not None
    [(_s, doomed, doomed_fields)] = await rig.deliver(first, 1)
    assert doomed_fields is not None
    await rig.stream.dead_letter(rig.keys.stream, doomed, doomed_fields, error="boom", attempts=3, consumer=first)
    rig.r.sadd(rig.keys.job_done(normal), "3")
    rig.r.setbit(rig.keys.job_admitted(normal), 0, 1)
    rig.r.setbit(rig.keys.job_admitted(normal), 9, 1)  # bytes 0x80 0x40: not text
    rig.r.pexpire(rig.keys.job(urgent), 3_600_000)
    rig.r.set(rig.keys.idempotency("ab" * 32), f"{normal} {'cd' * 32} 4", ex=3600)  # an Idempotency-Key's job
    return normal, urgent


async def test_a_restored_snapshot_is_the_queue_as_it_was_under_other_names(make_rig: MakeRig) -> None:
    source, target = await make_rig(), await make_rig()
    normal, urgent = await a_busy_queue(source)
    snapshot = json.loads(json.dumps(await export_queue(source.redis, source.keys)))  # through JSON, as on disk
    stray = await target.submit(1)  # what the target held is replaced

    answer = await import_queue(target.redis, target.keys, snapshot)

    assert answer == {
        "streams": {
            "high": {"entries": 2, "pending": 2},
            "normal": {"entries": 3, "pending": 1},
            "dlq": {"entries": 1, "pending": 0},
        },
        "keys": 7,  # two job hashes, the done set, the bitmap, the recent index, the dirty set, an Idempotency-Key
        "jobs": 2,
    }
    assert streams_of(target) == streams_of(source)
    assert pel_of(target) == pel_of(source)  # each entry on its consumer, as often delivered
    assert [row[1:] for row in pel_of(target)[":ingest"]] == [(source.consumer(2), 2)]
    assert last_delivered(target) == last_delivered(source)
    for job_id in (normal, urgent):
        assert target.r.hgetall(target.keys.job(job_id)) == source.r.hgetall(source.keys.job(job_id))
    assert target.r.smembers(target.keys.job_done(normal)) == {"3"}
    assert target.r.execute_command("GET", target.keys.job_admitted(normal), NEVER_DECODE=True) == b"\x80\x40"
    assert 3_500_000 < target.r.pttl(target.keys.job(urgent)) <= 3_600_000
    assert target.r.zrange(target.keys.jobs_recent, 0, -1, withscores=True) == source.r.zrange(
        source.keys.jobs_recent, 0, -1, withscores=True
    )
    assert target.r.get(target.keys.idempotency("ab" * 32)) == f"{normal} {'cd' * 32} 4"
    assert 3_500 < target.r.ttl(target.keys.idempotency("ab" * 32)) <= 3_600
    assert not target.r.exists(target.keys.job(stray))
    assert target.r.hgetall(target.keys.jobs_dirty) == source.r.hgetall(source.keys.jobs_dirty)


async def test_restored_entries_are_read_as_the_pool_reads_them(make_rig: MakeRig) -> None:
    source, target = await make_rig(), await make_rig()
    await a_busy_queue(source)
    waiting = [entry_id for entry_id, _ in source.r.xrange(source.keys.stream)][-2:]
    await import_queue(target.redis, target.keys, await export_queue(source.redis, source.keys))
    first, second = target.consumer(1), target.consumer(2)

    # A worker of the same name reads what it held at its start ...
    own = await target.stream.read_own_pending(first, 10)
    assert [stream for stream, _id, _f in own] == [target.keys.high, target.keys.high]
    # ... new reads get only what was never delivered ...
    fresh = await target.deliver(first, 10)
    assert [entry_id for _s, entry_id, _f in fresh] == waiting
    # ... and what a consumer that is gone held is taken over (no heartbeat).
    taken = await target.stream.claim_from_silent(second, first, 10)
    assert len(taken) == 1 and taken[0][2] is not None
    assert await target.stream.delivery_counts(first, [(target.keys.stream, taken[0][1])]) == {taken[0][1]: 3}


async def test_both_refuse_while_a_pool_runs_and_import_refuses_what_is_no_snapshot(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.submit(1)
    snapshot = await export_queue(rig.redis, rig.keys)
    rig.r.set(rig.keys.heartbeat(rig.consumer(1)), "{}", px=60_000)

    with pytest.raises(SnapshotError, match="worker pool is running"):
        await export_queue(rig.redis, rig.keys)
    with pytest.raises(SnapshotError, match="worker pool is running"):
        await import_queue(rig.redis, rig.keys, snapshot)
    rig.r.delete(rig.keys.heartbeat(rig.consumer(1)))
    with pytest.raises(SnapshotError, match="not a queue snapshot"):
        await import_queue(rig.redis, rig.keys, {"format": "something else"})
    assert rig.depth() == 1  # nothing was touched


async def test_the_commands_write_and_read_the_snapshot_file(make_rig: MakeRig, tmp_path: Path) -> None:
    source, target = await make_rig(), await make_rig()
    await a_busy_queue(source)
    path = tmp_path / "queue.json"

    exported, code = await commands.run(source.settings, parser().parse_args(["export-queue", "--output", str(path)]))
    assert code == 0 and exported["output"] == str(path), exported
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    imported, code = await commands.run(target.settings, parser().parse_args(["import-queue", "--input", str(path)]))
    assert code == 0, imported
    assert {key: imported[key] for key in ("streams", "keys", "jobs")} == {
        key: exported[key] for key in ("streams", "keys", "jobs")
    }
    assert streams_of(target) == streams_of(source)

    target.r.set(target.keys.heartbeat(target.consumer(1)), "{}", px=60_000)
    refused, code = await commands.run(target.settings, parser().parse_args(["import-queue", "--input", str(path)]))
    assert code == 1 and "worker pool is running" in str(refused["error"]), refused
    missing, code = await commands.run(
        target.settings, parser().parse_args(["import-queue", "--input", str(tmp_path / "none.json")])
    )
    assert code == 1 and "FileNotFoundError" in str(missing["error"]), missing
