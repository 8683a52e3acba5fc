"""The group commit of the file storages (lightrag/commit/): every flush noted,
never done; commits that serve every caller waiting, spaced by their duty
cycle; a gate that keeps mutations out while a commit writes, re-entrant for
nested holds; a failed commit rolled back on disk and written again whole by
the next; on_drop before the next commit; and the undo journal, crashed at
every step and recovered to all-old or all-new files.

The storages are fakes named after LightRAG's file storage classes (the group
commit knows them by class name, journal.FILE_STORAGES), each writing its
file as LightRAG does (a temporary sibling, then os.replace) and deciding
when to write as its class does: the JSON key-value family only when its
`storage_updated` flag says dirty, the others at every flush.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from shield_orchestrator.lightrag.commit import faults, journal
from shield_orchestrator.lightrag.commit.faults import CommitFault
from shield_orchestrator.lightrag.commit.gate import RWGate
from shield_orchestrator.lightrag.commit.group import CommitError, GroupCommit
from shield_orchestrator.lightrag.commit.journal import JOURNAL, PREV, JournalError, recover
from shield_orchestrator.workers.faults import EMBEDDING, STORAGE


class Flag:
    value = False


class FakeStorage:
    """A file storage: its data in memory, written whole to its file by its flush."""

    def __init__(self, folder: Path, namespace: str, log: list[str]) -> None:
        self.namespace = namespace
        self.path = folder / f"{namespace}.json"
        self.data: dict[str, object] = {}
        self.log = log
        self.fail_with: BaseException | None = None
        self.flush_seconds = 0.0
        self.flush_gate: asyncio.Event | None = None  # a flush waits for it when set
        self.flushing = asyncio.Event()
        self.drops = 0
        self.mutation_gate: asyncio.Event | None = None  # an upsert waits for it when set
        self.mutating = asyncio.Event()

    async def upsert(self, data: dict[str, object]) -> None:
        self.mutating.set()
        if self.mutation_gate is not None:
            await self.mutation_gate.wait()
        self.data.update(data)
        self.changed()

    def changed(self) -> None:
        return None

    def writes(self) -> bool:
        return True

    def wrote(self) -> None:
        return None

    async def index_done_callback(self) -> None:
        self.flushing.set()
        if self.flush_gate is not None:
            await self.flush_gate.wait()
        await asyncio.sleep(self.flush_seconds)
        if self.fail_with is not None:
            raise self.fail_with
        if not self.writes():
            return
        tmp = self.path.with_name(self.path.name + ".tmp.1")
        tmp.write_text(json.dumps(self.data, sort_keys=True))
        os.replace(tmp, self.path)
        self.log.append(self.namespace)
        self.wrote()

    async def drop_pending_index_ops(self) -> None:
        self.drops += 1

    async def finalize(self) -> None:
        raise AssertionError("LightRAG's finalize must not run: it would write outside the commit")


class JsonKVStorage(FakeStorage):
    """Writes only when its flag says dirty; a write clears it (LightRAG's JSON KV)."""

    def __init__(self, folder: Path, namespace: str, log: list[str]) -> None:
        super().__init__(folder, namespace, log)
        self._file_name = str(self.path)
        self.storage_updated = Flag()

    def changed(self) -> None:
        self.storage_updated.value = True

    def writes(self) -> bool:
        return self.storage_updated.value

    def wrote(self) -> None:
        self.storage_updated.value = False


class JsonDocStatusStorage(JsonKVStorage):
    """The doc statuses: a JSON KV."""


class NanoVectorDBStorage(FakeStorage):
    """Writes at every flush (it embeds its buffer then: the flush may fail with an embedding error)."""

    def __init__(self, folder: Path, namespace: str, log: list[str]) -> None:
        super().__init__(folder, namespace, log)
        self._client_file_name = str(self.path)


class NetworkXStorage(FakeStorage):
    """Writes at every flush."""

    def __init__(self, folder: Path, namespace: str, log: list[str]) -> None:
        super().__init__(folder, namespace, log)
        self._graphml_xml_file = str(self.path)

    async def upsert_node(self, node_id: str, data: dict[str, object]) -> None:
        await self.upsert({node_id: data})


class Workspace:
    """Fake storages in tmp/ws, LightRAG's working dir tmp: data storages, then the statuses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        folder = root / "ws"
        folder.mkdir(exist_ok=True)
        self.log: list[str] = []
        self.full_docs = JsonKVStorage(folder, "full_docs", self.log)
        self.text_chunks = JsonKVStorage(folder, "text_chunks", self.log)
        self.vdb = NanoVectorDBStorage(folder, "vdb_chunks", self.log)
        self.graph = NetworkXStorage(folder, "graph", self.log)
        self.status = JsonDocStatusStorage(folder, "doc_status", self.log)
        self.storages: list[FakeStorage] = [self.full_docs, self.status, self.text_chunks, self.vdb, self.graph]

    def commit(self, **options: Any) -> GroupCommit:
        options = {"min_interval": 0.01, "max_duty": 1.0, **options}
        return GroupCommit(self.storages, self.status, str(self.root), **options)  # type: ignore[arg-type]

    async def put(self, value: object) -> None:
        """A document's worth: every storage mutated, then flushed (noted)."""
        for storage in self.storages:
            await storage.upsert({"doc": value})
            await storage.index_done_callback()

    def on_disk(self) -> dict[str, object]:
        return {s.namespace: json.loads(s.path.read_text()) if s.path.exists() else None for s in self.storages}

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.root.rglob("*") if p.name == JOURNAL or p.name.endswith(PREV))


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
async def running(ws: Workspace) -> AsyncIterator[GroupCommit]:
    commit = ws.commit()
    commit.start()
    yield commit
    await commit.stop()


