"""One commit per LightRAG round on the file storages: during a round the
storages' flushes are noted, not done; at its end every data storage is
flushed, then the statuses, last; a failed commit is retried before the next
round runs, and names what to blame."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from shield_orchestrator.lightrag.commit.round import CommitError, RoundCommit
from shield_orchestrator.workers.faults import EMBEDDING, STORAGE


class Storage:
    """A storage that records, in a shared log, each flush it really does."""

    def __init__(self, namespace: str, log: list[str]) -> None:
        self.namespace = namespace
        self.log = log
        self.fail_with: BaseException | None = None
        self.drops = 0

    async def index_done_callback(self) -> None:
        await asyncio.sleep(0.001)
        if self.fail_with is not None:
            raise self.fail_with
        self.log.append(self.namespace)

    async def drop_pending_index_ops(self) -> None:
        self.drops += 1


def storages() -> tuple[list[str], list[Storage], Storage]:
    log: list[str] = []
    status = Storage("doc_status", log)
    data = [Storage(name, log) for name in ("full_docs", "text_chunks", "entities_vdb", "graph")]
    return log, [data[0], status, *data[1:]], status


def test_flushes_during_a_round_wait_for_its_end_and_the_statuses_come_last() -> None:
    log, all_storages, status = storages()
    commit = RoundCommit(all_storages, status)

    async def scenario() -> list[str]:
        async with commit.round():
            for _ in range(3):  # three documents, each flushing everything and its status
                for storage in all_storages:
                    await storage.index_done_callback()
                await status.index_done_callback()
            during = list(log)
        assert during == []
        return during

    asyncio.run(scenario())
    assert commit.deferred == 3 * (len(all_storages) + 1)
    assert commit.commits == 1
    assert sorted(log[:-1]) == ["entities_vdb", "full_docs", "graph", "text_chunks"]
    assert log[-1] == "doc_status"


def test_outside_a_round_a_flush_is_done_at_once() -> None:
    log, all_storages, status = storages()
    RoundCommit(all_storages, status)
    asyncio.run(status.index_done_callback())
    assert log == ["doc_status"]


def test_a_round_that_flushed_nothing_commits_nothing() -> None:
    log, all_storages, status = storages()
    commit = RoundCommit(all_storages, status)

    async def scenario() -> None:
        async with commit.round():
            pass

    asyncio.run(scenario())
    assert log == [] and commit.commits == 0


def test_a_round_that_raises_is_not_committed_and_the_next_one_commits_it_first() -> None:
    log, all_storages, status = storages()
    commit = RoundCommit(all_storages, status)

    async def failing_round() -> None:
        async with commit.round():
            await status.index_done_callback()
            raise RuntimeError("the pipeline failed")

    with pytest.raises(RuntimeError):
        asyncio.run(failing_round())
    assert log == []

    async def next_round() -> list[str]:
        async with commit.round():
            before = list(log)  # the earlier round's state went to disk before this one ran
        return before

    before = asyncio.run(next_round())
    assert before[-1] == "doc_status" and len(before) == len(all_storages)
    assert commit.commits == 1


def test_a_failed_data_flush_keeps_the_statuses_off_disk_and_blames_the_storage() -> None:
    log, all_storages, status = storages()
    commit = RoundCommit(all_storages, status)
    all_storages[2].fail_with = OSError(28, "No space left on device")

    async def scenario() -> None:
        async with commit.round():
            await status.index_done_callback()

    with pytest.raises(CommitError) as raised:
        asyncio.run(scenario())
    assert raised.value.dependency == STORAGE
    assert "text_chunks" in str(raised.value) and "No space left on device" in str(raised.value)
    assert "doc_status" not in log

    all_storages[2].fail_with = None  # the disk has room again: the retry commits it
    asyncio.run(commit.commit())
    assert log[-1] == "doc_status" and commit.commits == 1


def test_an_embedding_failure_in_a_vector_flush_blames_the_embedding_endpoint() -> None:
    log, all_storages, status = storages()
    commit = RoundCommit(all_storages, status)
    all_storages[3].fail_with = openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1/embeddings"))

    async def scenario() -> None:
        async with commit.round():
            await all_storages[3].index_done_callback()

    with pytest.raises(CommitError) as raised:
        asyncio.run(scenario())
    assert raised.value.dependency == EMBEDDING
    assert "doc_status" not in log


def test_a_dropped_buffer_during_a_round_is_reported() -> None:
    _log, all_storages, status = storages()
    commit = RoundCommit(all_storages, status)

    async def scenario() -> bool:
        async with commit.round():
            await all_storages[3].drop_pending_index_ops()
            return commit.dropped

    assert asyncio.run(scenario()) is True
    assert all_storages[3].drops == 1

    async def clean_round() -> bool:
        async with commit.round():
            return commit.dropped

    assert asyncio.run(clean_round()) is False
