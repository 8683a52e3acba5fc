"""Merge summaries made after the merge's lock is released, one at a time per key.

LightRAG 1.5.7 merges a document into the graph entity by entity and relation by
relation, each under its key's lock (an entity's name; a relation's key, see
locks.py). When an entity's or relation's descriptions pass a threshold
(`force_llm_summary_on_merge` fragments, or `summary_max_tokens` tokens), the
merge asks the LLM for a summary of them (`_handle_entity_relation_summary`)
while it holds the lock: with entities that recur, every merge of a busy entity,
and every relation reading it, waits for that LLM call. Measured (W3: 200 chunks,
the stand-in at 1 s per call, 16 LLM slots, file storages): 75-81 % of the slots
busy, relation merges queued on the entities whose merges were summarising.

Here a merge that needs a summary writes the descriptions joined (what LightRAG
writes below the threshold), releases its lock, then asks the LLM for the
summary of exactly those fragments (LightRAG's own function: its prompt, its
cache, its map-reduce), takes the key's lock again and replaces those fragments
with the summary. Merges of the key meanwhile append their fragments after them
(LightRAG keeps stored fragments first), so the replacement keeps what they
added; if the fragments are no longer there (another host summarised them), the
summary is dropped. While a summary of a key is on its way, another merge of the
key in this process writes its fragments joined and asks for none: the summary
on its way is made again, of everything, once it is applied if the rule still
asks for one. So no LLM call is made under a lock, each key has at most one
summary in the LLM at a time, and one document merged at a time gives the graph
LightRAG gives (a contract test compares them).

A document's merge returns only once its summaries are applied: the document is
answered with its summaries in the graph. A crash in between leaves the
fragments joined, a graph LightRAG itself writes below the threshold; the next
merge of the key summarises them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("shield_orchestrator.lightrag")

ENTITY, RELATION = "entity", "relation"
Relock = Callable[[], contextlib.AbstractAsyncContextManager[Any]]


@dataclass
class Target:
    """What a merge writes: an entity or a relation, its graph and vector storages."""

    kind: str
    key: tuple[str, ...]
    graph: Any
    vdb: Any
    global_config: dict[str, Any]


@dataclass
class Pending:
    """A summary a merge deferred: the fragments it wrote joined, and how to summarise them."""

    target: Target
    fragments: list[str]
    summarise: Callable[[list[str]], Awaitable[tuple[str, bool]]]
    separator: str


@dataclass
class Merge:
    """One merge under its key's lock: what it writes, and the summary it deferred."""

    namespace: str
    target: Target | None = None
    pending: Pending | None = None
    asked: bool = False


@dataclass
class SummaryCounts:
    """Summaries deferred, applied, dropped (fragments gone) and spared (one already on its way)."""

    deferred: int = 0
    applied: int = 0
    dropped: int = 0
    spared: int = 0
    in_flight: set[tuple[str, str, tuple[str, ...]]] = field(default_factory=set)


COUNTS = SummaryCounts()
_MERGE: contextvars.ContextVar[Merge | None] = contextvars.ContextVar("shield_merge", default=None)


def needs_summary(fragments: list[str], global_config: dict[str, Any]) -> bool:
    """LightRAG's rule (`_handle_entity_relation_summary`): two fragments or more and
    either `force_llm_summary_on_merge` of them or `summary_max_tokens` tokens."""
    if len(fragments) < 2:
        return False
    if len(fragments) >= global_config["force_llm_summary_on_merge"]:
        return True
    tokenizer = global_config["tokenizer"]
    tokens = sum(len(tokenizer.encode(fragment)) for fragment in fragments)
    return bool(tokens >= global_config["summary_max_tokens"])


def begin_merge(namespace: str) -> tuple[Merge, contextvars.Token[Merge | None]]:
    """A merge has taken its key's lock (locks.py): the summary it defers is
    noted on the Merge, made by `complete` once the lock is released."""
    merge = Merge(namespace)
    return merge, _MERGE.set(merge)


def end_merge(token: contextvars.Token[Merge | None]) -> None:
    _MERGE.reset(token)


async def complete(merge: Merge, relock: Relock, merged: bool = True) -> None:
    """Make the merge's deferred summary and apply it under the key's lock (again
    while the rule still asks for one); a merge that failed (`merged` false) only
    gives its place back."""
    pending = merge.pending
    if pending is None:
        return
    merge.pending = None
    slot = (merge.namespace, pending.target.kind, pending.target.key)
    try:
        fragments = pending.fragments if merged else []
        while fragments:
            summary, _used = await pending.summarise(fragments)
            async with relock():
                fragments = await _apply(pending, fragments, summary)
    finally:
        COUNTS.in_flight.discard(slot)


async def _apply(pending: Pending, fragments: list[str], summary: str) -> list[str]:
    """Replace `fragments` by `summary` if they still lead the stored description;
    the fragments to summarise next (none when the rule is satisfied)."""
    from lightrag.utils import sanitize_text_for_encoding

    target, separator = pending.target, pending.separator
    stored = await _read(target)
    current = str((stored or {}).get("description") or "").split(separator)
    if stored is None or current[: len(fragments)] != fragments:
        COUNTS.dropped += 1
        log.debug("summary of %s %s dropped: its fragments were rewritten", target.kind, target.key)
        return []
    now = [summary, *current[len(fragments) :]]
    description = sanitize_text_for_encoding(separator.join(now))
    await _write(target, stored, description)
    COUNTS.applied += 1
    written = description.split(separator)
    return written if needs_summary(written, target.global_config) else []