class SimulatedCrash(BaseException):
    """Raised at a commit step in place of the SIGKILL: nothing of the commit's own handling runs."""


def crash() -> None:
    raise SimulatedCrash


# --------------------------------------------------------------------------
# Deferral and order
# --------------------------------------------------------------------------


async def test_flushes_are_noted_and_one_commit_writes_the_data_then_the_statuses_last(ws: Workspace) -> None:
    commit = ws.commit()
    await ws.put(1)
    await ws.put(2)
    assert ws.log == [] and commit.deferred == 2 * len(ws.storages)
    await commit.commit()
    assert ws.log == ["full_docs", "text_chunks", "vdb_chunks", "graph", "doc_status"]  # one at a time, in order
    assert commit.commits == 1
    assert ws.on_disk() == {key: {"doc": 2} for key in ws.on_disk()}
    assert ws.leftovers() == []
    await commit.commit()  # nothing dirty: nothing written
    assert len(ws.log) == len(ws.storages) and commit.commits == 1


async def test_a_mutation_alone_makes_its_storage_part_of_the_next_commit(ws: Workspace) -> None:
    commit = ws.commit()
    await ws.graph.upsert_node("n", {"kind": "entity"})  # no flush asked for
    await commit.commit()
    assert ws.log == ["graph"]


async def test_lightrags_finalize_is_replaced_by_nothing(ws: Workspace) -> None:
    ws.commit()
    await ws.put(1)
    for storage in ws.storages:
        await storage.finalize()
    assert ws.log == []


def test_a_storage_the_commit_does_not_know_is_refused(ws: Workspace) -> None:
    stranger = FakeStorage(ws.root, "stranger", ws.log)
    with pytest.raises(TypeError, match="FakeStorage"):
        GroupCommit([stranger], ws.status, str(ws.root))  # type: ignore[list-item]


# --------------------------------------------------------------------------
# durable(): group commit
# --------------------------------------------------------------------------


async def test_durable_returns_at_once_when_nothing_is_dirty(ws: Workspace) -> None:
    commit = ws.commit()
    await asyncio.wait_for(commit.durable(), 0.1)  # not even started: nothing to wait for
    await ws.put(1)
    with pytest.raises(RuntimeError, match="start"):
        await commit.durable()


async def test_durable_waits_for_a_commit_that_wrote_what_was_dirty(ws: Workspace, running: GroupCommit) -> None:
    await ws.put(1)
    await running.durable()
    assert running.commits == 1 and ws.on_disk()["doc_status"] == {"doc": 1}


