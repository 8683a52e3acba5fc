"""LightRAG at the service's edge: the one version it runs on, and the typed face
of what the service uses of it.

The service patches LightRAG's internals as lightrag-hku 1.5.7 has them: the
group commit swaps each storage's `index_done_callback` and gates its mutations (commit/group.py), the group
flush replaces `_insert_done` (commit/flush.py), the feeder resets documents with
`_build_pending_reset_update` (feeder.py), the file vector storages are saved
through a patched `NanoVectorDB.save` (commit/vector_save.py), and PostgreSQL's retry
hook `_before_sleep` is patched against a deadlock (processor.py), and its
`_run_with_retry` hands each operation a fenced connection (fence.py). Another
version may move any of these, and a patch that no longer bites loses its
guarantee silently; so LIGHTRAG_VERSION is the one version the service starts
on (`require_pinned_lightrag`, before LightRAG is built and patched), the
role pins the same (a unit test compares them), and
tests/unit/test_lightrag_contract.py runs each patch against the real LightRAG
code it relies on: an upgrade that moves it fails a test.

LightRAG ships no type information (mypy: ignore_missing_imports). The
Protocols below are the members of it the service calls, as 1.5.7 has them: a
LightRAG instance is typed `LightRAGInstance` where it is built, and the rest
of the service sees only these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import metadata
from typing import Protocol

LIGHTRAG_DISTRIBUTION = "lightrag-hku"
LIGHTRAG_VERSION = "1.5.7"

Flush = Callable[[], Awaitable[None]]
Row = dict[str, object]  # a row of a KV storage, or a doc-status update


class LightRAGVersionError(RuntimeError):
    """The installed LightRAG is not the version the service is pinned to."""

    def __init__(self, installed: str | None) -> None:
        found = f"{LIGHTRAG_DISTRIBUTION} {installed} is installed" if installed else "LightRAG is not installed"
        super().__init__(
            f"{found}, but this service runs only on {LIGHTRAG_DISTRIBUTION} {LIGHTRAG_VERSION}: it patches "
            f"LightRAG's internals as {LIGHTRAG_VERSION} has them. Install {LIGHTRAG_DISTRIBUTION}=={LIGHTRAG_VERSION} "
            "(the role's orchestrator_workers_pip_requirements and files/constraints.txt pin it)."
        )
        self.installed = installed


def installed_lightrag_version() -> str | None:
    """The installed distribution's version, from its metadata (LightRAG is not imported)."""
    try:
        return metadata.version(LIGHTRAG_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def check_lightrag_version(installed: str | None) -> None:
    """Raise LightRAGVersionError, naming both versions, unless `installed` is the pinned one."""
    if installed != LIGHTRAG_VERSION:
        raise LightRAGVersionError(installed)


def require_pinned_lightrag() -> None:
    """Refuse to go on with any LightRAG but the pinned one (LightRAGVersionError)."""
    check_lightrag_version(installed_lightrag_version())


class StatusObject(Protocol):
    """lightrag.base.DocProcessingStatus: a doc-status record as an object."""

    status: object


# A doc-status record: a dict (the JSON and PostgreSQL storages answer dicts)
# or a DocProcessingStatus.
DocRecord = Mapping[str, object] | StatusObject


class IndexedStorage(Protocol):
    """One of LightRAG's storages (lightrag.base.StorageNameSpace): its flush, its
    abort and its finalisation are attributes the group commit replaces on the
    instance."""

    namespace: str
    index_done_callback: Flush
    drop_pending_index_ops: Flush
    finalize: Flush


class KVStore(IndexedStorage, Protocol):
    """lightrag.base.BaseKVStorage (full_docs, text_chunks, full_entities, full_relations)."""

    async def get_by_id(self, id: str) -> Row | None: ...

    async def get_by_ids(self, ids: list[str]) -> list[Row | None]: ...

    async def filter_keys(self, keys: set[str]) -> set[str]: ...


class VectorStore(IndexedStorage, Protocol):
    """lightrag.base.BaseVectorStorage (chunks_vdb)."""

    async def get_by_ids(self, ids: list[str]) -> list[Row | None]: ...


class DocStatusStore(IndexedStorage, Protocol):
    """lightrag.base.DocStatusStorage."""

    # Replaced on the instance by the feeder, which learns from it when a document ends.
    upsert: Callable[[Mapping[str, Mapping[str, object]]], Awaitable[None]]

    async def get_doc_by_content_hash(
        self, content_hash: str, *, exclude_doc_id: str | None = None
    ) -> tuple[str, Row] | None: ...

    async def get_docs_by_statuses(
        self, statuses: list[object], *, strict: bool = False
    ) -> Mapping[str, DocRecord]: ...


class GraphStore(Protocol):
    """lightrag.base.BaseGraphStorage (chunk_entity_relation_graph): read whole by verify-graph."""

    async def get_all_nodes(self) -> list[Row]: ...

    async def get_all_edges(self) -> list[Row]: ...


class DeletionOutcome(Protocol):
    """lightrag.base.DeletionResult: success, not_found, not_allowed or fail, and why."""

    status: str
    message: str


class LightRAGInstance(Protocol):
    """lightrag.LightRAG, initialised: the members the service reads, calls or replaces."""

    workspace: str
    doc_status: DocStatusStore
    full_docs: KVStore
    text_chunks: KVStore
    full_entities: KVStore
    full_relations: KVStore
    chunks_vdb: VectorStore
    entities_vdb: VectorStore
    relationships_vdb: VectorStore
    chunk_entity_relation_graph: GraphStore
    # Extraction, gleaning and summary answers (replaced on the file storages: llm/cache.py).
    llm_response_cache: KVStore
    # Every storage flushed, at the end of each document (GroupFlush replaces it).
    _insert_done: Callable[..., Awaitable[None]]

    async def initialize_storages(self) -> None: ...

    async def finalize_storages(self) -> None: ...

    async def aget_docs_by_ids(self, ids: list[str]) -> Mapping[str, DocRecord]: ...

    async def adelete_by_doc_id(self, doc_id: str, delete_llm_cache: bool = False) -> DeletionOutcome: ...

    async def apipeline_enqueue_documents(
        self,
        input: list[str],
        ids: list[str] | None = None,
        file_paths: list[str] | None = None,
        track_id: str | None = None,
    ) -> str: ...

    # Replaced on the instance by the writer fence, which gives each run its token (fence.py).
    apipeline_process_enqueue_documents: Callable[[], Awaitable[None]]

    def _index_storages(self) -> Sequence[IndexedStorage]: ...

    def _build_pending_reset_update(
        self, status_doc: StatusObject, content_data: Mapping[str, object] | None
    ) -> tuple[Row, str, Row]: ...


class TextTokenizer(Protocol):
    """lightrag.utils.Tokenizer, as LightRAG calls it."""

    def encode(self, content: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...


class NanoVectorClient(Protocol):
    """nano_vectordb.NanoVectorDB (0.0.4.3): the file it saves to and its storage dict."""

    storage_file: str
    _NanoVectorDB__storage: dict[str, object]


class PostgresDB(Protocol):
    """lightrag.kg.postgres_impl.PostgreSQLDB: the lock its pool reconnects under."""

    _pool_reconnect_lock: asyncio.Lock
