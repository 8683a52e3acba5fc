"""The queue's part of a backup: export-queue and import-queue (playbooks/backup.yml,
playbooks/restore.yml).

A snapshot holds what the service keeps in Redis and nowhere else: both ingestion
streams, every entry (waiting or pending), the consumer group's place (the last id
it delivered) and what it has pending (on which consumer, delivered how often); the
dead letters; and the jobs' own keys (hash, done set, admitted bitmap) with the TTL
they had left, the set of jobs PostgreSQL has not caught up with and the index of
recent jobs. Not kept: heartbeats, the workspace lease, the LLM slots, the fencing
counter and the events stream, which describe processes, not work.

Import replaces: the service's streams and job keys are deleted and written back,
entry ids kept, and each pending entry is made pending again on its consumer with
its delivery count (XCLAIM ... FORCE RETRYCOUNT). A worker of the same name reads it
back at its start; the reclaimer takes over what consumers that no longer exist
hold, as after any lost host. Keys are stored relative to the key prefix and streams
by their role (high, normal, dlq), so a snapshot restores under other names too.

Both refuse while a heartbeat is present: a running pool moves the queue, so its
snapshot would be no commit point, and a restore under it would mix with its work.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.client import NEVER_DECODE

from .keys import RedisKeys
from .redis_text import text, text_fields, utcnow

FORMAT = "shield-orchestrator-queue/1"
PAGE = 1000  # entries per XRANGE / XPENDING page, commands per pipeline
KEY_TYPES = ("hash", "set", "zset", "string")

Snapshot = dict[str, Any]


class SnapshotError(Exception):
    """The snapshot cannot be taken or restored: a live pool, or a document that is not one."""


def stream_roles(keys: RedisKeys) -> dict[str, str]:
    """Each stream the snapshot keeps, by its role."""
    return {"high": keys.high, "normal": keys.stream, "dlq": keys.dlq}


def glob_escape(literal: str) -> str:
    """`literal` as a SCAN MATCH pattern that matches itself only."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", literal)


def batches(items: Sequence[Any], size: int = PAGE) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def validate(snapshot: object) -> Snapshot:
    """The snapshot as import_queue reads it; SnapshotError naming what is wrong."""
    if not isinstance(snapshot, dict) or snapshot.get("format") != FORMAT:
        found = snapshot.get("format") if isinstance(snapshot, dict) else type(snapshot).__name__
        raise SnapshotError(f"not a queue snapshot of format {FORMAT} (found {found!r})")
    streams, items = snapshot.get("streams"), snapshot.get("keys")
    if not isinstance(streams, dict) or not set(streams) <= {"high", "normal", "dlq"}:
        raise SnapshotError("streams: expected a mapping of high, normal, dlq")
    for role, stream in streams.items():
        if not isinstance(stream, dict) or not isinstance(stream.get("entries"), list):
            raise SnapshotError(f"streams.{role}: expected entries")
    if not isinstance(items, list):
        raise SnapshotError("keys: expected a list")
    for item in items:
        if not isinstance(item, dict) or item.get("type") not in KEY_TYPES or not isinstance(item.get("key"), str):
            raise SnapshotError(f"keys: not a key of a known type: {str(item)[:200]}")
    return snapshot


def summary(snapshot: Snapshot) -> dict[str, object]:
    """What a snapshot holds, counted (the commands' answer)."""
    streams = {
        role: {"entries": len(data["entries"]), "pending": len((data.get("group") or {}).get("pending", []))}
        for role, data in snapshot["streams"].items()
    }
    jobs = sum(1 for item in snapshot["keys"] if item["type"] == "hash" and item["key"].startswith("job:"))
    return {"streams": streams, "keys": len(snapshot["keys"]), "jobs": jobs}


async def refuse_if_live(redis: Redis, keys: RedisKeys) -> None:
    """SnapshotError when any consumer's heartbeat is present (a pool runs)."""
    live = [text(key) async for key in redis.scan_iter(match=glob_escape(keys.heartbeat("")) + "*", count=PAGE)]
    if live:
        names = ", ".join(sorted(key.rsplit(":", 1)[-1] for key in live)[:10])
        raise SnapshotError(f"a worker pool is running (heartbeats of {names}): stop the service on every host first")


async def _job_key_names(redis: Redis, keys: RedisKeys) -> list[str]:
    """The jobs' keys: each job's hash, done set and admitted bitmap, the dirty set, the
    recent index, the Idempotency-Keys (each the job a request made) and the replace
    jobs by source_uri."""
    names = [keys.jobs_dirty, keys.jobs_recent]
    for pattern in (keys.job(""), keys.idempotency(""), keys.replacing("")):
        names += [text(key) async for key in redis.scan_iter(match=glob_escape(pattern) + "*", count=PAGE)]
    return sorted(set(names))


# --- export -------------------------------------------------------------------------
async def export_queue(redis: Redis, keys: RedisKeys) -> Snapshot:
    """The snapshot of the queue and the jobs' keys (the pool must be stopped)."""
    await refuse_if_live(redis, keys)
    streams = {
        role: await _export_stream(redis, name, keys.group, role != "dlq") for role, name in stream_roles(keys).items()
    }
    exported = await _export_keys(redis, keys.prefix, await _job_key_names(redis, keys))
    return {"format": FORMAT, "exported_at": utcnow(), "streams": streams, "keys": exported}