async def test_callers_during_a_running_commit_wait_for_the_next_one_and_share_it(
    ws: Workspace, running: GroupCommit
) -> None:
    """`_started` counts the commits begun (the one that serves a caller is its
    number at the call, plus one)."""

    async def caller(value: object | None = None) -> int:
        if value is not None:
            await ws.status.upsert({f"doc-{value}": value})
        await running.durable()
        return running._started

    ws.graph.flush_gate = asyncio.Event()
    await ws.put(1)
    first = asyncio.create_task(caller())
    await asyncio.wait_for(ws.graph.flushing.wait(), 1)  # commit 1 is writing
    late = [asyncio.create_task(caller()) for _ in range(3)]  # nothing dirty, but a commit runs
    await asyncio.sleep(0.05)
    assert not first.done() and not any(task.done() for task in late)
    ws.graph.flush_gate.set()
    await asyncio.wait_for(first, 1)
    assert min(await asyncio.wait_for(asyncio.gather(*late), 1)) == 2  # served by the next commit...
    assert running._started == 2 and running.commits == 1  # ...one for all three, with nothing to write
    await asyncio.wait_for(asyncio.gather(*(caller(value) for value in range(5))), 1)
    assert running._started == 3 and running.commits == 2  # five writers, one commit
    assert ws.on_disk()["doc_status"] == {"doc": 1, **{f"doc-{value}": value for value in range(5)}}


async def test_durable_raises_the_error_of_the_commit_that_served_it(ws: Workspace, running: GroupCommit) -> None:
    ws.vdb.fail_with = OSError(28, "No space left on device")
    await ws.put(1)
    with pytest.raises(CommitError) as raised:
        await running.durable()
    assert raised.value.dependency == STORAGE and "vdb_chunks" in str(raised.value)
    ws.vdb.fail_with = None
    await running.durable()  # still dirty: the next commit writes it
    assert ws.on_disk()["vdb_chunks"] == {"doc": 1}


async def commit_times(ws: Workspace, commit: GroupCommit, rounds: int) -> list[tuple[float, float]]:
    """(start, end) of each of `rounds` commits, each asked for by a durable() caller at once."""
    loop = asyncio.get_running_loop()
    times: list[tuple[float, float]] = []
    for value in range(rounds):
        await ws.put(value)
        start = loop.time()
        await commit.durable()
        times.append((start, loop.time()))
    return times


async def test_the_next_commit_is_spaced_by_the_duty_cycle(ws: Workspace) -> None:
    commit = ws.commit(min_interval=0.01, max_duty=0.25)
    ws.graph.flush_seconds = 0.1  # a commit of about 0.1 s: the next no sooner than 0.3 s after it
    commit.start()
    try:
        times = await commit_times(ws, commit, 3)
    finally:
        await commit.stop()
    for (_, end), (asked, done) in itertools.pairwise(times):
        assert done - end >= 0.3 + 0.1 - 0.02, times  # spacing, then the commit itself
        # ...and no later than a loaded machine explains: the waiting caller triggers it,
        # not the timer (5 s)
        assert done - end < 0.3 + 0.1 + 1.5, times
        assert asked - end < 1.0  # asked for at once: the wait was the spacing
    assert commit.commits == 3


async def test_min_interval_spaces_quick_commits(ws: Workspace) -> None:
    commit = ws.commit(min_interval=0.2, max_duty=0.25)
    commit.start()
    try:
        times = await commit_times(ws, commit, 2)
    finally:
        await commit.stop()
    assert times[1][1] - times[0][1] >= 0.2 - 0.02, times


async def test_dirty_storages_nobody_waits_for_are_committed_on_the_timer(ws: Workspace) -> None:
    """`timer` seconds after a storage became dirty, not at once after a quiet spell."""
    commit = ws.commit(timer=0.3)
    commit.start()
    try:
        await asyncio.sleep(0.4)  # quiet
        dirty_at = asyncio.get_running_loop().time()
        await ws.put(1)
        await asyncio.sleep(0.1)
        assert commit.commits == 0
        for _ in range(500):  # up to 10 s: a loaded machine may be late; never early
            if commit.commits:
                break
            await asyncio.sleep(0.02)
        assert asyncio.get_running_loop().time() - dirty_at >= 0.3 - 0.02
        assert commit.commits == 1 and ws.on_disk()["doc_status"] == {"doc": 1}
    finally:
        await commit.stop()


# --------------------------------------------------------------------------
# The gate: one instant
# --------------------------------------------------------------------------


