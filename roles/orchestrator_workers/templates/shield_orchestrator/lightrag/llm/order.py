"""The LLM's queue as a pipeline: each document's calls at its place, its extraction ahead a window earlier.

LightRAG queues every chat call of an ingestion in one priority queue per role,
ordered by kind (merge summaries at 8 before extractions at 10), then by arrival.
With an LLM that answers in seconds, that order runs the pipeline in waves
(measured: 200 chunks, chat 1 s, 4 slots): the summaries of the documents in
the window take every slot, the extractions of the documents behind them wait
(11 s median for two 1 s calls), the window drains empty, then the next
documents, extracted together, enter together and end together: progress
comes in bursts with gaps of 5-8 s between them.

Here each call carries a place instead, by the feeder's order (high priority
first, then arrival): a document's extraction, gleaning and merge summaries in
the pipeline at its own place, and its extraction ahead of the pipeline `lead`
places earlier (the window's size), level with the summaries of the document
`lead` ahead of it, the oldest in the window. So the next document is extracted
while the window's documents merge, a window place is refilled as soon as it
frees, and documents end one after another. The work in the queue is the same,
in another order: the LLM stays as busy; a high-priority document's calls go
before the backlog's.

The document travels with its work as a context variable (its id, and whether
the call is ahead of the pipeline): set by the
feeder in the task that extracts a document ahead of the pipeline
(`calls_of`), and inside LightRAG's pipeline by the document's extraction step
(`_process_extract_entities`, its own task) and by its merge
(`lightrag.pipeline.merge_nodes_and_edges`, wrapped once per process), whose
tasks make the merge summaries. Each instance's queued function reads the
place of that document in its CallOrder. A call made outside any document, or
for a document the feeder did not place, keeps LightRAG's own priority (below
11: ahead of every document's).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

FIRST_PLACE = 11  # after LightRAG's own priorities (queries 5, summaries 8, a document's processing 10)
NORMAL_OFFSET = 1 << 40  # every normal document's place is behind every urgent one's
ROLE = "extract"  # LightRAG's role for extraction, gleaning and merge summaries

# The document whose calls the current task makes, and whether ahead of the pipeline.
_DOCUMENT: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar("shield_llm_document", default=None)


def place_of(rank: tuple[int, int], lead: int = 0) -> int:
    """The queue place of a feeder rank (0 urgent | 1 normal, arrival), its
    extraction ahead `lead` places earlier (never before FIRST_PLACE)."""
    urgency, arrival = rank
    return FIRST_PLACE + lead + (NORMAL_OFFSET if urgency else 0) + arrival


class CallOrder:
    """The documents' places in LightRAG's LLM queue.

    Owns each document's place from the feeder's submission (`place`) to its
    answer (`forget`), and the lead of the extraction ahead. Guarantees: once
    `order_calls` has run, every chat call of the instance's extraction role
    made in a document's context is queued at that document's place (its
    extraction, merge and summaries inside the pipeline) or `lead` places
    earlier (its extraction ahead); any other keeps LightRAG's own priority."""

    def __init__(self, lead: int = 0) -> None:
        self.lead = lead
        self._places: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._places)

    def place(self, doc_id: str, rank: tuple[int, int]) -> None:
        self._places[doc_id] = place_of(rank, self.lead)

    def forget(self, doc_id: str) -> None:
        self._places.pop(doc_id, None)

    def order_calls(self, rag: Any) -> None:
        """Queue the instance's chat calls at their document's place: the extraction
        role's queued function, and the document named in the pipeline's extraction
        step (its chunks' `full_doc_id`) and merge (once per process)."""
        patch_merge_context()
        state = rag._role_llm_states[ROLE]
        state.wrapped = self._ordered(state.wrapped)
        extract: Callable[..., Awaitable[Any]] = rag._process_extract_entities

        @functools.wraps(extract)
        async def extract_in_order(chunks: Mapping[str, Mapping[str, Any]], *args: Any, **kwargs: Any) -> Any:
            doc_ids = {str(chunk.get("full_doc_id", "")) for chunk in chunks.values()}
            if len(doc_ids) == 1:
                calls_of(doc_ids.pop(), ahead=False)
            return await extract(chunks, *args, **kwargs)

        rag._process_extract_entities = extract_in_order

    def _ordered(self, queued: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """LightRAG's queued LLM function, with the calling document's place as its
        priority (its attributes, `shutdown` and the queue statistics, copied by wraps)."""

        @functools.wraps(queued)
        async def call_in_order(*args: Any, **kwargs: Any) -> Any:
            document = _DOCUMENT.get()
            place = self._places.get(document[0]) if document is not None else None
            if document is not None and place is not None:
                kwargs["_priority"] = place - self.lead if document[1] else place
            return await queued(*args, **kwargs)

        return call_in_order


def calls_of(doc_id: str, *, ahead: bool) -> None:
    """The LLM calls made from now on in the current task (and the tasks it starts)
    are document `doc_id`'s, ahead of the pipeline or in it."""
    _DOCUMENT.set((doc_id, ahead))


def patch_merge_context() -> None:
    """LightRAG's pipeline merges a document (`merge_nodes_and_edges`, whose tasks
    make its summaries) in the document's context (once per process)."""
    from lightrag import pipeline

    merge: Callable[..., Awaitable[Any]] = pipeline.merge_nodes_and_edges
    if getattr(merge, "__shield_patched__", False):
        return

    @functools.wraps(merge)
    async def merge_in_context(*args: Any, **kwargs: Any) -> Any:
        doc_id = kwargs.get("doc_id")
        token = _DOCUMENT.set((str(doc_id), False)) if doc_id else None
        try:
            return await merge(*args, **kwargs)
        finally:
            if token is not None:
                _DOCUMENT.reset(token)

    merge_in_context.__shield_patched__ = True  # type: ignore[attr-defined]
    pipeline.merge_nodes_and_edges = merge_in_context