async def _export_stream(redis: Redis, name: str, group: str, grouped: bool) -> dict[str, Any]:
    if not await redis.exists(name):
        return {"entries": [], "last_generated_id": None, "group": None}
    info = await redis.xinfo_stream(name)
    entries: list[list[Any]] = []
    start = "-"
    while page := await redis.xrange(name, min=start, max="+", count=PAGE):
        entries += [[text(entry_id), text_fields(fields)] for entry_id, fields in page]
        start = "(" + text(page[-1][0])
    found = None
    if grouped:
        found = next((g for g in await redis.xinfo_groups(name) if text(g["name"]) == group), None)
    return {
        "entries": entries,
        "last_generated_id": text(info["last-generated-id"]),
        "group": None if found is None else await _export_group(redis, name, group, text(found["last-delivered-id"])),
    }


async def _export_group(redis: Redis, name: str, group: str, last_delivered: str) -> dict[str, Any]:
    pending: list[list[Any]] = []
    start = "-"
    while rows := await redis.xpending_range(name, group, min=start, max="+", count=PAGE):
        pending += [
            [
                text(row["message_id"]),
                text(row["consumer"]),
                int(row["times_delivered"]),
                int(row["time_since_delivered"]),
            ]
            for row in rows
        ]
        start = "(" + text(rows[-1]["message_id"])
    return {"name": group, "last_delivered_id": last_delivered, "pending": pending}


async def _export_keys(redis: Redis, prefix: str, names: list[str]) -> list[dict[str, Any]]:
    exported: list[dict[str, Any]] = []
    for batch in batches(names):
        async with redis.pipeline(transaction=False) as pipe:
            for name in batch:
                pipe.type(name)
                pipe.pttl(name)
            described = await pipe.execute()
        kinds = {name: (text(described[2 * i]), int(described[2 * i + 1])) for i, name in enumerate(batch)}
        present = [name for name in batch if kinds[name][0] in KEY_TYPES]
        async with redis.pipeline(transaction=False) as pipe:
            for name in present:
                _stage_read(pipe, name, kinds[name][0])
            values = await pipe.execute()
        for name, value in zip(present, values, strict=True):
            kind, ttl = kinds[name]
            exported.append(
                {
                    "key": name[len(prefix) :],
                    "type": kind,
                    "ttl_ms": ttl if ttl > 0 else None,
                    "value": _encode(kind, value),
                }
            )
    return exported


def _stage_read(pipe: Any, name: str, kind: str) -> None:
    if kind == "hash":
        pipe.hgetall(name)
    elif kind == "set":
        pipe.smembers(name)
    elif kind == "zset":
        pipe.zrange(name, 0, -1, withscores=True)
    else:  # a bitmap: bytes, not text
        pipe.execute_command("GET", name, **{NEVER_DECODE: True})


def _encode(kind: str, value: Any) -> object:
    if kind == "hash":
        return {text(k): text(v) for k, v in value.items()}
    if kind == "set":
        return sorted(text(member) for member in value)
    if kind == "zset":
        return [[text(member), float(score)] for member, score in value]
    raw = value if isinstance(value, bytes) else text(value).encode()
    return base64.b64encode(raw).decode("ascii")


# --- import -------------------------------------------------------------------------
async def import_queue(redis: Redis, keys: RedisKeys, snapshot: object) -> dict[str, object]:
    """Replace the queue and the jobs' keys with the snapshot's (the pool must be stopped)."""
    checked = validate(snapshot)
    await refuse_if_live(redis, keys)
    doomed = [*await _job_key_names(redis, keys), *stream_roles(keys).values()]
    for batch in batches(doomed):
        await redis.delete(*batch)
    for role, name in stream_roles(keys).items():
        data = checked["streams"].get(role)
        if data is not None:
            await _import_stream(redis, name, keys.group, data)
    await _import_keys(redis, keys.prefix, checked["keys"])
    return summary(checked)


async def _import_stream(redis: Redis, name: str, group: str, data: dict[str, Any]) -> None:
    for batch in batches(data["entries"]):
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id, fields in batch:
                pipe.xadd(name, fields, id=entry_id)
            await pipe.execute()
    found = data.get("group")
    if found is not None:
        await redis.xgroup_create(name, group, id=found["last_delivered_id"], mkstream=True)
    if data.get("last_generated_id") and await redis.exists(name):
        # The stream's own counter as it was: ids handed out later stay above every old one.
        await redis.execute_command("XSETID", name, data["last_generated_id"])  # type: ignore[no-untyped-call]
    for batch in batches((found or {}).get("pending", [])):
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id, consumer, deliveries, idle_ms in batch:
                pipe.xclaim(
                    name, group, consumer, 0, [entry_id], idle=idle_ms, retrycount=deliveries, force=True, justid=True
                )
            await pipe.execute()


async def _import_keys(redis: Redis, prefix: str, items: list[dict[str, Any]]) -> None:
    for batch in batches(items):
        async with redis.pipeline(transaction=False) as pipe:
            for item in batch:
                name, kind, value = prefix + item["key"], item["type"], item["value"]
                if kind == "hash":
                    pipe.hset(name, mapping=value)
                elif kind == "set":
                    pipe.sadd(name, *value)
                elif kind == "zset":
                    pipe.zadd(name, {member: score for member, score in value})
                else:
                    pipe.set(name, base64.b64decode(value))
                if item.get("ttl_ms"):
                    pipe.pexpire(name, int(item["ttl_ms"]))
            await pipe.execute()