async def test_a_commit_waits_for_a_running_mutation(ws: Workspace) -> None:
    commit = ws.commit()
    await ws.put(1)
    ws.text_chunks.mutation_gate = asyncio.Event()
    mutation = asyncio.create_task(ws.text_chunks.upsert({"doc": 2}))
    await asyncio.wait_for(ws.text_chunks.mutating.wait(), 1)
    committing = asyncio.create_task(commit.commit())
    await asyncio.sleep(0.05)
    assert not committing.done() and ws.log == []  # the mutation is half done: no snapshot now
    ws.text_chunks.mutation_gate.set()
    await asyncio.wait_for(asyncio.gather(mutation, committing), 1)
    assert ws.on_disk()["text_chunks"] == {"doc": 2}


async def test_new_mutations_wait_while_a_commit_writes(ws: Workspace) -> None:
    commit = ws.commit()
    await ws.put(1)
    ws.vdb.flush_gate = asyncio.Event()
    committing = asyncio.create_task(commit.commit())
    await asyncio.wait_for(ws.vdb.flushing.wait(), 1)  # full_docs and text_chunks written, vdb writing
    mutation = asyncio.create_task(ws.full_docs.upsert({"doc": 2}))
    await asyncio.sleep(0.05)
    assert not mutation.done() and ws.full_docs.data == {"doc": 1}
    ws.vdb.flush_gate.set()
    await asyncio.wait_for(asyncio.gather(committing, mutation), 1)
    assert ws.on_disk() == {key: {"doc": 1} for key in ws.on_disk()}  # the snapshot of one instant
    assert ws.full_docs.data == {"doc": 2}


class Buffered:
    """An upsert buffered in LightRAG's file vector storage, its vector unset until embedded."""

    def __init__(self, content: str) -> None:
        self.record = {"content": content}
        self.vector: object = None


async def test_a_commit_embeds_the_buffered_vectors_before_it_holds_mutations_back(ws: Workspace) -> None:
    commit = ws.commit()
    await ws.put(1)
    ws.vdb._pending_upserts = {"ent-a": Buffered("A"), "ent-b": Buffered("B")}  # type: ignore[attr-defined]
    embedding, answer = asyncio.Event(), asyncio.Event()

    async def embedding_func(texts: list[str], context: str) -> list[list[float]]:
        embedding.set()
        await answer.wait()
        return [[float(len(text))] for text in texts]

    ws.vdb.embedding_func = embedding_func  # type: ignore[attr-defined]
    committing = asyncio.create_task(commit.commit())
    await asyncio.wait_for(embedding.wait(), 1)
    await asyncio.wait_for(ws.full_docs.upsert({"doc": 2}), 0.5)  # not held back while the commit embeds
    answer.set()
    await asyncio.wait_for(committing, 1)
    assert [list(entry.vector) for entry in ws.vdb._pending_upserts.values()] == [[1.0], [1.0]]  # type: ignore[attr-defined]
    assert commit.embedded_ahead == 2
    assert ws.on_disk()["full_docs"] == {"doc": 2}  # the mutation made during the embedding is in the snapshot


async def test_a_nested_mutation_during_a_pending_commit_does_not_deadlock(ws: Workspace) -> None:
    """A mutation that calls another, and a task it starts, while a commit waits for it."""
    await ws.put(1)  # before the commit takes the storages over: written at once
    commit_pending = asyncio.Event()

    async def outer_upsert(data: dict[str, object]) -> None:
        await commit_pending.wait()
        await ws.graph.upsert_node("nested", {"x": 1})  # nested: must not wait behind the pending commit
        await asyncio.create_task(ws.vdb.upsert({"child": 1}))  # a task it starts: the same
        ws.full_docs.data.update(data)

    ws.full_docs.upsert = outer_upsert  # type: ignore[method-assign]
    commit = ws.commit()
    mutation = asyncio.create_task(ws.full_docs.upsert({"doc": 2}))
    await asyncio.sleep(0.01)
    committing = asyncio.create_task(commit.commit())
    await asyncio.sleep(0.01)
    assert not committing.done()  # the commit waits for the mutation
    commit_pending.set()
    await asyncio.wait_for(asyncio.gather(mutation, committing), 2)
    assert ws.on_disk()["graph"] == {"doc": 1, "nested": {"x": 1}}
    assert ws.on_disk()["vdb_chunks"] == {"doc": 1, "child": 1}


