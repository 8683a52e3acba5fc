"""How LightRAG's storages reach the disk. On the file storages, the group
commit (group.py): every storage's flush noted, and all of them written
together as one crash-safe snapshot, continuously, behind a gate that holds
the mutations back while it writes (gate.py), under an undo journal that
`recover()` rolls back at start (journal.py), with a test-only fault that
kills the process at a step (faults.py); the buffered vectors embedded
before the gate is taken (embed_ahead.py). On PostgreSQL, LightRAG's own
per-document flush shared by the documents in flight (flush.py). And the
streaming writer of the file vector storages (vector_save.py). On both, the
recovery anchors of a document whose earlier attempt LightRAG purged, so that
an attempt stopped before its merge leaves it processable (anchors.py)."""

from .anchors import patch_resume_anchors
from .faults import KILL_AT_ENV
from .flush import GroupFlush, share_flushes
from .group import CommitError, GroupCommit, commit_continuously
from .journal import JournalError, recover
from .vector_save import patch_vector_save

__all__ = [
    "KILL_AT_ENV",
    "CommitError",
    "GroupCommit",
    "GroupFlush",
    "JournalError",
    "commit_continuously",
    "patch_resume_anchors",
    "patch_vector_save",
    "recover",
    "share_flushes",
]
