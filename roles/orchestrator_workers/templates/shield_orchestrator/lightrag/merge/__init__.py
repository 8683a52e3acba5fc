"""How documents merge into the graph at once: a relation's merge under its own
key, its endpoints only for the writes that touch them (locks.py), and a merge's
LLM summary made after its lock, one per key at a time (summaries.py)."""

from .locks import lock_endpoint_reads, patch_relation_locks, relation_locks
from .summaries import COUNTS, deferred_summary_patches, patch_deferred_summaries

__all__ = [
    "COUNTS",
    "deferred_summary_patches",
    "lock_endpoint_reads",
    "patch_deferred_summaries",
    "patch_relation_locks",
    "relation_locks",
]