async def test_the_gate_prefers_a_waiting_writer_and_refuses_one_inside_a_reader() -> None:
    gate = RWGate()
    order: list[str] = []
    release = asyncio.Event()

    async def reader(name: str) -> None:
        async with gate.shared():
            order.append(name)
            await release.wait()

    async def writer() -> None:
        async with gate.exclusive():
            order.append("writer")

    first = asyncio.create_task(reader("r1"))
    await asyncio.sleep(0)
    writing = asyncio.create_task(writer())
    await asyncio.sleep(0)
    second = asyncio.create_task(reader("r2"))  # after the writer asked: waits behind it
    await asyncio.sleep(0.01)
    assert order == ["r1"]
    release.set()
    await asyncio.wait_for(asyncio.gather(first, writing, second), 1)
    assert order == ["r1", "writer", "r2"]
    async with gate.shared():
        with pytest.raises(RuntimeError):
            async with gate.exclusive():
                pass
    assert gate.readers == 0


# --------------------------------------------------------------------------
# A failed commit: rolled back on disk, written whole by the next
# --------------------------------------------------------------------------


def embedding_down() -> openai.APIConnectionError:
    return openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1/embeddings"))


async def test_a_failed_commit_is_rolled_back_on_disk_and_the_next_writes_it_all_again(ws: Workspace) -> None:
    commit = ws.commit()
    await ws.put(1)
    await commit.commit()
    before = ws.on_disk()
    await ws.put(2)
    ws.vdb.fail_with = embedding_down()  # full_docs and text_chunks are written before it
    with pytest.raises(CommitError) as raised:
        await commit.commit()
    assert raised.value.dependency == EMBEDDING
    assert ws.log[-2:] == ["full_docs", "text_chunks"]  # written, then...
    assert ws.on_disk() == before  # ...put back: all old
    assert ws.leftovers() == []
    assert ws.full_docs.storage_updated.value  # forced: its own write had cleared it
    ws.vdb.fail_with = None
    await commit.commit()
    assert ws.on_disk() == {key: {"doc": 2} for key in before}
    assert commit.commits == 2


async def test_a_failed_first_commit_removes_the_files_it_created(ws: Workspace) -> None:
    commit = ws.commit()
    await ws.put(1)
    ws.status.fail_with = OSError(5, "Input/output error")
    with pytest.raises(CommitError) as raised:
        await commit.commit()
    assert raised.value.dependency == STORAGE and "doc_status" in str(raised.value)
    assert ws.on_disk() == dict.fromkeys(ws.on_disk()) and ws.leftovers() == []


# --------------------------------------------------------------------------
# on_drop
# --------------------------------------------------------------------------


async def test_on_drop_is_awaited_before_the_next_commit(ws: Workspace) -> None:
    commit = ws.commit()
    seen: list[object] = []

    async def on_drop() -> None:
        seen.append(ws.on_disk()["doc_status"])
        await ws.status.upsert({"doc": "pending again"})

    commit.on_drop = on_drop
    await ws.put("processed")
    await ws.vdb.drop_pending_index_ops()
    assert ws.vdb.drops == 1 and commit.drops == 1 and seen == []
    await commit.commit()
    assert seen == [None]  # before the commit wrote anything
    assert ws.on_disk()["doc_status"] == {"doc": "pending again"}
    await ws.put("again")
    await commit.commit()
    assert len(seen) == 1


# --------------------------------------------------------------------------
# stop
# --------------------------------------------------------------------------


