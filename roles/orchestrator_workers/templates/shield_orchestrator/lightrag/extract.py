"""Extraction ahead of the pipeline: a chunk's LLM work on the host that holds it, no lock held.

LightRAG extracts a document's entities and relations (the extraction call and
its gleaning, most of the LLM calls a document costs) inside its pipeline,
which the feeder may run only under the workspace lock (locks.py): on several
hosts, only the lock's holder would talk to the LLM. `Extractor` runs the same
extraction before a document enters the pipeline, with LightRAG's own function
(`operate.extract_entities`), on LightRAG's own chunks of the text, with the
instance's configuration and LLM function, into LightRAG's own LLM response
cache (on the PostgreSQL storages LightRAG's table, on the file storages a
SQLite file: llm/cache.py; both durable on write). The pipeline's extraction
of the document then finds every answer in the cache and calls no LLM: only
the merge (and its summaries) run under the lock; on the host that extracted a
document, the pipeline takes the parsed results themselves (`serve_pipeline`),
so the extraction is not even parsed twice. Every later pass over the
same text, prompt and model (a redelivery, a retry, a replay, another host's
takeover, a restart) finds the same answers: the LLM is not paid twice.

The chunks are named as the pipeline names them (`<doc id>-chunk-NNN`), so each
answer written to the cache names the chunk it is the extraction of, and the
cache keys each chunk used are kept with its result: when the pipeline takes
the result, they go into the chunk's `llm_cache_list` as LightRAG's own
extraction would have put them. LightRAG's delete rebuilds the entities and
relations a deleted document shared with others from exactly these (without
them it leaves the deleted chunks named as sources).

Nothing is written to the graph, the chunks or the document statuses here.
An extraction that fails raises: the feeder answers the chunk with that failure,
as the pipeline's would have been (a chunk's own fault spends an attempt, a
dependency's defers it), and the document does not enter the pipeline.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from .boundary import LightRAGInstance

log = logging.getLogger("shield_orchestrator.lightrag")

ChunkResult = tuple[dict[str, list[dict[str, Any]]], dict[tuple[str, str], list[dict[str, Any]]]]
CACHE_SCENARIO = "entity_extraction"  # what LightRAG's own extraction names its update of llm_cache_list
KEPT_RESULTS = 4096  # chunk results kept for the pipeline, the oldest dropped first (it then reads the cache)


def _content_key(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()


def _as_chunk(result: ChunkResult, chunk_id: str, file_path: str) -> ChunkResult:
    """A result extracted ahead, as the pipeline's extraction of chunk `chunk_id` of
    the document at `file_path` would have made it: the same entities and relations,
    each record naming that chunk and that file."""
    nodes, edges = result
    where = {"source_id": chunk_id, "file_path": file_path}
    return (
        {name: [{**record, **where} for record in records] for name, records in nodes.items()},
        {pair: [{**record, **where} for record in records] for pair, records in edges.items()},
    )


class _CacheKeys:
    """Stands in for the text-chunk storage while a text is extracted ahead: LightRAG's
    extraction reports here the cache keys each chunk used (`update_chunk_cache_list`
    reads the chunk, then writes it back with its keys)."""

    def __init__(self) -> None:
        self.by_chunk: dict[str, list[str]] = {}

    async def get_by_id(self, chunk_id: str) -> dict[str, Any]:
        return {"llm_cache_list": list(self.by_chunk.get(chunk_id, []))}

    async def upsert(self, data: dict[str, dict[str, Any]]) -> None:
        for chunk_id, record in data.items():
            self.by_chunk[chunk_id] = list(record.get("llm_cache_list", []))


class Extractor:
    """Extraction of texts into LightRAG's LLM response cache, outside the pipeline.

    Owns the results extracted ahead, by chunk text, until the pipeline takes them
    (at most KEPT_RESULTS), and counts (`extracted`, `failed`, `reused`); the LLM
    slots are the instance's (its LLM function's limiter, shared with the
    pipeline, whose merge summaries go first). Guarantees: the chunks extracted
    are those the pipeline makes of the same text (LightRAG's chunking function
    and sizes, on the text as LightRAG stores it), so each answer lands under
    the key the pipeline looks up; once `serve_pipeline` is called, the
    pipeline's extraction of a document whose every chunk was extracted ahead
    takes those results (relabelled with its chunk ids and file path) and does
    no work again, and any other goes through LightRAG's own extraction (the
    cache); nothing but the cache is written."""

    def __init__(self, rag: LightRAGInstance) -> None:
        self._rag = rag
        self._results: OrderedDict[str, tuple[ChunkResult, list[str]]] = OrderedDict()
        self.extracted = 0
        self.failed = 0
        self.reused = 0

    def chunks(self, text: str, doc_id: str) -> dict[str, dict[str, Any]]:
        """LightRAG's chunks of `text`, by chunk id, as its pipeline makes them from the
        plain-text document `doc_id` (the built-in token chunker, the instance's sizes)."""
        from lightrag.utils import sanitize_text_for_encoding

        rag: Any = self._rag
        content = sanitize_text_for_encoding(text)
        pieces = rag.chunking_func(
            rag.tokenizer, content, None, False, rag.chunk_overlap_token_size, rag.chunk_token_size
        )
        return {
            f"{doc_id}-chunk-{piece['chunk_order_index']:03d}": {**piece, "full_doc_id": doc_id, "file_path": ""}
            for piece in pieces
        }

    async def extract(self, text: str, doc_id: str) -> None:
        """Extract `text`, the document `doc_id`, into the cache (and keep the results
        for the pipeline); what the LLM or the cache raised goes on up (counted in `failed`)."""
        from lightrag.operate import extract_entities

        rag: Any = self._rag
        chunks = self.chunks(text, doc_id)
        keys = _CacheKeys()
        try:
            results = await extract_entities(
                chunks,
                global_config=rag._build_global_config(),
                llm_response_cache=rag.llm_response_cache,
                text_chunks_storage=keys,
            )
        except Exception:
            self.failed += 1
            raise
        for (chunk_id, chunk), result in zip(chunks.items(), results, strict=True):
            self._keep(_content_key(chunk["content"]), result, keys.by_chunk.get(chunk_id, []))
        self.extracted += 1

    def _keep(self, key: str, result: ChunkResult, cache_keys: list[str]) -> None:
        self._results[key] = (result, cache_keys)
        self._results.move_to_end(key)
        while len(self._results) > KEPT_RESULTS:
            self._results.popitem(last=False)

    def serve_pipeline(self) -> None:
        """Let the pipeline's extraction (`_process_extract_entities`, replaced on the
        instance) take the results extracted ahead."""
        from lightrag.utils import update_chunk_cache_list

        rag: Any = self._rag
        own: Callable[..., Awaitable[list[ChunkResult]]] = rag._process_extract_entities

        async def extract_or_reuse(chunks: dict[str, dict[str, Any]], *args: Any, **kwargs: Any) -> list[ChunkResult]:
            keys = [_content_key(str(chunk.get("content", ""))) for chunk in chunks.values()]
            if not keys or any(key not in self._results for key in keys):
                return await own(chunks, *args, **kwargs)
            self.reused += 1
            results = []
            for key, (chunk_id, chunk) in zip(keys, chunks.items(), strict=True):
                result, cache_keys = self._results.pop(key)
                await update_chunk_cache_list(chunk_id, rag.text_chunks, cache_keys, CACHE_SCENARIO)
                results.append(_as_chunk(result, chunk_id, str(chunk.get("file_path", ""))))
            return results

        rag._process_extract_entities = extract_or_reuse
