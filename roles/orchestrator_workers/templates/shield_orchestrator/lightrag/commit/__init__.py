"""How LightRAG's storages reach the disk: on the file storages, the commit
that owns every storage's flush (round.py); on PostgreSQL, LightRAG's own
per-document flush shared by the documents in flight (flush.py); and the
streaming writer of the file vector storages (vector_save.py)."""

from .flush import GroupFlush, share_flushes
from .round import CommitError, RoundCommit, commit_per_round
from .vector_save import patch_vector_save

__all__ = [
    "CommitError",
    "GroupFlush",
    "RoundCommit",
    "commit_per_round",
    "patch_vector_save",
    "share_flushes",
]