async def test_stop_commits_what_is_dirty_and_logs_a_failure(ws: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    commit = ws.commit(timer=60)
    commit.start()
    await ws.put(1)
    await commit.stop()
    assert ws.on_disk()["doc_status"] == {"doc": 1}
    commit.start()
    await ws.put(2)
    ws.graph.fail_with = OSError(28, "No space left on device")
    with caplog.at_level(logging.WARNING, "shield_orchestrator.lightrag"):
        await commit.stop()
    assert "not committed at stop" in caplog.text and "No space left" in caplog.text
    assert ws.on_disk()["doc_status"] == {"doc": 1}


# --------------------------------------------------------------------------
# The journal: a crash at every step, then recover()
# --------------------------------------------------------------------------

STEPS = ["links", "journal", "flush:1", "flush:3", "flush:5", "fsync", "commit-point", "cleanup"]
COMMITTED = {"commit-point", "cleanup"}


@pytest.mark.parametrize("existing", [True, False], ids=["rewrite", "first-commit"])
@pytest.mark.parametrize("step", STEPS)
async def test_a_crash_at_any_step_recovers_all_old_or_all_new_files(ws: Workspace, step: str, existing: bool) -> None:
    commit = ws.commit()
    if existing:
        await ws.put("old")
        await commit.commit()
    old = ws.on_disk()
    await ws.put("new")
    commit.fault = CommitFault(step)
    commit.fault.action = crash
    with pytest.raises(SimulatedCrash):
        await commit.commit()
    assert (ws.root / JOURNAL).exists() == (step not in COMMITTED | {"links"})
    recovered = recover(str(ws.root))
    expected = {key: {"doc": "new"} for key in old} if step in COMMITTED else old
    assert ws.on_disk() == expected
    assert ws.leftovers() == []
    # Nothing to do: after the cleanup, or with neither a journal nor a link left (no file existed before).
    if step == "cleanup" or (not existing and step in {"links", "commit-point"}):
        assert recovered is None
    else:
        assert recovered is not None and str(ws.root) in recovered
    assert recover(str(ws.root)) is None  # idempotent: nothing more to do


def test_a_fault_at_a_flush_no_commit_reaches_never_fires(ws: Workspace) -> None:
    fault = CommitFault("flush:9")
    fault.action = crash
    for step in ("links", "journal", *(f"flush:{k}" for k in range(1, 6)), "fsync"):
        fault.reached(step)


def test_an_unknown_step_is_refused(ws: Workspace) -> None:
    for step in ("flush:0", "flush", "commit", "links "):
        with pytest.raises(ValueError, match=faults.KILL_AT_ENV):
            ws.commit(fault=step)


async def test_the_fault_kills_its_own_process_with_sigkill_after_a_log_line(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    killed: list[tuple[int, int]] = []

    def kill(pid: int, sig: int) -> None:
        killed.append((pid, sig))
        raise SimulatedCrash

    monkeypatch.setattr(faults.os, "kill", kill)
    commit = ws.commit(fault="journal")
    await ws.put(1)
    with caplog.at_level(logging.WARNING, "shield_orchestrator.lightrag"), pytest.raises(SimulatedCrash):
        await commit.commit()
    assert killed == [(os.getpid(), signal.SIGKILL)]
    assert f"{faults.KILL_AT_ENV}=journal" in caplog.text
    assert (ws.root / JOURNAL).exists()


def test_recover_with_nothing_to_do_says_so(tmp_path: Path) -> None:
    assert recover(str(tmp_path / "absent")) is None
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "graph.graphml").write_text("graph")
    assert recover(str(tmp_path)) is None


def test_recover_removes_the_links_of_a_commit_past_its_commit_point(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    data = tmp_path / "ws" / "kv_store_full_docs.json"
    data.write_text("new")
    (tmp_path / "ws" / f"kv_store_full_docs.json{PREV}").write_text("old")
    said = recover(str(tmp_path))
    assert said is not None and "1 .shield-prev links" in said
    assert [p.name for p in (tmp_path / "ws").iterdir()] == [data.name] and data.read_text() == "new"


def test_recover_refuses_an_unreadable_journal(tmp_path: Path) -> None:
    (tmp_path / JOURNAL).write_text("{not json")
    with pytest.raises(JournalError):
        recover(str(tmp_path))
    assert (tmp_path / JOURNAL).exists()


def test_the_journal_names_its_files_relative_to_the_working_dir(ws: Workspace) -> None:
    undo = journal.UndoJournal(str(ws.root))
    ws.full_docs.path.write_text("old")
    undo.begin(7, [ws.full_docs._file_name, ws.graph._graphml_xml_file])
    content = json.loads((ws.root / JOURNAL).read_text())
    assert content == {
        "commit": 7,
        "files": [{"path": "ws/full_docs.json", "existed": True}, {"path": "ws/graph.json", "existed": False}],
    }
    assert os.path.samefile(ws.full_docs.path, str(ws.full_docs.path) + PREV)
