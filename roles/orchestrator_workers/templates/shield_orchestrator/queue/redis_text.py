"""Replies of the Redis client as str.

The client runs with decode_responses=True, so replies are already str; its
type information cannot know that (bytes | str). These helpers say it once,
and turn a stray bytes value into str rather than let it travel.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from redis.typing import EncodableT, FieldT


def text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def text_fields(
    fields: Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str] | None,
) -> dict[str, str]:
    return {text(key): text(value) for key, value in (fields or {}).items()}


def entry_fields(fields: Mapping[str, str]) -> dict[FieldT, EncodableT]:
    """Fields of a stream entry as XADD takes them."""
    return {key: value for key, value in fields.items()}


# (stream, entry id, fields); fields are None for an entry deleted after it was delivered.
StreamEntry = tuple[str, str, dict[str, str] | None]


def stream_entries(reply: object) -> list[StreamEntry]:
    """XREAD / XREADGROUP's reply ([[stream, [(id, fields), ...]], ...], or a dict
    under RESP3) as one flat list of entries, each with its stream. A pending
    entry deleted since its delivery comes back with nil fields, which redis-py
    turns into {}: no entry has no field (XADD wants one), so {} is None here."""
    if not reply:
        return []
    streams = list(reply.items()) if isinstance(reply, dict) else reply
    if not isinstance(streams, list):
        raise TypeError(f"unexpected stream reply: {reply!r}")
    found: list[StreamEntry] = []
    for stream, entries in streams:
        for entry_id, fields in entries:
            found.append((text(stream), text(entry_id), text_fields(fields) if fields else None))
    return found


StreamId = tuple[int, int]


MAX_STREAM_ID_PART = 2**64 - 1
STREAM_ID_PATTERN = r"^[0-9]{1,20}(-[0-9]{1,20})?$"


def stream_id_key(stream_id: str) -> StreamId:
    """Order Redis stream ids ("<ms>-<seq>" or "<ms>"); ValueError on anything else."""
    ms, sep, seq = stream_id.partition("-")
    if not _digits(ms) or (sep and not _digits(seq)):
        raise ValueError(f"not a stream id: {stream_id[:64]!r}")
    key = int(ms), int(seq or 0)
    if max(key) > MAX_STREAM_ID_PART:
        raise ValueError(f"not a stream id (a part over 2^64-1): {stream_id[:64]!r}")
    return key


def _digits(value: str) -> bool:
    # 20 digits hold any unsigned 64-bit number: a longer run is not an id (and int() of it is costly).
    return value.isascii() and value.isdigit() and len(value) <= 20


def utcnow() -> str:
    """Now, as the stores keep times: ISO 8601 in UTC."""
    return datetime.now(UTC).isoformat()