async def _read(target: Target) -> dict[str, Any] | None:
    if target.kind == ENTITY:
        node = await target.graph.get_node(target.key[0])
        return dict(node) if node else None
    edge = await target.graph.get_edge(*target.key)
    return dict(edge) if edge else None


async def _write(target: Target, stored: dict[str, Any], description: str) -> None:
    """The entity or relation with its new description, in the graph and in its
    vector storage, as LightRAG's merge writes them."""
    from lightrag.operate import _truncate_vdb_content
    from lightrag.utils import compute_mdhash_id

    config, updated = target.global_config, {**stored, "description": description}
    if target.kind == ENTITY:
        (name,) = target.key
        await target.graph.upsert_node(name, node_data=updated)
        if target.vdb is not None:
            content = _truncate_vdb_content(f"{name}\n{description}", config, f"entity:{name}")
            record = {key: stored.get(key) for key in ("entity_type", "source_id", "file_path")}
            await target.vdb.upsert(
                {compute_mdhash_id(str(name), prefix="ent-"): {"entity_name": name, "content": content, **record}}
            )
        return
    source, destination = target.key
    await target.graph.upsert_edge(source, destination, edge_data=updated)
    if target.vdb is not None:
        low, high = sorted((source, destination))
        content = _truncate_vdb_content(
            f"{stored.get('keywords', '')}\t{low}\n{high}\n{description}", config, f"relationship:{low}-{high}"
        )
        record = {key: stored.get(key) for key in ("source_id", "keywords", "weight", "file_path")}
        ids = [compute_mdhash_id(low + high, prefix="rel-"), compute_mdhash_id(high + low, prefix="rel-")]
        with contextlib.suppress(Exception):  # as LightRAG: the old records may not exist
            await target.vdb.delete(ids)
        await target.vdb.upsert(
            {ids[0]: {"src_id": low, "tgt_id": high, "content": content, "description": description, **record}}
        )


def _targeting(kind: str, original: Callable[..., Awaitable[Any]], graph_at: str, vdb_at: str) -> Any:
    """LightRAG's merge of an entity or a relation, noting what it writes for the
    summary it may defer."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    async def merge_then_upsert(*args: Any, **kwargs: Any) -> Any:
        merge = _MERGE.get()
        if merge is not None:
            bound = signature.bind_partial(*args, **kwargs).arguments
            key = (bound["entity_name"],) if kind == ENTITY else (bound["src_id"], bound["tgt_id"])
            merge.target = Target(kind, key, bound[graph_at], bound.get(vdb_at), bound["global_config"])
        return await original(*args, **kwargs)

    merge_then_upsert.__shield_patched__ = True  # type: ignore[attr-defined]
    return merge_then_upsert


def _deferring(original: Callable[..., Awaitable[tuple[str, bool]]]) -> Any:
    """LightRAG's summary of a merge's descriptions: inside a noted merge that
    needs one, the descriptions joined now and the summary made after the lock."""
    from lightrag.utils import sanitize_text_for_encoding

    @functools.wraps(original)
    async def handle_summary(
        description_type: str,
        name: str,
        description_list: list[str],
        separator: str,
        global_config: dict[str, Any],
        *args: Any,
        **kwargs: Any,
    ) -> tuple[str, bool]:
        merge = _MERGE.get()
        target = merge.target if merge is not None else None
        if merge is None or target is None or merge.asked or not needs_summary(description_list, global_config):
            return await original(description_type, name, description_list, separator, global_config, *args, **kwargs)
        merge.asked = True
        joined = sanitize_text_for_encoding(separator.join(description_list))
        slot = (merge.namespace, target.kind, target.key)
        if slot in COUNTS.in_flight:
            COUNTS.spared += 1
            return joined, False
        COUNTS.in_flight.add(slot)
        COUNTS.deferred += 1

        async def summarise(fragments: list[str]) -> tuple[str, bool]:
            return await original(description_type, name, fragments, separator, global_config, *args, **kwargs)

        merge.pending = Pending(target, joined.split(separator), summarise, separator)
        return joined, False

    handle_summary.__shield_patched__ = True  # type: ignore[attr-defined]
    return handle_summary


def deferred_summary_patches(operate: Any) -> dict[str, Any]:
    """The functions of `lightrag.operate` to replace, by name (the merges of an
    entity and of a relation, noted; the summary of their descriptions, deferred)."""
    return {
        "_merge_nodes_then_upsert": _targeting(
            ENTITY, operate._merge_nodes_then_upsert, "knowledge_graph_inst", "entity_vdb"
        ),
        "_merge_edges_then_upsert": _targeting(
            RELATION, operate._merge_edges_then_upsert, "knowledge_graph_inst", "relationships_vdb"
        ),
        "_handle_entity_relation_summary": _deferring(operate._handle_entity_relation_summary),
    }


def patch_deferred_summaries() -> None:
    """Defer merge summaries past the merge's lock in `lightrag.operate` (once per process)."""
    from lightrag import operate

    if getattr(operate._handle_entity_relation_summary, "__shield_patched__", False):
        return
    for name, function in deferred_summary_patches(operate).items():
        setattr(operate, name, function)
