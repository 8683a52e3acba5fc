"""Group commit for LightRAG's storage flush.

LightRAG (1.5.x) ends every document with `_insert_done`: every storage
flushed, then the document written PROCESSED. With the local storages a flush
rewrites each JSON file whole, so its cost grows with the graph, and with
several documents in flight each pays one. `GroupFlush` keeps the guarantee
and shares the work: a caller returns only after a flush that *started after
it called* has completed, so its data is on disk exactly as before, but the
callers that arrive while a flush runs are all served by the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..boundary import LightRAGInstance


class GroupFlush:
    """LightRAG's per-document flush (`_insert_done`), shared by the documents in flight.

    Owns the flush it wraps, run one at a time. Guarantees: a call returns only
    after a flush that began after the call has completed, so its document's
    data is on disk as with a flush of its own; a failed flush raises to the
    caller that ran it and serves nobody (the others run the next one);
    `requests` and `flushes` count calls and flushes."""

    def __init__(self, flush: Callable[..., Awaitable[None]]) -> None:
        self._flush = flush
        self._lock = asyncio.Lock()
        self._started = 0  # flushes begun, numbered from 1
        self._completed = 0  # the number of the last flush that succeeded
        self.requests = 0
        self.flushes = 0

    async def __call__(self, *args: object, **kwargs: object) -> None:
        self.requests += 1
        needed = self._started + 1  # any flush numbered from here on began after this call
        async with self._lock:
            if self._completed >= needed:
                return
            self._started += 1
            number = self._started
            await self._flush(*args, **kwargs)
            self._completed = number
            self.flushes += 1


def share_flushes(rag: LightRAGInstance) -> GroupFlush:
    """Route the LightRAG instance's per-document flush through one GroupFlush."""
    group = GroupFlush(rag._insert_done)
    rag._insert_done = group
    return group
