"""The continuous feeder: what it does with each document, from its status, and the
pipeline around it (window, admission, priority, per-document answers, duplicates,
stop), against a fake LightRAG whose pipeline takes documents while it runs."""

from __future__ import annotations

import asyncio
from typing import Any

from shield_orchestrator.lightrag.feeder import LightRAGFeeder, document_path, outcome_of, plan_admission
from shield_orchestrator.queue.tasks import ChunkTask
from shield_orchestrator.workers.breaker import DependencyGate
from shield_orchestrator.workers.faults import STORAGE, FaultKind


def task(index: int, source: str = "") -> ChunkTask:
    return ChunkTask(entry_id=f"1-{index}", job_id="j", index=index, text=f"text {index}", source_uri=source)


def test_plan_admission_by_status() -> None:
    tasks = [task(i) for i in range(5)]
    docs = {
        "chunk-j-0": {"status": "processed"},
        "chunk-j-1": {"status": "FAILED"},
        "chunk-j-2": {"status": "processing"},
        "chunk-j-3": {"status": "pending"},
    }
    plan = plan_admission(tasks, docs)
    assert plan.done == {"chunk-j-0": None}
    assert plan.reset == ["chunk-j-1"]
    assert plan.running == ["chunk-j-2", "chunk-j-3"]
    assert [t.doc_id for t in plan.insert] == ["chunk-j-4"]


def test_outcomes() -> None:
    assert outcome_of({"status": "processed"}, "d") is None
    failed = outcome_of({"status": "failed", "error_msg": "BadRequestError: Error code: 400"}, "d")
    assert failed is not None and failed.kind is FaultKind.CHUNK and failed.message.startswith("d: ")
    down = outcome_of({"status": "failed", "error_msg": "APIConnectionError: Connection error."}, "d")
    assert down is not None and down.transient
    still = outcome_of({"status": "processing"}, "d")
    assert still is not None and still.transient
    absent = outcome_of(None, "d")
    assert absent is not None and absent.kind is FaultKind.CHUNK


def test_every_chunk_gets_its_own_file_path() -> None:
    assert document_path(task(3, "s3://bucket/a b.txt")) == "chunk-j-3__s3%3A%2F%2Fbucket%2Fa%20b.txt"
    assert document_path(task(4)) == "chunk-j-4__inline"


Record = dict[str, Any]
_RECORD = {"content_summary": "text", "content_length": 4, "created_at": "t0", "updated_at": "t1", "file_path": "f"}


class _FakeDocStatus:
    def __init__(self, docs: dict[str, Record]) -> None:
        self.docs = docs
        self.upserts: list[dict[str, Record]] = []

    async def upsert(self, updates: dict[str, Record]) -> None:
        self.upserts.append(updates)
        for doc_id, row in updates.items():
            self.docs[doc_id] = {**self.docs.get(doc_id, {}), **row}

    async def get_doc_by_content_hash(self, content_hash: str, *, exclude_doc_id: str | None = None) -> Any:
        for doc_id, row in self.docs.items():
            if row.get("hash") == content_hash and doc_id != exclude_doc_id:
                return doc_id, row
        return None


class _FakeFullDocs:
    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    async def get_by_id(self, doc_id: str) -> dict[str, str] | None:
        text = self.texts.get(doc_id)
        return {"content": text} if text is not None else None


