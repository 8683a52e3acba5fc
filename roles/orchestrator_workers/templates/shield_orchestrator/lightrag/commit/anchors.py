"""The recovery anchors of a document whose earlier attempt LightRAG purged.

LightRAG (1.5.7) processes a document again (a redelivery after a kill, a
retry, a takeover) by first purging what its earlier attempt left
(`_purge_stale_extraction_if_resuming`): the graph, vectors and chunks the
attempt contributed, found through its recovery anchors (`full_entities`,
`full_relations`), then the anchors themselves; last, it retires the purge
journal with the document's `chunks_list` emptied (`_clear_kg_purge_journal`).
Its `kg_write_state` stays `graph_mutation_started`: the marker never goes back.

The new attempt then stages its chunks (`chunks_list` written, PROCESSING)
and extracts; only its merge writes new anchors. If the attempt stops in
between (the process killed, the extraction failing), the document is left
with chunks, a `graph_mutation_started` marker and no anchors, and LightRAG
refuses every later attempt to process or delete it
(RecoveryAnchorMissingError: "run kg_integrity_repair"), although the purge
had removed everything the document ever put in the graph. The kill test
found it: 3 of 1,000 chunks dead-lettered after five kill -9s.

`patch_resume_anchors` closes the window with the truth LightRAG already
holds at that instant: when the purge has completed, the document has nothing
in the graph, so its anchors are written empty (LightRAG's own proof of "a
document that extracted no entities") before the journal is retired. A later
purge of the staged chunks then has its proof and removes the chunks alone;
the attempt's merge overwrites the empty anchors before its first graph write,
as every merge does. `_clear_kg_purge_journal` has one caller, that reset.
"""

from __future__ import annotations

from typing import Any


def patch_resume_anchors() -> None:
    """Empty anchors written when LightRAG's resume purge completes (module
    docstring). Patches lightrag.LightRAG once per process."""
    from lightrag import LightRAG

    original = LightRAG._clear_kg_purge_journal
    if getattr(original, "__shield_patched__", False):
        return

    async def clear_kg_purge_journal(self: Any, doc_id: str, **kwargs: Any) -> None:
        await self.full_entities.upsert({doc_id: {"entity_names": [], "count": 0}})
        await self.full_relations.upsert({doc_id: {"relation_pairs": [], "count": 0}})
        await self._flush_storages([self.full_entities, self.full_relations])  # before the journal goes
        await original(self, doc_id, **kwargs)

    clear_kg_purge_journal.__shield_patched__ = True  # type: ignore[attr-defined]
    clear_kg_purge_journal.__wrapped__ = original  # type: ignore[attr-defined]  # for the contract test
    LightRAG._clear_kg_purge_journal = clear_kg_purge_journal
