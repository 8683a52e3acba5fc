"""The vectors a commit will write, embedded before it holds the mutations back.

LightRAG 1.5.7's file vector storage (`NanoVectorDBStorage`) buffers each
upsert with its vector unset and embeds the buffer when it flushes. In the group
commit that flush runs while the gate holds every mutation back (gate.py), so
the embedding calls of a commit stopped every merge for their duration: W3 (80
chunks, 16 LLM slots, embeddings 50 ms) sampled commits holding the gate 0.1 to
0.5 s about once a second, and relation merges waiting on an endpoint whose
holder waited on the gate.

`embed_ahead` embeds the buffered upserts whose vector is unset, without the
gate, and sets each vector on its own buffered upsert (LightRAG's
`get_vectors_by_ids` caches a vector there the same way; the flush embeds only
what is still unset). An upsert buffered meanwhile replaces its entry with a new
one, unset, which the flush embeds: a vector set here always belongs to the
content it was made from. A failure changes nothing: the flush embeds them, and
its failure is the commit's (blamed on the embedding endpoint).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np


async def embed_ahead(storages: Sequence[Any]) -> int:
    """Embed the unset vectors buffered in the file vector storages among
    `storages`; the number embedded. Raises what the embedding function raises."""
    counts = await asyncio.gather(*(_embed_buffered(storage) for storage in storages))
    return sum(counts)


async def _embed_buffered(storage: Any) -> int:
    buffered = getattr(storage, "_pending_upserts", None)
    if not buffered:
        return 0
    unset = [entry for entry in list(buffered.values()) if entry.vector is None]
    if not unset:
        return 0
    size = max(1, int(getattr(storage, "_max_batch_size", 0) or 32))
    batches = [unset[start : start + size] for start in range(0, len(unset), size)]
    answers = await asyncio.gather(
        *(storage.embedding_func([entry.record["content"] for entry in batch], context="document") for batch in batches)
    )
    for batch, answer in zip(batches, answers, strict=True):
        vectors = np.asarray(answer).reshape(len(batch), -1)
        for entry, vector in zip(batch, vectors, strict=True):
            if entry.vector is None:
                entry.vector = vector
    return len(unset)