class _FakePipeline:
    """A LightRAG whose pipeline, once running, also takes the documents enqueued
    while it runs (as LightRAG's in-batch feeder does), each taking `seconds` of its
    own (by text), at most `parallel` at once; a text in `fail` ends FAILED."""

    def __init__(self, seconds: dict[str, float] | None = None, parallel: int = 100) -> None:
        self.doc_status = _FakeDocStatus({})
        self.full_docs = _FakeFullDocs()
        self.seconds = seconds or {}
        self.fail: set[str] = set()
        self.started: list[str] = []
        self.runs = 0
        self._slots = asyncio.Semaphore(parallel)
        self._new = asyncio.Event()

    async def aget_docs_by_ids(self, ids: list[str]) -> dict[str, Record]:
        await asyncio.sleep(0.005)  # a read takes time: documents may be flown meanwhile
        return {doc_id: dict(self.doc_status.docs[doc_id]) for doc_id in ids if doc_id in self.doc_status.docs}

    async def apipeline_enqueue_documents(
        self, input: list[str], ids: list[str], file_paths: list[str], track_id: str
    ) -> str:
        known = {row.get("hash") for row in self.doc_status.docs.values()}
        for text, doc_id in zip(input, ids, strict=True):
            if text in known:
                continue  # a content duplicate: no record of its own
            known.add(text)
            self.full_docs.texts[doc_id] = text
            self.doc_status.docs[doc_id] = {"status": "pending", "hash": text, **_RECORD}
        self._new.set()
        return track_id

    async def apipeline_process_enqueue_documents(self) -> None:
        self.runs += 1
        running: dict[str, asyncio.Task[None]] = {}
        while True:
            for doc_id, row in self.doc_status.docs.items():
                if row["status"] == "pending" and doc_id not in running:
                    running[doc_id] = asyncio.create_task(self._process(doc_id))
            left = [task for task in running.values() if not task.done()]
            if not left:
                return
            self._new.clear()
            waiter = asyncio.ensure_future(self._new.wait())
            await asyncio.wait([*left, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    async def _process(self, doc_id: str) -> None:
        async with self._slots:
            text = self.full_docs.texts[doc_id]
            self.started.append(text)
            await self.doc_status.upsert({doc_id: {"status": "processing"}})
            await asyncio.sleep(self.seconds.get(text, 0.01))
            if text in self.fail:
                await self.doc_status.upsert({doc_id: {"status": "failed", "error_msg": "Error code: 400"}})
            else:
                await self.doc_status.upsert({doc_id: {"status": "processed"}})

    def _build_pending_reset_update(self, doc: Any, content: dict[str, str]) -> tuple[Record, str, Record]:
        return {"status": "pending", "error_msg": ""}, "", {}


async def _always() -> bool:
    return True


class _FakeExtractor:
    """Extraction ahead of the pipeline taking `seconds` per text; records what it
    extracted and whether the document had entered LightRAG by then."""

    def __init__(self, rag: _FakePipeline, seconds: float = 0.05) -> None:
        self.rag = rag
        self.seconds = seconds
        self.extracted: list[str] = []
        self.entered_before: list[str] = []

    async def extract(self, text: str, doc_id: str) -> None:
        await asyncio.sleep(self.seconds)
        if text in self.rag.started:
            self.entered_before.append(text)
        if text.startswith("refused"):
            raise RuntimeError("Error code: 400 - lab stand-in: injected failure")
        if text.startswith("cache down"):
            raise ConnectionRefusedError(111, "Connect call failed ('10.0.0.5', 5432)")  # asyncpg, PostgreSQL down
        self.extracted.append(text)


def _feeder(
    rag: _FakePipeline,
    window: int = 4,
    ahead: int = 2,
    timeout: float = 60.0,
    lock: asyncio.Lock | None = None,
    extractor: _FakeExtractor | None = None,
    duplicates: _Ledger | None = None,
) -> LightRAGFeeder:
    return LightRAGFeeder(
        rag,  # type: ignore[arg-type]
        lock or asyncio.Lock(),
        DependencyGate(lambda _change: None),
        str,
        _always,
        task_timeout=timeout,
        window=window,
        ahead=ahead,
        urgent=lambda t: t.stream == "high",
        extractor=extractor,  # type: ignore[arg-type]
        duplicates=duplicates,
    )


def text_task(index: int, text: str, job: str = "j", stream: str = "") -> ChunkTask:
    return ChunkTask(entry_id=f"1-{index}", job_id=job, index=index, text=text, stream=stream)


def test_each_document_is_answered_when_it_ends_not_when_the_others_do() -> None:
    async def scenario() -> None:
        rag = _FakePipeline({"slow": 1.0})
        feeder = _feeder(rag)
        feeder.start()
        futures = feeder.submit([text_task(0, "slow"), text_task(1, "fast a"), text_task(2, "fast b")])
        done, _ = await asyncio.wait(futures.values(), timeout=0.6)
        assert {futures["chunk-j-1"], futures["chunk-j-2"]} == done  # answered while "slow" runs
        assert futures["chunk-j-1"].result() is None
        assert await futures["chunk-j-0"] is None
        await feeder.stop()

    asyncio.run(scenario())


def test_the_window_bounds_what_is_in_lightrag_and_what_workers_may_read() -> None:
    async def scenario() -> None:
        rag = _FakePipeline({f"t{i}": 0.2 for i in range(10)})
        feeder = _feeder(rag, window=3, ahead=1)
        feeder.start()
        stopping = asyncio.Event()
        assert await feeder.reserve(10, stopping) == 4  # window 3 + read-ahead 1
        futures = feeder.submit([text_task(i, f"t{i}") for i in range(4)], reserved=4)
        await asyncio.sleep(0.1)
        assert feeder.in_flight == 3 and len(rag.started) == 3
        waiting = asyncio.ensure_future(feeder.reserve(10, stopping))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # no room until a document ends
        more = await waiting
        assert more == 3  # three documents ended: their places, and no more (the fourth is in LightRAG)
        feeder.release(more)
        await asyncio.wait(futures.values())
        assert all(future.result() is None for future in futures.values())
        stopping.set()
        assert await feeder.reserve(1, stopping) == 0
        await feeder.stop()

    asyncio.run(scenario())


def test_a_cancelled_jobs_chunks_never_enter_lightrag() -> None:
    async def refuse_job_c(job_id: str, indexes: Any) -> bool:
        return job_id != "c"

    async def scenario() -> None:
        rag = _FakePipeline()
        feeder = _feeder(rag)
        feeder.start()
        futures = feeder.submit([text_task(0, "kept"), text_task(1, "dropped", job="c")], refuse_job_c)
        kept, dropped = await futures["chunk-j-0"], await futures["chunk-c-1"]
        assert kept is None
        assert dropped is not None and dropped.kind is FaultKind.CANCELLED
        assert rag.started == ["kept"]
        await feeder.stop()

    asyncio.run(scenario())


def test_a_high_priority_chunk_starts_ahead_of_the_queued_backlog() -> None:
    async def scenario() -> None:
        rag = _FakePipeline({f"b{i}": 0.1 for i in range(8)})
        feeder = _feeder(rag, window=2)
        feeder.start()
        backlog = feeder.submit([text_task(i, f"b{i}") for i in range(8)])
        await asyncio.sleep(0.02)
        urgent = feeder.submit([text_task(99, "urgent", job="u", stream="high")])
        await urgent["chunk-u-99"]
        assert rag.started.index("urgent") <= 3  # behind the window already running, ahead of the rest
        await asyncio.wait(backlog.values())
        await feeder.stop()

    asyncio.run(scenario())


def test_failed_then_retried_and_content_duplicates_answered_through_their_holder() -> None:
    async def scenario() -> None:
        rag = _FakePipeline()
        rag.fail.add("bad")
        feeder = _feeder(rag)
        feeder.start()
        first = feeder.submit([text_task(0, "bad"), text_task(1, "same")])
        failed = await first["chunk-j-0"]
        assert failed is not None and failed.kind is FaultKind.CHUNK and "Error code: 400" in failed.message
        assert await first["chunk-j-1"] is None
        duplicate = feeder.submit([text_task(2, "same")])
        assert await duplicate["chunk-j-2"] is None  # LightRAG holds the text under chunk-j-1
        rag.fail.clear()
        again = feeder.submit([text_task(0, "bad")])
        assert await again["chunk-j-0"] is None  # FAILED went back to PENDING and ran again
        assert rag.started.count("bad") == 2
        await feeder.stop()

    asyncio.run(scenario())


class _Ledger:
    """Records content duplicates as JobLedger does; `down` makes the next record fail (Redis)."""

    def __init__(self) -> None:
        self.recorded: dict[str, dict[int, str]] = {}
        self.down = False

    async def record_duplicates(self, job_id: str, holders: Any) -> None:
        if self.down:
            raise ConnectionError("Redis is down")
        self.recorded.setdefault(job_id, {}).update(holders)


def test_content_duplicates_are_recorded_with_their_holder_before_they_are_answered() -> None:
    async def scenario() -> None:
        rag, ledger = _FakePipeline(), _Ledger()
        feeder = _feeder(rag, duplicates=ledger)
        feeder.start()
        assert await feeder.submit([text_task(1, "same")])["chunk-j-1"] is None
        assert ledger.recorded == {}  # the first holder of a text is no duplicate
        second = feeder.submit([text_task(2, "same"), text_task(3, "other", job="k"), text_task(4, "same", job="k")])
        assert [await second[doc] for doc in ("chunk-j-2", "chunk-k-3", "chunk-k-4")] == [None, None, None]
        assert ledger.recorded == {"j": {2: "chunk-j-1"}, "k": {4: "chunk-j-1"}}
        ledger.down = True
        failed = await feeder.submit([text_task(5, "same")])["chunk-j-5"]
        assert failed is not None and failed.kind is FaultKind.TRANSIENT and failed.dependency is None
        assert "content duplicates not recorded" in failed.message and "Redis is down" in failed.message
        ledger.down = False  # the chunk comes back: found a duplicate again, recorded then
        assert await feeder.submit([text_task(5, "same")])["chunk-j-5"] is None
        assert ledger.recorded["j"] == {2: "chunk-j-1", 5: "chunk-j-1"}
        await feeder.stop()

    asyncio.run(scenario())


def test_a_document_that_outlasts_the_task_timeout_is_answered_and_runs_on() -> None:
    async def scenario() -> None:
        rag = _FakePipeline({"stuck": 2.0})
        feeder = _feeder(rag, timeout=0.3)
        feeder.start()
        outcome = await asyncio.wait_for(feeder.submit([text_task(0, "stuck")])["chunk-j-0"], 2.0)
        assert outcome is not None and outcome.kind is FaultKind.CHUNK and "timed out" in outcome.message
        await feeder.stop()

    asyncio.run(scenario())


def test_begin_stop_answers_what_has_not_started_and_lets_the_rest_finish() -> None:
    async def scenario() -> None:
        rag = _FakePipeline({f"t{i}": 0.3 for i in range(6)})
        feeder = _feeder(rag, window=2)
        feeder.start()
        futures = feeder.submit([text_task(i, f"t{i}") for i in range(6)])
        await asyncio.sleep(0.05)
        feeder.begin_stop()
        queued = [futures[f"chunk-j-{i}"] for i in range(2, 6)]
        assert all(f.done() and f.result() is not None and f.result().transient for f in queued)
        assert await futures["chunk-j-0"] is None and await futures["chunk-j-1"] is None
        assert sorted(rag.started) == ["t0", "t1"]
        await feeder.stop()

    asyncio.run(scenario())


def test_quiesced_waits_for_what_is_in_flight_and_holds_the_rest_back() -> None:
    async def scenario() -> None:
        rag = _FakePipeline({"a": 0.3, "b": 0.01})
        feeder = _feeder(rag)
        feeder.start()
        first = feeder.submit([text_task(0, "a")])
        await asyncio.sleep(0.05)
        async with feeder.quiesced():
            assert first["chunk-j-0"].done() and feeder.in_flight == 0
            later = feeder.submit([text_task(1, "b")])
            await asyncio.sleep(0.1)
            assert not later["chunk-j-1"].done() and "b" not in rag.started
        assert await later["chunk-j-1"] is None
        await feeder.stop()

    asyncio.run(scenario())


class _ContendedLock:
    """A workspace lock another host always waits for; it records each take and release."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def __aenter__(self) -> None:
        self.events.append("take")

    async def __aexit__(self, *exc: object) -> None:
        self.events.append("release")

    async def contended(self) -> bool:
        return True


def test_a_contended_session_drains_lets_the_lock_go_and_takes_it_again(monkeypatch: Any) -> None:
    import shield_orchestrator.lightrag.feeder as feeder_module

    monkeypatch.setattr(feeder_module, "SESSION_SECONDS", 0.15)

    async def scenario() -> None:
        rag = _FakePipeline({f"t{i}": 0.1 for i in range(8)})
        lock = _ContendedLock()
        feeder = LightRAGFeeder(
            rag,  # type: ignore[arg-type]
            lock,  # type: ignore[arg-type]
            DependencyGate(lambda _change: None),
            str,
            _always,
            task_timeout=60,
            window=2,
            ahead=1,
        )
        feeder.start()
        futures = feeder.submit([text_task(i, f"t{i}") for i in range(8)])
        await asyncio.wait(futures.values(), timeout=10)
        assert all(future.done() and future.result() is None for future in futures.values())
        await feeder.stop()
        takes = lock.events.count("take")
        assert takes >= 2, lock.events  # let go at least once mid-way, taken again
        assert lock.events == ["take", "release"] * takes  # never held twice, never released unheld

    asyncio.run(scenario())


def test_extraction_runs_ahead_while_another_holds_the_lock_and_before_each_document_enters() -> None:
    async def scenario() -> None:
        rag = _FakePipeline({f"t{i}": 0.02 for i in range(6)})
        lock = asyncio.Lock()
        extractor = _FakeExtractor(rag)
        feeder = _feeder(rag, window=4, ahead=4, lock=lock, extractor=extractor)
        feeder.start()
        await lock.acquire()  # another host's session
        futures = feeder.submit([text_task(i, f"t{i}") for i in range(6)])
        await asyncio.sleep(0.3)
        assert sorted(extractor.extracted) == [f"t{i}" for i in range(6)]  # a window at a time, none waiting
        assert rag.started == [] and feeder.in_flight == 0 and feeder.held == 6  # waiting for the lock
        lock.release()
        assert await _none(futures)
        assert sorted(rag.started) == sorted(extractor.extracted) and extractor.entered_before == []
        await feeder.stop()

    asyncio.run(scenario())


async def _none(futures: dict[str, asyncio.Future[Any]]) -> bool:
    """Whether every future ended done (None)."""
    return all(result is None for result in await asyncio.gather(*futures.values()))


def test_a_cancelled_jobs_chunks_are_not_extracted_and_a_stop_answers_those_being_extracted() -> None:
    async def refuse_job_c(job_id: str, indexes: Any) -> bool:
        return job_id != "c"

    async def scenario() -> None:
        rag = _FakePipeline()
        extractor = _FakeExtractor(rag, seconds=0.3)
        feeder = _feeder(rag, window=2, extractor=extractor)
        feeder.start()
        dropped = feeder.submit([text_task(0, "dropped", job="c")], refuse_job_c)
        assert (await dropped["chunk-c-0"]).kind is FaultKind.CANCELLED  # type: ignore[union-attr]
        futures = feeder.submit([text_task(i, f"t{i}") for i in range(1, 4)])
        await asyncio.sleep(0.1)
        assert feeder.extracting == 2
        feeder.begin_stop()
        outcomes = [future.result() for future in futures.values()]
        assert all(outcome is not None and outcome.transient for outcome in outcomes)
        await feeder.stop()
        assert extractor.extracted == [] and rag.started == []

    asyncio.run(scenario())


def test_a_failed_extraction_ahead_answers_the_chunk_and_keeps_it_out_of_lightrag() -> None:
    async def scenario() -> None:
        rag = _FakePipeline()
        feeder = _feeder(rag, extractor=_FakeExtractor(rag))
        feeder.start()
        futures = feeder.submit([text_task(0, "refused text"), text_task(1, "fine")])
        refused, fine = await futures["chunk-j-0"], await futures["chunk-j-1"]
        assert refused is not None and refused.kind is FaultKind.CHUNK and "injected failure" in refused.message
        assert fine is None and rag.started == ["fine"]
        await feeder.stop()

    asyncio.run(scenario())


def test_an_extraction_ahead_failed_by_its_cache_storage_is_blamed_on_the_storage() -> None:
    async def scenario() -> None:
        rag = _FakePipeline()
        feeder = _feeder(rag, extractor=_FakeExtractor(rag))
        feeder.start()
        failure = await feeder.submit([text_task(0, "cache down")])["chunk-j-0"]
        assert failure is not None and failure.transient and failure.dependency == STORAGE, failure
        assert rag.started == []
        await feeder.stop()

    asyncio.run(scenario())
