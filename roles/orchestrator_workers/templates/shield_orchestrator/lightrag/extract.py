"""Extraction ahead of the pipeline: a chunk's LLM work on the host that holds it, no lock held.

LightRAG extracts a document's entities and relations (the extraction call and
its gleaning, most of the LLM calls a document costs) inside its pipeline,
which the feeder may run only under the workspace lock (locks.py): on several
hosts, only the lock's holder would talk to the LLM. `Extractor` runs the same
extraction before a document enters the pipeline, with LightRAG's own function
(`operate.extract_entities`), on LightRAG's own chunks of the text, with the
instance's configuration and LLM function, into LightRAG's own LLM response
cache (on the PostgreSQL storages LightRAG's table, on the file storages a
SQLite file: llm_cache.py; both durable on write). The pipeline's extraction
of the document then finds every answer in the cache and calls no LLM: only
the merge (and its summaries) run under the lock. Every later pass over the
same text, prompt and model (a redelivery, a retry, a replay, another host's
takeover, a restart) finds the same answers: the LLM is not paid twice.

Nothing is written to the graph, the chunks or the document statuses here;
an extraction that fails is the pipeline's to do again (and to report).
"""

from __future__ import annotations

import logging
from typing import Any

from .boundary import LightRAGInstance

log = logging.getLogger("shield_orchestrator.lightrag")


class Extractor:
    """Extraction of texts into LightRAG's LLM response cache, outside the pipeline.

    Owns nothing but counts (`extracted`, `failed`); the LLM slots are the
    instance's (its LLM function's limiter, shared with the pipeline, whose
    merge summaries go first). Guarantees: the chunks extracted are those the
    pipeline makes of the same text (LightRAG's chunking function and sizes,
    on the text as LightRAG stores it), so each answer lands under the key the
    pipeline looks up; nothing but the cache is written."""

    def __init__(self, rag: LightRAGInstance) -> None:
        self._rag = rag
        self.extracted = 0
        self.failed = 0

    def chunks(self, text: str) -> dict[str, dict[str, Any]]:
        """LightRAG's chunks of `text`, by chunk id, as its pipeline makes them from a
        plain-text document (the built-in token chunker, the instance's sizes)."""
        from lightrag.utils import compute_mdhash_id, sanitize_text_for_encoding

        rag: Any = self._rag
        content = sanitize_text_for_encoding(text)
        pieces = rag.chunking_func(
            rag.tokenizer, content, None, False, rag.chunk_overlap_token_size, rag.chunk_token_size
        )
        return {
            compute_mdhash_id(piece["content"], prefix="chunk-"): {**piece, "full_doc_id": "", "file_path": ""}
            for piece in pieces
        }

    async def extract(self, text: str) -> bool:
        """Extract `text` into the cache; False (logged) when the LLM failed: the
        pipeline then extracts the document itself and reports why it could not."""
        from lightrag.operate import extract_entities

        rag: Any = self._rag
        try:
            await extract_entities(
                self.chunks(text),
                global_config=rag._build_global_config(),
                llm_response_cache=rag.llm_response_cache,
            )
        except Exception as exc:  # noqa: BLE001 - the pipeline does it again and reports the fault
            self.failed += 1
            log.info("extraction ahead of the pipeline failed (the pipeline extracts again): %s", str(exc)[:200])
            return False
        self.extracted += 1
        return True
