"""Contracts with the real LightRAG (the pinned version, boundary.LIGHTRAG_VERSION).

The service patches LightRAG's internals: the group commit (commit/group.py), the
group flush that replaces `_insert_done` (commit/flush.py), the feeder's resets
through `_build_pending_reset_update` (feeder.py), the streaming vector save
(commit/vector_save.py) and the PostgreSQL reconnect hook (processor.py). Each test
here runs LightRAG's own code on the path the patch relies on (a real
instance: its file storages in a temporary directory, the service's offline
tokenizer, the stand-in's deterministic LLM and hashing embedding in process,
tests/support/offline_lightrag.py) and checks the guarantee the patch gives,
so that an upgrade that moves those internals fails here instead of silently
losing it. Each test says which change of LightRAG would make it fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nano_vectordb import NanoVectorDB
from shield_orchestrator.lightrag import boundary
from shield_orchestrator.lightrag.clients import chat_messages
from shield_orchestrator.lightrag.commit import CommitError, commit_continuously, patch_vector_save, share_flushes
from shield_orchestrator.lightrag.commit.embed_ahead import embed_ahead
from shield_orchestrator.lightrag.commit.journal import FILE_STORAGES, JOURNAL, PREV, file_spec, storage_file
from shield_orchestrator.lightrag.extract import Extractor
from shield_orchestrator.lightrag.feeder import LightRAGFeeder, _status_object
from shield_orchestrator.lightrag.graph_check import GraphVerification, check_graph
from shield_orchestrator.lightrag.llm.cache import sqlite_cache
from shield_orchestrator.lightrag.llm.order import CallOrder, calls_of, place_of
from shield_orchestrator.lightrag.merge import deferred_summary_patches, lock_endpoint_reads, relation_locks, summaries
from shield_orchestrator.lightrag.processor import _offline_tokenizer, patch_postgres_reconnect
from shield_orchestrator.queue.tasks import ChunkTask
from shield_orchestrator.workers.breaker import DependencyGate
from shield_orchestrator.workers.faults import EMBEDDING, FaultKind
from typing_extensions import get_protocol_members

from tests.support.offline_lightrag import (
    TEXTS,
    OfflineModels,
    offline_rag,
    reopen_copy,
    standin,
    statuses_on_disk,
    workspace_dir,
    workspace_files,
)

REFUSE = "REFUSED-BY-THE-LLM"
IDS = list(TEXTS)


@pytest.fixture(autouse=True)
def quiet_lightrag() -> Iterator[None]:
    """LightRAG logs a line per pipeline step at INFO."""
    logger = logging.getLogger("lightrag")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def models() -> OfflineModels:
    return OfflineModels()


@pytest.fixture
async def rag(tmp_path: Path, models: OfflineModels) -> AsyncIterator[Any]:
    instance = offline_rag(tmp_path, models)
    await instance.initialize_storages()
    yield instance
    await instance.finalize_storages()


def chunk(index: int, text: str) -> ChunkTask:
    """The task whose document is chunk-c-<index> (TEXTS' ids)."""
    return ChunkTask(entry_id=f"1-{index}", job_id="c", index=index, text=text, source_uri="")


async def insert(rag: Any, doc_ids: list[str]) -> None:
    await rag.ainsert(
        [TEXTS[doc_id] for doc_id in doc_ids],
        ids=doc_ids,
        file_paths=[f"{doc_id}__inline" for doc_id in doc_ids],
        track_id="contract",
    )


def feeder_of(rag: Any, *, commit: bool = True) -> LightRAGFeeder:
    """A feeder of the instance, with its group commit started (stop both with stop_feeder)."""

    async def storage_answers() -> bool:
        return True

    group = commit_continuously(rag, rag.working_dir, None) if commit else None
    if group is not None:
        group.start()
    return LightRAGFeeder(
        rag,
        asyncio.Lock(),
        DependencyGate(lambda _change: None),
        str,
        storage_answers,
        task_timeout=120,
        window=8,
        ahead=4,
        commit=group,
    )


async def stop_feeder(feeder: LightRAGFeeder) -> None:
    await feeder.stop()
    if feeder._commit is not None:
        await feeder._commit.stop()


def status_value(row: Any) -> str:
    status = row.get("status") if isinstance(row, dict) else getattr(row, "status", None)
    return str(getattr(status, "value", status))


# --------------------------------------------------------------------------
# The typed face: every member the Protocols name is LightRAG's, callable as named
# --------------------------------------------------------------------------


def assert_conforms(real: object, protocol: type) -> None:
    """`real` has every member of `protocol`; a method is async when the
    Protocol's is, and takes the Protocol's parameters under the same names."""
    for name in sorted(get_protocol_members(protocol)):
        assert hasattr(real, name), f"{type(real).__name__} has no {name} ({protocol.__name__})"
        declared = getattr(protocol, name, None)
        if not inspect.isfunction(declared):
            continue
        member = getattr(real, name)
        assert inspect.iscoroutinefunction(member) == inspect.iscoroutinefunction(declared), name
        args: list[object] = []
        kwargs: dict[str, object] = {}
        for parameter in list(inspect.signature(declared).parameters.values())[1:]:
            if parameter.kind is parameter.KEYWORD_ONLY:
                kwargs[parameter.name] = None
            else:
                args.append(None)
        inspect.signature(member).bind(*args, **kwargs)  # TypeError when LightRAG's signature moved


async def test_the_protocols_are_lightrags_members(rag: Any) -> None:
    """Fails when LightRAG renames or drops a member the service uses, turns an
    async method sync (or back), or renames a keyword the service passes
    (ainsert's ids/file_paths/track_id, get_doc_by_content_hash's exclude_doc_id)."""
    from lightrag.kg.postgres_impl import PostgreSQLDB

    assert_conforms(rag, boundary.LightRAGInstance)
    assert_conforms(rag.doc_status, boundary.DocStatusStore)
    for kv in (rag.full_docs, rag.text_chunks, rag.full_entities, rag.full_relations):
        assert_conforms(kv, boundary.KVStore)
    for vdb in (rag.chunks_vdb, rag.entities_vdb, rag.relationships_vdb):
        assert_conforms(vdb, boundary.VectorStore)
    assert_conforms(rag.chunk_entity_relation_graph, boundary.GraphStore)
    for storage in rag._index_storages():
        assert_conforms(storage, boundary.IndexedStorage)
    assert_conforms(rag.chunks_vdb._client, boundary.NanoVectorClient)
    assert_conforms(_offline_tokenizer(), boundary.TextTokenizer)
    assert_conforms(PostgreSQLDB(postgres_config(1)), boundary.PostgresDB)
    await insert(rag, IDS[:1])
    (record,) = (await rag.aget_docs_by_ids(IDS[:1])).values()
    assert_conforms(_status_object(record), boundary.StatusObject)


# --------------------------------------------------------------------------
# The group commit: LightRAG's writes wait for it; its files, one snapshot
# --------------------------------------------------------------------------


async def check_from_disk(rag: Any, folder: Path) -> GraphVerification:
    """graph_check on a new instance that read a copy of the workspace's files:
    what a restart would find. Asserts it is consistent."""
    copy = await reopen_copy(rag, folder)
    try:
        report = await check_graph(copy)
    finally:
        await copy.finalize_storages()
    assert report["consistent"] is True, report["problems"]
    return report


async def test_lightrag_writes_nothing_but_through_the_group_commit(rag: Any) -> None:
    """GroupCommit relies on LightRAG writing every file through the
    `index_done_callback` of a storage `_index_storages()` lists, looked up on
    the instance (the per-document `_insert_done`, the write-ahead barriers
    and the doc-status upserts included). Fails when LightRAG writes a file
    any other way (a storage that list misses, a doc-status upsert that writes
    its file itself, a flush renamed): the files would change before the commit."""
    commit = commit_continuously(rag, rag.working_dir, None)
    before = workspace_files(rag)
    await insert(rag, IDS[:2])
    assert workspace_files(rag) == before
    await commit.commit()
    first = workspace_files(rag)
    assert commit.commits == 1
    assert statuses_on_disk(rag) == dict.fromkeys(IDS[:2], "processed")

    await insert(rag, IDS[2:])
    processed = {doc_id: status_value(row) for doc_id, row in (await rag.aget_docs_by_ids(IDS)).items()}
    assert processed == dict.fromkeys(IDS, "processed")  # in memory, PROCESSED...
    assert workspace_files(rag) == first  # ...and not a byte of it on disk
    await commit.commit()
    assert commit.commits == 2
    # Every document flushed every storage (its `_insert_done`), each flush deferred.
    assert commit.deferred >= len(IDS) * len(rag._index_storages())
    assert statuses_on_disk(rag) == dict.fromkeys(IDS, "processed")
    chunks = json.loads((workspace_dir(rag) / "vdb_chunks.json").read_text())
    assert len(chunks["data"]) == len(IDS)
    assert not [name for name in workspace_files(rag) if name.endswith(PREV)]
    assert not (Path(rag.working_dir) / JOURNAL).exists()


async def test_the_group_commit_knows_each_file_storage_its_file_and_how_it_decides_to_write(rag: Any) -> None:
    """The undo journal links the file each storage writes, found by class name
    and attribute (journal.FILE_STORAGES), and a storage rolled back after a
    failed commit is made to write again through its `storage_updated` flag
    where it means "dirty" (the JSON key-value family), never where it means
    "reload from disk" (NetworkX, nano-vectordb: they write at every flush).
    Fails when LightRAG renames a file storage class or its file attribute,
    writes a file the journal does not name, or changes what the flag means."""
    storages = rag._index_storages()
    assert {type(storage).__name__ for storage in storages} == set(FILE_STORAGES)
    named = {Path(storage_file(storage)) for storage in storages}
    assert all(path.parent == workspace_dir(rag) for path in named)
    commit = commit_continuously(rag, rag.working_dir, None)
    await insert(rag, IDS)
    await commit.commit()
    written = {workspace_dir(rag) / name for name in workspace_files(rag)}
    assert written <= named, written - named  # every file LightRAG wrote is one the journal names
    assert len(written) >= len(named) - 1  # all of them but the LLM cache (off)
    for storage in storages:
        if file_spec(storage).flagged:  # JSON KV: written, so clean; a change makes it dirty
            assert storage.storage_updated.value is False
    await rag.full_docs.upsert({"extra": {"content": "x"}})
    assert rag.full_docs.storage_updated.value is True
    await rag.chunk_entity_relation_graph.upsert_node("Extra", {"entity_type": "x", "source_id": "x"})
    assert rag.chunk_entity_relation_graph.storage_updated.value is False  # True would mean "reload"


async def test_a_committed_workspace_reopened_from_its_files_is_consistent(rag: Any, tmp_path: Path) -> None:
    """Documents ingested through LightRAG's own pipeline, committed by the group
    commit, read back from the files alone (a new instance on a copy) and
    checked by graph_check: every storage says the same. Fails when a commit
    leaves out a storage, or writes the storages as of different instants."""
    commit = commit_continuously(rag, rag.working_dir, None)
    await insert(rag, IDS)
    await commit.commit()
    report = await check_from_disk(rag, tmp_path / "reopened")
    assert report["counts"]["documents"]["processed"] == len(IDS)
    assert report["counts"]["chunks"] == report["counts"]["chunk_vectors"] == len(IDS)
    assert report["counts"]["entities"] == report["counts"]["entity_vectors"] > 0


async def test_a_commit_failed_by_the_embedding_endpoint_is_rolled_back_and_redone_whole(
    rag: Any, models: OfflineModels, tmp_path: Path
) -> None:
    """nano-vectordb's storages embed their buffers when they flush: with the
    endpoint down the commit fails after the key-value files were written, and
    is rolled back on disk; the next commit writes every file again, the JSON
    key-value ones included (LightRAG cleared their dirty flags when it wrote
    them). Fails when a vector storage no longer embeds at flush, or when a
    storage whose file was rolled back is not written again."""
    commit = commit_continuously(rag, rag.working_dir, None)
    await insert(rag, IDS[:1])
    await commit.commit()
    before = workspace_files(rag)
    await insert(rag, IDS[1:])
    models.embedding_down = True
    with pytest.raises(CommitError) as raised:
        await commit.commit()
    assert raised.value.dependency == EMBEDDING
    assert workspace_files(rag) == before  # rolled back: all old
    models.embedding_down = False
    await commit.commit()
    assert statuses_on_disk(rag) == dict.fromkeys(IDS, "processed")
    report = await check_from_disk(rag, tmp_path / "reopened")
    assert report["counts"]["chunks"] == report["counts"]["chunk_vectors"] == len(IDS)


async def test_lightrags_abort_is_noticed_and_its_documents_processed_again(rag: Any, models: OfflineModels) -> None:
    """When LightRAG aborts a batch on an internal storage error it drops its
    pending buffers through each storage's `drop_pending_index_ops`, which
    GroupCommit notes; before its next commit, the feeder's on_drop puts what
    LightRAG marked PROCESSED since the last commit back to PENDING with
    `_build_pending_reset_update`. Fails when the abort no longer goes through
    `drop_pending_index_ops` (renamed, or buffers dropped another way):
    documents of the aborted round would reach the disk
    PROCESSED and be answered done; or when the reset helper moved."""
    rag.max_parallel_insert = 1  # in order: the first two are PROCESSED before the third aborts the batch
    upsert = rag.doc_status.upsert
    models.fail_on.add(REFUSE)
    storage_down = True

    async def doc_status_down_for_failures(data: dict[str, Any]) -> None:
        if storage_down and any(status_value(row) == "failed" for row in data.values()):
            raise OSError("doc-status storage down")  # LightRAG cannot record the failure: it aborts
        await upsert(data)

    rag.doc_status.upsert = doc_status_down_for_failures
    feeder = feeder_of(rag)
    assert feeder._commit is not None
    # The first commit comes at once, the next not for 2 s: what the first
    # serves is durable, what follows is still in memory when the batch aborts.
    feeder._commit.min_interval = 2
    feeder.start()
    tasks = [chunk(0, TEXTS[IDS[0]]), chunk(1, TEXTS[IDS[1]]), chunk(2, f"{TEXTS[IDS[2]]} {REFUSE}")]
    try:
        first = await feeder.process(tasks)
        on_disk = statuses_on_disk(rag)
        redone = [doc_id for doc_id in IDS[:2] if first[doc_id] is not None]
        assert redone, "a document PROCESSED after the last commit and before the abort"
        for doc_id in IDS[:2]:
            outcome = first[doc_id]
            if outcome is None:  # answered done: committed PROCESSED before the abort
                assert on_disk[doc_id] == "processed"
            else:  # PROCESSED in memory when LightRAG dropped its buffers: neither answered done...
                assert outcome.transient and "processed again" in outcome.message
                assert on_disk.get(doc_id) != "processed"  # ...nor committed as such
        assert feeder._commit.drops > 0

        storage_down = False
        models.fail_on.clear()
        feeder._commit.min_interval = 0.5
        assert await feeder.process(tasks) == dict.fromkeys(IDS)
    finally:
        await stop_feeder(feeder)
    assert statuses_on_disk(rag) == dict.fromkeys(IDS, "processed")


async def test_a_failed_document_is_reset_and_processed_again(rag: Any, models: OfflineModels) -> None:
    """The feeder's retry of a FAILED document: `_build_pending_reset_update`
    (called with a DocProcessingStatus built from the stored dict) gives the
    update that puts it back to PENDING, and the pipeline processes it again.
    Fails when the helper is renamed, takes other arguments or answers another
    shape, when DocProcessingStatus' fields change, or when the update it
    builds no longer makes the pipeline take the document."""
    models.fail_on.add(REFUSE)
    feeder = feeder_of(rag)
    feeder.start()
    tasks = [chunk(0, TEXTS[IDS[0]]), chunk(1, f"{TEXTS[IDS[1]]} {REFUSE}")]
    resets: list[str] = []
    build = rag._build_pending_reset_update

    def noting_build(status_doc: Any, content: Any) -> Any:
        resets.append(status_doc.file_path)
        return build(status_doc, content)

    rag._build_pending_reset_update = noting_build
    try:
        first = await feeder.process(tasks)
        refused = first[IDS[1]]
        assert first[IDS[0]] is None
        assert refused is not None and refused.kind is FaultKind.CHUNK and "refuses" in refused.message
        # A FAILED document is answered at once, not after a commit: the FAILED status
        # reaches the disk with the next one (CI once read the disk before it).
        assert feeder._commit is not None
        await feeder._commit.durable()
        assert statuses_on_disk(rag) == {IDS[0]: "processed", IDS[1]: "failed"}
        (failed,) = (await rag.aget_docs_by_ids(IDS[1:2])).values()

        models.fail_on.clear()
        assert await feeder.process(tasks) == dict.fromkeys(IDS[:2])
    finally:
        await stop_feeder(feeder)
    assert resets == [f"{IDS[1]}__inline"]
    (done,) = (await rag.aget_docs_by_ids(IDS[1:2])).values()
    assert status_value(done) == "processed" and not done.get("error_msg")
    assert done["created_at"] == failed["created_at"]
    assert statuses_on_disk(rag) == dict.fromkeys(IDS[:2], "processed")


async def process_again(rag: Any, doc_id: str) -> Any:
    """The document back to PENDING as the feeder puts a FAILED one (its chunks
    kept, so LightRAG's resume purge runs), processed; its doc-status row after."""
    (row,) = (await rag.aget_docs_by_ids([doc_id])).values()
    content = await rag.full_docs.get_by_id(doc_id)
    update, _path, _meta = rag._build_pending_reset_update(_status_object(row), content)
    await rag.doc_status.upsert({doc_id: update})
    await rag.apipeline_process_enqueue_documents()
    (row,) = (await rag.aget_docs_by_ids([doc_id])).values()
    return row


async def test_an_attempt_stopped_after_the_resume_purge_leaves_a_document_lightrag_processes_again(
    rag: Any, models: OfflineModels, monkeypatch: Any, tmp_path: Path
) -> None:
    """A document processed again (after a kill mid-merge, a retry) is first purged by
    LightRAG, anchors included, its kg_write_state left graph_mutation_started; the new
    attempt stages its chunks before its merge writes anchors. Stopped in between (here
    the LLM refuses the text; in the kill test, a kill), the document has chunks, the
    marker and no anchors. With commit/anchors.py's patch the anchors are empty from
    the purge's end and the next attempt processes it, the graph consistent on disk;
    unpatched (a second instance), LightRAG refuses every later attempt
    (RecoveryAnchorMissingError). Fails when LightRAG closes the window itself (drop
    the patch then), or when the resume purge no longer ends in `_clear_kg_purge_journal`."""
    from lightrag import LightRAG
    from shield_orchestrator.lightrag.commit.anchors import patch_resume_anchors

    patch_resume_anchors()
    patched = LightRAG._clear_kg_purge_journal

    async def stop_after_the_resume_purge(rag: Any, doc_id: str) -> None:
        await insert(rag, [doc_id])
        (row,) = (await rag.aget_docs_by_ids([doc_id])).values()
        assert row["metadata"]["kg_write_state"] == "graph_mutation_started"
        await rag.doc_status.upsert({doc_id: {**row, "status": "failed"}})  # as an interrupted attempt
        marker = TEXTS[doc_id].split(".")[0]
        models.fail_on.add(marker)
        try:
            stopped = await process_again(rag, doc_id)
        finally:
            models.fail_on.discard(marker)
        assert status_value(stopped) == "failed" and stopped["chunks_list"], stopped
        assert stopped["metadata"]["kg_write_state"] == "graph_mutation_started"

    await stop_after_the_resume_purge(rag, IDS[1])
    assert (await rag.full_entities.get_by_id(IDS[1]) or {}).get("entity_names") == []
    done = await process_again(rag, IDS[1])
    assert status_value(done) == "processed", done
    assert (await rag.full_entities.get_by_id(IDS[1]) or {}).get("entity_names")
    await check_from_disk(rag, tmp_path / "reopened")

    monkeypatch.setattr(LightRAG, "_clear_kg_purge_journal", patched.__wrapped__)
    unpatched = offline_rag(tmp_path / "unpatched", models)
    await unpatched.initialize_storages()
    try:
        await stop_after_the_resume_purge(unpatched, IDS[0])
        assert await unpatched.full_entities.get_by_id(IDS[0]) is None  # LightRAG's own window
        refused = await process_again(unpatched, IDS[0])
    finally:
        await unpatched.finalize_storages()
    assert status_value(refused) == "failed" and "recovery anchor" in refused["error_msg"], refused


# --------------------------------------------------------------------------
# The group flush: LightRAG's per-document `_insert_done`, replaced
# --------------------------------------------------------------------------


async def test_every_document_waits_for_the_shared_flush_before_processed(rag: Any) -> None:
    """share_flushes replaces the instance's `_insert_done`, which LightRAG's
    pipeline must call once per document and await before it writes the
    document PROCESSED. Fails when LightRAG flushes a document some other way
    (GroupFlush would see no request, and the PostgreSQL path would lose its
    shared flush), or writes PROCESSED before that flush returns."""
    rag.max_parallel_insert = len(IDS)
    events: list[str] = []
    group = share_flushes(rag)
    shared, upsert = rag._insert_done, rag.doc_status.upsert

    async def served(*args: object, **kwargs: object) -> None:
        await shared(*args, **kwargs)
        events.append("served")

    async def noting(data: dict[str, Any]) -> None:
        await upsert(data)
        events.extend(f"processed {doc_id}" for doc_id, row in data.items() if status_value(row) == "processed")

    rag._insert_done, rag.doc_status.upsert = served, noting
    await insert(rag, IDS)
    assert group.requests == len(IDS)
    assert 1 <= group.flushes <= group.requests
    processed = [index for index, event in enumerate(events) if event.startswith("processed")]
    assert len(processed) == len(IDS)
    for count, index in enumerate(processed, start=1):
        assert events[:index].count("served") >= count, events  # its own flush returned first
    assert statuses_on_disk(rag) == dict.fromkeys(IDS, "processed")


# --------------------------------------------------------------------------
# The vector save: the file LightRAG writes is nano-vectordb's own
# --------------------------------------------------------------------------


async def test_lightrags_vector_files_are_nano_vectordbs_own_bytes(
    rag: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """patch_vector_save replaces `NanoVectorDB.save`, which LightRAG's file
    vector storages must call to write their files (through `_client`, its
    `storage_file` pointed at a temporary sibling). Fails when LightRAG saves
    them some other way (the patch no longer bites: no call), or when
    nano-vectordb's own save writes other bytes than the patch (a new key, a
    new encoding)."""
    patch_vector_save()
    patched = NanoVectorDB.save
    saves: list[str] = []

    def counted(client: Any) -> None:
        saves.append(Path(client.storage_file).name)
        patched(client)

    monkeypatch.setattr(NanoVectorDB, "save", counted)
    commit = commit_continuously(rag, rag.working_dir, None)
    await insert(rag, IDS)
    await commit.commit()
    storages = [rag.entities_vdb, rag.relationships_vdb, rag.chunks_vdb]
    assert len(saves) >= len(storages)
    written = workspace_files(rag)
    own = patched.__wrapped__  # type: ignore[attr-defined]
    for storage in storages:
        name = Path(storage._client_file_name).name
        assert written[name] == saved_with(own, storage._client, tmp_path / f"reference-{name}"), name
        assert len(json.loads(written[name])["data"]) > 0


def saved_with(save: Any, client: Any, path: Path) -> bytes:
    """What `save` writes for the NanoVectorDB `client`, written to `path` instead."""
    kept, client.storage_file = client.storage_file, str(path)
    try:
        save(client)
    finally:
        client.storage_file = kept
    return path.read_bytes()


# --------------------------------------------------------------------------
# The PostgreSQL reconnect: no deadlock while PostgreSQL stays down
# --------------------------------------------------------------------------


def postgres_config(port: int) -> dict[str, Any]:
    """A PostgreSQLDB configuration as LightRAG's ClientManager builds it, with the
    service's quick retries (processor.postgres_environment) and no backoff."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "user": "orchestrator",
        "password": "unused",
        "database": "shield",
        "workspace": "contract",
        "max_connections": 2,
        "connection_retry_attempts": 3,
        "connection_retry_backoff": 0.0,
        "connection_retry_backoff_max": 0.0,
        "pool_close_timeout": 1.0,
    }


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LostPool:
    """A pool whose connection was lost: acquiring raises a transient error."""

    def __init__(self) -> None:
        self.closed = False

    def acquire(self) -> LostPool:
        return self

    async def __aenter__(self) -> None:
        raise ConnectionResetError("connection lost")

    async def __aexit__(self, *_exc: object) -> None:
        return None

    async def close(self) -> None:
        self.closed = True


async def select_one(connection: Any) -> object:
    return await connection.fetchval("SELECT 1")


async def test_lightrags_own_reconnect_still_deadlocks_while_postgres_stays_down() -> None:
    """The premise of patch_postgres_reconnect: LightRAG's `_ensure_pool` holds
    `_pool_reconnect_lock` while `initdb` retries, and its retry hook
    `_before_sleep` resets the pool under the same lock. Fails when LightRAG no
    longer deadlocks there (the patch may then go), or moves these members."""
    from lightrag.kg.postgres_impl import PostgreSQLDB

    patch_postgres_reconnect()

    class Unpatched(PostgreSQLDB):  # type: ignore[misc]
        _before_sleep = PostgreSQLDB._before_sleep.__wrapped__

    db = Unpatched(postgres_config(closed_port()))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(db._run_with_retry(select_one), 2)


async def test_a_lost_connection_resets_the_pool_and_the_reconnect_gives_up_promptly() -> None:
    """With the patch: a lost connection resets the pool (LightRAG's own hook,
    outside a reconnect), the reconnect's retries run out while PostgreSQL stays
    down, the caller gets the connection error in well under a second, and the
    lock is free for the next try. Fails when the retry path no longer calls
    `_before_sleep`, or calls it under another lock than `_pool_reconnect_lock`
    (the deadlock would be back: a timeout here)."""
    from lightrag.kg.postgres_impl import PostgreSQLDB

    patch_postgres_reconnect()
    db = PostgreSQLDB(postgres_config(closed_port()))
    lost = db.pool = LostPool()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(db._run_with_retry(select_one), 2)
    assert lost.closed and db.pool is None
    assert not db._pool_reconnect_lock.locked()


# --- extraction ahead of the pipeline (extract.py) and the SQLite LLM cache (llm/cache.py) ---


@pytest.fixture
async def cached_rag(tmp_path: Path, models: OfflineModels) -> AsyncIterator[Any]:
    """A LightRAG with its extraction cache on, kept in the service's SQLite cache."""
    instance = offline_rag(tmp_path, models, extract_cache=True)
    instance.llm_response_cache = sqlite_cache(instance.llm_response_cache, str(tmp_path))
    await instance.initialize_storages()
    yield instance
    await instance.finalize_storages()


async def test_extraction_ahead_leaves_the_pipeline_no_extraction_to_pay(
    cached_rag: Any, models: OfflineModels
) -> None:
    extractor = Extractor(cached_rag)
    for doc_id in IDS:
        await extractor.extract(TEXTS[doc_id], doc_id)
    ahead = list(models.kinds)
    assert ahead.count("extraction") == len(IDS) and ahead.count("gleaning") == len(IDS)
    await insert(cached_rag, IDS)
    in_pipeline = models.kinds[len(ahead) :]
    assert "extraction" not in in_pipeline and "gleaning" not in in_pipeline, in_pipeline
    docs = await cached_rag.aget_docs_by_ids(IDS)
    assert {status_value(doc) for doc in docs.values()} == {"processed"}
    assert (await cached_rag.chunk_entity_relation_graph.get_node("Amara Osei")) is not None


async def test_the_sqlite_cache_keeps_every_answer_for_a_new_instance(
    cached_rag: Any, models: OfflineModels, tmp_path: Path
) -> None:
    await insert(cached_rag, IDS)
    paid = len(models.kinds)
    await cached_rag.finalize_storages()
    again = OfflineModels()
    reopened = offline_rag(tmp_path, again, cached_rag.workspace, extract_cache=True)
    reopened.llm_response_cache = sqlite_cache(reopened.llm_response_cache, str(tmp_path))
    await reopened.initialize_storages()
    try:
        extractor = Extractor(reopened)
        for doc_id in IDS:
            await extractor.extract(TEXTS[doc_id], doc_id)
        assert paid > 0 and again.kinds == []
    finally:
        await reopened.finalize_storages()
        await cached_rag.initialize_storages()  # the fixture finalises it


# --- vectors embedded ahead of a commit (commit/embed_ahead.py) ---


async def test_vectors_embedded_ahead_of_a_commit_are_the_ones_its_flush_writes(rag: Any) -> None:
    vdb = rag.entities_vdb
    embed, calls, asked, answer = vdb.embedding_func, [], asyncio.Event(), asyncio.Event()

    async def held(texts: list[str], **kwargs: Any) -> Any:
        calls.append(list(texts))
        asked.set()
        await answer.wait()
        return await embed(texts, **kwargs)

    vdb.embedding_func = held
    record = {"entity_name": "A", "source_id": "c", "file_path": "f"}
    await vdb.upsert({"ent-a": {**record, "content": "A\nfirst"}, "ent-b": {**record, "content": "B\nfirst"}})
    ahead = asyncio.create_task(embed_ahead([vdb, rag.text_chunks]))  # a key-value store has nothing to embed
    await asyncio.wait_for(asked.wait(), 5)
    await vdb.upsert({"ent-b": {**record, "content": "B\nsecond"}})  # buffered while its first text is embedded
    answer.set()
    assert await ahead == 2 and calls == [["A\nfirst", "B\nfirst"]]
    await vdb.index_done_callback()  # LightRAG's flush: embeds only what is still unset
    assert calls[1:] == [["B\nsecond"]]
    stored = await vdb.get_vectors_by_ids(["ent-a", "ent-b"])
    expected = await embed(["A\nfirst", "B\nsecond"], context="document")
    assert stored["ent-a"] == pytest.approx(list(expected[0]), abs=1e-2)  # stored as float16
    assert stored["ent-b"] == pytest.approx(list(expected[1]), abs=1e-2)


# --- relation merges locked per relation (merge/locks.py) ---


async def test_a_relation_merge_holds_its_endpoints_only_from_their_read(rag: Any, monkeypatch: Any) -> None:
    from lightrag import operate

    monkeypatch.setattr(operate, "get_storage_keyed_lock", relation_locks(operate.get_storage_keyed_lock))
    lock_endpoint_reads(rag.chunk_entity_relation_graph)
    locks, graph = operate.get_storage_keyed_lock, rag.chunk_entity_relation_graph

    async def relation(a: str, b: str, seconds: float, read: bool, edge_written: bool = False) -> None:
        async with locks(sorted([a, b]), namespace="GraphDB"):
            if read:
                await graph.get_node(a)
            if edge_written:
                await graph.upsert_edge(a, b, edge_data={"weight": 1.0, "description": "d", "source_id": "c"})
            await asyncio.sleep(seconds)  # its summary, its endpoint writes, or its own vector

    async def entity(name: str) -> float:
        began = asyncio.get_running_loop().time()
        async with locks([name], namespace="GraphDB"):
            return asyncio.get_running_loop().time() - began

    summarising = asyncio.create_task(relation("E", "F", 0.4, read=False))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(relation("E", "G", 0, read=True), 0.2)  # E is not held by (E, F)'s summary
    assert await asyncio.wait_for(entity("E"), 0.2) < 0.1
    same_relation = asyncio.create_task(relation("F", "E", 0, read=False))
    await asyncio.sleep(0.1)
    assert not same_relation.done()  # one relation's merges still run one at a time
    await summarising
    await same_relation
    writing = asyncio.create_task(relation("E", "F", 0.3, read=True))
    await asyncio.sleep(0.05)
    assert await entity("E") >= 0.2  # an endpoint read by a relation's merge waits until its edge is written
    await writing
    vectoring = asyncio.create_task(relation("E", "F", 0.3, read=True, edge_written=True))
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(entity("E"), 0.2) < 0.1  # its own vector is written under its key alone
    assert not vectoring.done()
    same_relation = asyncio.create_task(relation("F", "E", 0, read=False))
    await asyncio.sleep(0.1)
    assert not same_relation.done()  # which it still holds
    await vectoring
    await same_relation


async def ingested_dump(
    folder: Path, models: OfflineModels, prepare: Any = None, texts: dict[str, str] | None = None
) -> Any:
    """The canonical dump of `texts` (TEXTS) ingested by LightRAG's pipeline into a
    new workspace (after `prepare(instance)`), checked consistent. One document at a
    time: LightRAG's merge breaks ties by order (an entity's type when two
    documents disagree), so documents merged concurrently may differ there."""
    instance = offline_rag(folder, models, extract_cache=True)
    instance.llm_response_cache = sqlite_cache(instance.llm_response_cache, str(folder))
    await instance.initialize_storages()
    try:
        if prepare is not None:
            await prepare(instance)
        for doc_id, text in (texts or TEXTS).items():
            await instance.ainsert([text], ids=[doc_id], file_paths=[f"{doc_id}__inline"], track_id="contract")
        report = await check_graph(instance, dump=True)
    finally:
        await instance.finalize_storages()
    assert report["consistent"] is True, report["problems"]
    return report["dump"]


async def test_the_graph_is_the_same_with_relations_locked_per_relation(tmp_path: Path, monkeypatch: Any) -> None:
    from lightrag import operate

    async def lock_reads(instance: Any) -> None:
        lock_endpoint_reads(instance.chunk_entity_relation_graph)

    as_lightrag = await ingested_dump(tmp_path / "lightrag", OfflineModels())
    monkeypatch.setattr(operate, "get_storage_keyed_lock", relation_locks(operate.get_storage_keyed_lock))
    assert await ingested_dump(tmp_path / "per-relation", OfflineModels(), lock_reads) == as_lightrag


# --- merge summaries made after the merge's lock (summaries.py) ---

# Twelve documents on the same people and companies, each saying something of its
# own about them: their descriptions pass LightRAG's force_llm_summary_on_merge (8).
RECURRING = {
    f"recur-{i}": (
        f"Amara Osei of Northwind Shipping met Tomas Berg in Rotterdam for review {i}. "
        f"Tomas Berg leads Helios Grid and reported on contract {i} to Amara Osei. "
        f"Helios Grid supplies Northwind Shipping with panels for depot {i}."
    )
    for i in range(12)
}


def lock_holds(monkeypatch: Any, seconds: list[float]) -> None:
    """The graph's keyed locks as the service takes them (merge/locks.py, summaries
    deferred as summaries.py does), each acquisition's hold time noted in `seconds`."""
    from lightrag import operate

    lightrags = operate.get_storage_keyed_lock

    def timed(keys: Any, namespace: str = "default", enable_logging: bool = False) -> Any:
        inner = lightrags(keys, namespace=namespace, enable_logging=enable_logging)

        @contextlib.asynccontextmanager
        async def held() -> AsyncIterator[None]:
            async with inner:
                began = asyncio.get_running_loop().time()
                try:
                    yield
                finally:
                    if namespace.endswith("GraphDB"):
                        seconds.append(asyncio.get_running_loop().time() - began)

        return held()

    monkeypatch.setattr(operate, "get_storage_keyed_lock", relation_locks(timed))
    for name, function in deferred_summary_patches(operate).items():
        monkeypatch.setattr(operate, name, function)


async def test_merge_summaries_are_made_after_the_lock_and_leave_none_due(tmp_path: Path, monkeypatch: Any) -> None:
    holds: list[float] = []
    lock_holds(monkeypatch, holds)
    models = OfflineModels(delays={"summary": 0.3})
    instance = offline_rag(tmp_path, models, max_parallel_insert=6)
    await instance.initialize_storages()
    deferred = summaries.COUNTS.deferred
    try:
        lock_endpoint_reads(instance.chunk_entity_relation_graph)
        await instance.ainsert(list(RECURRING.values()), ids=list(RECURRING), track_id="contract")
        report = await check_graph(instance, dump=True)
    finally:
        await instance.finalize_storages()
    assert report["consistent"] is True, report["problems"]
    assert models.kinds.count("summary") > 0
    assert holds and max(holds) < 0.3  # no lock held for the length of a summary
    assert summaries.COUNTS.deferred > deferred
    assert summaries.COUNTS.in_flight == set()
    dump = report["dump"]
    assert dump is not None and dump["documents_processed"] == len(RECURRING)
    force = instance.force_llm_summary_on_merge
    due = [item["name"] for item in dump["entities"] if len(item["descriptions"]) >= force]
    due += [f"{item['source']}-{item['target']}" for item in dump["relations"] if len(item["descriptions"]) >= force]
    assert due == []  # every summary the rule asks for was made and applied


async def test_merge_summaries_made_after_the_lock_give_lightrags_graph(tmp_path: Path, monkeypatch: Any) -> None:
    from lightrag import operate

    async def lock_reads(instance: Any) -> None:
        lock_endpoint_reads(instance.chunk_entity_relation_graph)

    as_lightrag, paid = OfflineModels(), OfflineModels()
    expected = await ingested_dump(tmp_path / "lightrag", as_lightrag, texts=RECURRING)
    monkeypatch.setattr(operate, "get_storage_keyed_lock", relation_locks(operate.get_storage_keyed_lock))
    for name, function in deferred_summary_patches(operate).items():
        monkeypatch.setattr(operate, name, function)
    deferred = summaries.COUNTS.deferred
    assert await ingested_dump(tmp_path / "deferred", paid, lock_reads, texts=RECURRING) == expected
    assert summaries.COUNTS.deferred > deferred
    assert as_lightrag.kinds.count("summary") > 0 and paid.kinds.count("summary") == as_lightrag.kinds.count("summary")


async def test_the_pipeline_takes_the_results_extracted_ahead_and_makes_the_same_graph(tmp_path: Path) -> None:
    extractors: list[Extractor] = []

    async def extract_ahead(instance: Any) -> None:
        extractor = Extractor(instance)
        extractor.serve_pipeline()
        for doc_id in IDS:
            await extractor.extract(TEXTS[doc_id], doc_id)
        extractors.append(extractor)

    as_lightrag = await ingested_dump(tmp_path / "lightrag", OfflineModels())
    models = OfflineModels()
    assert await ingested_dump(tmp_path / "ahead", models, extract_ahead) == as_lightrag
    assert extractors[0].reused == len(IDS)
    assert models.kinds.count("extraction") == len(IDS)  # each paid once, ahead


# --- deletes after extraction ahead (extract.py's cache keys, handlers/delete.py's rebuild) ---


async def test_a_delete_rebuilds_shared_entities_from_chunks_extracted_ahead(cached_rag: Any) -> None:
    """Fails if LightRAG's pipeline stops naming a plain text's chunks <doc>-chunk-NNN,
    its rebuild stops reading the chunks' llm_cache_list through
    operate._get_cached_extraction_results, or update_chunk_cache_list moves: the
    delete then leaves the deleted chunk named as a source of the shared entity."""
    from shield_orchestrator.lightrag.handlers.delete import patch_rebuild_attribution

    patch_rebuild_attribution()
    extractor = Extractor(cached_rag)
    extractor.serve_pipeline()

    async def add(doc_id: str, text: str) -> None:
        await extractor.extract(text, doc_id)
        await cached_rag.ainsert([text], ids=[doc_id], file_paths=[f"{doc_id}__inline"], track_id="contract")

    for doc_id in ("chunk-c-0", "chunk-c-1"):
        await add(doc_id, TEXTS[doc_id])
    assert extractor.reused == 2
    for doc_id in ("chunk-c-0", "chunk-c-1"):
        record = await cached_rag.text_chunks.get_by_id(f"{doc_id}-chunk-000")
        listed = record["llm_cache_list"]
        entries = await cached_rag.llm_response_cache.get_by_ids(listed)
        assert listed and {entry["chunk_id"] for entry in entries} == {f"{doc_id}-chunk-000"}, entries

    shared = "Tomas Berg"  # in both texts
    assert (await cached_rag.adelete_by_doc_id("chunk-c-0")).status == "success"
    await add("chunk-d-0", TEXTS["chunk-c-0"])  # the same text again: its extraction is the cached one
    assert extractor.reused == 3
    node = await cached_rag.chunk_entity_relation_graph.get_node(shared)
    assert set(node["source_id"].split("<SEP>")) == {"chunk-c-1-chunk-000", "chunk-d-0-chunk-000"}

    assert (await cached_rag.adelete_by_doc_id("chunk-c-1")).status == "success"
    node = await cached_rag.chunk_entity_relation_graph.get_node(shared)
    assert node["source_id"] == "chunk-d-0-chunk-000", node  # rebuilt from the chunk that remains
    assert "Helios Grid" not in node["description"] or "chunk-c-1" not in node["description"]


# --- the LLM's queue in document order (llm/order.py) ---


async def test_lightrags_llm_queue_serves_documents_in_their_order_whatever_the_kind() -> None:
    """Fails if LightRAG's queued LLM function stops taking `_priority`, or its queue
    stops serving the lowest first."""
    from lightrag.utils import priority_limit_async_func_call

    served: list[str] = []
    occupied = asyncio.Event()

    async def llm(name: str) -> str:
        if name == "occupying":
            await occupied.wait()
        served.append(name)
        return name

    queued = priority_limit_async_func_call(1, queue_name="order contract")(llm)
    fake = SimpleNamespace(_role_llm_states={"extract": SimpleNamespace(wrapped=queued)}, _process_extract_entities=llm)
    order = CallOrder(lead=2)
    order.order_calls(fake)
    call = fake._role_llm_states["extract"].wrapped
    ranks = {"doc-a": (1, 0), "doc-b": (1, 2), "doc-c": (1, 4), "doc-d": (1, 5), "doc-urgent": (0, 9)}
    for doc_id, rank in ranks.items():
        order.place(doc_id, rank)

    async def of(doc_id: str | None, name: str, priority: int, ahead: bool = False) -> str:
        if doc_id is not None:
            calls_of(doc_id, ahead=ahead)
        return str(await call(name, _priority=priority))

    first = asyncio.create_task(of(None, "occupying", 10))
    await asyncio.sleep(0.05)
    waiting = [
        asyncio.create_task(of("doc-c", "summary of c", 8)),
        asyncio.create_task(of("doc-d", "extraction of d ahead", 10, ahead=True)),  # at (1, 3)
        asyncio.create_task(of("doc-b", "extraction of b", 10)),
        asyncio.create_task(of("doc-a", "gleaning of a", 10)),
        asyncio.create_task(of("doc-urgent", "summary of urgent", 8)),
        asyncio.create_task(of(None, "outside any document", 10)),
    ]
    await asyncio.sleep(0.05)
    occupied.set()
    await asyncio.gather(first, *waiting)
    await queued.shutdown()
    assert served == [
        "occupying",
        "outside any document",  # LightRAG's own priority, ahead of every document
        "summary of urgent",
        "gleaning of a",
        "extraction of b",
        "extraction of d ahead",  # two places earlier than its own: between b and c
        "summary of c",
    ]
    order.forget("doc-a")
    assert len(order) == len(ranks) - 1


def spy_on_llm_queue(instance: Any) -> list[tuple[Any, str, str]]:
    """Each call that reaches the instance's queued LLM function (extraction role):
    (its priority, its kind as the stand-in classifies it, its prompt and history)."""
    calls: list[tuple[Any, str, str]] = []
    state = instance._role_llm_states["extract"]
    queued = state.wrapped

    async def spy(prompt: str, *args: Any, **kwargs: Any) -> Any:
        history = kwargs.get("history_messages")
        kind, _ = standin().answer_chat(chat_messages(prompt, kwargs.get("system_prompt"), history), False)
        calls.append((kwargs.get("_priority"), str(kind), json.dumps([prompt, history])))
        return await queued(prompt, *args, **kwargs)

    state.wrapped = spy
    return calls


async def test_an_extraction_ahead_is_queued_a_lead_before_its_documents_place(
    tmp_path: Path, models: OfflineModels
) -> None:
    """Fails if LightRAG's extraction (`operate.extract_entities`, which the
    extraction ahead calls) stops calling the role's function from the caller's task."""
    instance = offline_rag(tmp_path, models, extract_cache=True)
    calls = spy_on_llm_queue(instance)
    order = CallOrder(lead=4)
    order.order_calls(instance)
    order.place("chunk-c-0", (1, 10))
    await instance.initialize_storages()

    async def ahead() -> None:
        calls_of("chunk-c-0", ahead=True)
        await Extractor(instance).extract(TEXTS["chunk-c-0"], "chunk-c-0")

    try:
        await asyncio.create_task(ahead())
    finally:
        await instance.finalize_storages()
    assert [(priority, kind) for priority, kind, _ in calls] == [
        (place_of((1, 10)), "extraction"),  # its own place, 4 earlier than in the pipeline
        (place_of((1, 10)), "gleaning"),
    ]


async def test_every_llm_call_of_the_pipeline_carries_its_documents_place(tmp_path: Path, monkeypatch: Any) -> None:
    """Fails if LightRAG's pipeline stops merging a document through
    `lightrag.pipeline.merge_nodes_and_edges` with its `doc_id` (the place would not
    reach the merge's summaries), stops extracting through the instance's
    `_process_extract_entities`, or stops calling the extraction role's function
    for extraction, gleaning or summaries."""
    from lightrag import operate

    monkeypatch.setattr(operate, "get_storage_keyed_lock", relation_locks(operate.get_storage_keyed_lock))
    for name, function in deferred_summary_patches(operate).items():
        monkeypatch.setattr(operate, name, function)
    models = OfflineModels()
    instance = offline_rag(tmp_path, models, max_parallel_insert=4)
    calls = spy_on_llm_queue(instance)
    order = CallOrder(lead=4)
    order.order_calls(instance)
    places = {doc_id: place_of((1, 100 + index), 4) for index, doc_id in enumerate(RECURRING)}
    for index, doc_id in enumerate(RECURRING):
        order.place(doc_id, (1, 100 + index))
    await instance.initialize_storages()
    try:
        lock_endpoint_reads(instance.chunk_entity_relation_graph)
        await instance.ainsert(list(RECURRING.values()), ids=list(RECURRING), track_id="order")
    finally:
        await instance.finalize_storages()
    assert models.kinds.count("summary") > 0 and len(calls) == len(models.kinds)
    assert {priority for priority, _, _ in calls} <= set(places.values()), calls[:3]
    extractions = [(priority, text) for priority, kind, text in calls if kind in ("extraction", "gleaning")]
    assert len(extractions) == 2 * len(RECURRING)
    for priority, text in extractions:  # each at the place of the document it reads
        (named,) = [doc_id for index, doc_id in enumerate(RECURRING) if f"review {index}. " in text]
        assert priority == places[named], (named, priority)
