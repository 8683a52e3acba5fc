"""Relation merges locked per relation, their endpoints only for the writes that touch them.

LightRAG 1.5.7 merges a document into the graph entity by entity, then relation by
relation, each under keyed locks (`operate.merge_nodes_and_edges`): an entity under
its own name, a relation under BOTH its endpoints' names, for the whole of
`_merge_edges_then_upsert`, its LLM summary of the relation's descriptions
included. With entities that recur, every relation of a busy entity waits for
that entity, and a relation holding its first endpoint while it waits for the
second holds up every relation of that one too: a convoy. Measured (W3: 80
chunks, the stand-in at 1 s per chat call, 16 LLM slots): 412 relation merges
waiting on endpoint locks, one LLM call in flight most of the time, 22 % of the
slots busy.

`patch_relation_locks` changes only which keys a relation's merge holds:
- the relation's own key for the whole merge (two merges of one relation still
  run one after the other, and its summary is made under that key alone: a lock
  per key, as an entity's merge is);
- an endpoint's name from the moment the merge reads that endpoint (the graph's
  `get_node`, which `_merge_edges_then_upsert` calls only to create the endpoint
  or add the relation's chunks to it) until the merge writes the relation's own
  edge (the graph's `upsert_edge`, after every write to the endpoints: the node,
  its chunk list and its vector): the endpoint's read-modify-write stays atomic
  against that entity's own merges, and no LLM call is made while it is held.
  Endpoints are taken in sorted order after the relation's key and an entity's
  merge takes nothing else, so no cycle of waits can form.
What follows the edge (the relation's vector, its status message) touches the
relation alone and runs under its key alone.
Entity merges are unchanged. The patch replaces `get_storage_keyed_lock` in
`lightrag.operate` only; each graph storage's `get_node` and `upsert_edge` are
wrapped per instance.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

from . import summaries

RELATION_KEY_PREFIX = "shield-relation:"
_RELATION: contextvars.ContextVar[_RelationMerge | None] = contextvars.ContextVar("shield_relation_merge", default=None)


class KeyedLocks(Protocol):
    """LightRAG's get_storage_keyed_lock."""

    def __call__(
        self, keys: str | list[str], namespace: str = ..., enable_logging: bool = ...
    ) -> contextlib.AbstractAsyncContextManager[Any]: ...


class _KeyMerge:
    """An entity's merge: its name held throughout; its summary made after (summaries.py)."""

    def __init__(self, locks: KeyedLocks, keys: list[str], namespace: str, enable_logging: bool) -> None:
        self._relock = functools.partial(locks, keys, namespace, enable_logging)
        self._own = self._relock()
        self._namespace = namespace
        self._merge: summaries.Merge | None = None
        self._summary_token: contextvars.Token[summaries.Merge | None] | None = None

    async def __aenter__(self) -> _KeyMerge:
        await self._own.__aenter__()
        self._merge, self._summary_token = summaries.begin_merge(self._namespace)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._summary_token is not None:
            summaries.end_merge(self._summary_token)
        try:
            await self._release(exc_type, exc, tb)
        finally:
            if self._merge is not None:
                await summaries.complete(self._merge, self._relock, exc_type is None)

    async def _release(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._own.__aexit__(exc_type, exc, tb)


class _RelationMerge(_KeyMerge):
    """One relation's merge: its key held throughout, its endpoints from their first read."""

    def __init__(self, locks: KeyedLocks, endpoints: list[str], namespace: str, enable_logging: bool) -> None:
        self._locks = locks
        self._logging = enable_logging
        self._endpoints = sorted(endpoints)
        super().__init__(locks, [RELATION_KEY_PREFIX + "\x1f".join(self._endpoints)], namespace, enable_logging)
        self._held: set[str] = set()
        self._stack = contextlib.AsyncExitStack()
        self._token: contextvars.Token[_RelationMerge | None] | None = None

    async def __aenter__(self) -> _RelationMerge:
        await super().__aenter__()
        self._token = _RELATION.set(self)
        return self

    async def _release(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            _RELATION.reset(self._token)
        try:
            await self._stack.aclose()
        finally:
            await super()._release(exc_type, exc, tb)

    async def release_endpoints(self) -> None:
        """The relation's endpoints written: let their other merges go on."""
        await self._stack.aclose()
        self._held.clear()
        self._stack = contextlib.AsyncExitStack()

    async def hold(self, node_id: str) -> None:
        """Hold `node_id` (an endpoint) and every endpoint sorted before it."""
        if node_id not in self._endpoints:
            return
        for name in self._endpoints:
            if name not in self._held:
                await self._stack.enter_async_context(self._locks([name], self._namespace, self._logging))
                self._held.add(name)
            if name == node_id:
                return


def relation_locks(original: KeyedLocks) -> KeyedLocks:
    """LightRAG's keyed locks, but for a graph lock on two names (a relation's merge)."""

    def keyed_lock(
        keys: str | list[str], namespace: str = "default", enable_logging: bool = False
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        if namespace.endswith("GraphDB"):
            if isinstance(keys, list) and len(keys) == 2 and keys[0] != keys[1]:
                return _RelationMerge(original, list(keys), namespace, enable_logging)
            return _KeyMerge(original, [keys] if isinstance(keys, str) else list(keys), namespace, enable_logging)
        return original(keys, namespace=namespace, enable_logging=enable_logging)

    keyed_lock.__shield_patched__ = True  # type: ignore[attr-defined]
    keyed_lock.__wrapped__ = original  # type: ignore[attr-defined]
    return keyed_lock


def patch_relation_locks() -> None:
    """Lock relation merges per relation in `lightrag.operate` (once per process)."""
    from lightrag import operate

    if not getattr(operate.get_storage_keyed_lock, "__shield_patched__", False):
        operate.get_storage_keyed_lock = relation_locks(operate.get_storage_keyed_lock)


def lock_endpoint_reads(graph: Any) -> None:
    """Wrap a graph storage's `get_node` and `upsert_edge`: inside a relation's
    merge, reading an endpoint first takes that endpoint's lock, held until the
    relation's edge is written."""
    get_node: Callable[[str], Awaitable[Any]] = graph.get_node
    upsert_edge: Callable[..., Awaitable[Any]] = graph.upsert_edge
    if getattr(get_node, "__shield_patched__", False):
        return

    async def locked_get_node(node_id: str) -> Any:
        merge = _RELATION.get()
        if merge is not None:
            await merge.hold(node_id)
        return await get_node(node_id)

    async def releasing_upsert_edge(*args: Any, **kwargs: Any) -> Any:
        result = await upsert_edge(*args, **kwargs)
        merge = _RELATION.get()
        if merge is not None:
            await merge.release_endpoints()
        return result

    locked_get_node.__shield_patched__ = True  # type: ignore[attr-defined]
    graph.get_node = locked_get_node
    graph.upsert_edge = releasing_upsert_edge
