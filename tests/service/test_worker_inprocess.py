"""The worker and the outcome settler in process, on a real Redis (as arq's and
SAQ's tests/test_worker.py run theirs): settle, retry, dead letter, malformed and
vanished entries, cancel, a dependency's failure, max_deliveries, stop, reclaim.

The processor is scripted (tests/support/inprocess.py); the stream, the job
tracker, the settler, the events and the metrics are the service's own. Each
test reads back what Redis holds: the pending entries (XPENDING), the streams'
length (an acked entry is deleted), the dead letters, the job's hash, the
metrics and the events published.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from shield_orchestrator.jobs.tracker import ChunkOutcome
from shield_orchestrator.queue.liveness import Heartbeats, Reclaimer, WorkerState
from shield_orchestrator.workers.faults import LLM, chunk_fault, transient
from shield_orchestrator.workers.worker import WorkerExit

from tests.support.inprocess import HOST, Rig, ScriptedPipeline, ScriptedProcessor, crashed, stopped, until

MakeRig = Callable[..., Awaitable[Rig]]


def outcome_counters(**counts: int) -> dict[str, float]:
    """The metrics' outcome counters: those named, every other one 0."""
    base = {"processed": 0, "failed": 0, "retried": 0, "dead_lettered": 0, "deferred": 0, "skipped": 0}
    return {name: float(value) for name, value in {**base, **counts}.items()}


def progress(job_id: str, consumer: str, done: tuple[int, int, int], percent: float) -> dict[str, Any]:
    """A progress (or completed/failed) event's data; `done` is (processed, failed, total)."""
    processed, failed, total = done
    return {
        "job_id": job_id,
        "chunks_processed": processed,
        "chunks_failed": failed,
        "chunks_total": total,
        "percent_complete": percent,
        "worker_id": consumer,
    }


def queued(job_id: str, chunks: int) -> tuple[str, dict[str, Any]]:
    return (
        "ingestion.queued",
        {"job_id": job_id, "job_type": "ingest:text", "chunks_total": chunks, "priority": "normal"},
    )


def started(job_id: str, consumer: str) -> tuple[str, dict[str, Any]]:
    return ("ingestion.started", {"job_id": job_id, "worker_id": consumer})


def task_failed(job_id: str, consumer: str, index: int, attempt: int, error: str) -> tuple[str, dict[str, Any]]:
    data = {"worker_id": consumer, "job_id": job_id, "chunk_index": index}
    return ("worker.task_failed", {**data, "attempt": attempt, "max_attempts": 3, "error": error})


# --- settle -------------------------------------------------------------------------------
async def test_a_processed_batch_is_counted_and_acked_and_the_last_chunk_completes_the_job(make_rig: MakeRig) -> None:
    rig = await make_rig(batch_size=2)
    job = await rig.submit(3)
    processor = ScriptedProcessor()
    worker = rig.worker(processor)
    me = worker.consumer

    first = await rig.deliver(me)
    assert rig.pending() == {me: rig.ids(first)}
    await worker.handle(first, delivered_before=False)
    assert rig.job(job) == ("processing", 2, 0, 3)
    assert rig.done(job) == {0, 1}
    assert rig.pending() == {}
    assert rig.depth() == 1
    assert rig.jobs_finished == 0

    second = await rig.deliver(me)
    await worker.handle(second, delivered_before=False)
    assert rig.job(job) == ("completed", 3, 0, 3)
    assert rig.done(job) == {0, 1, 2}
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.dead_letters() == []
    assert processor.seen == [[0, 1], [2]]
    assert worker.tasks_done == 3
    assert rig.jobs_finished == 1
    assert rig.counters() == outcome_counters(processed=3)
    assert await rig.events(job) == [
        queued(job, 3),
        started(job, me),
        ("ingestion.progress", progress(job, me, (2, 0, 3), 66.7)),
        ("ingestion.progress", progress(job, me, (3, 0, 3), 100.0)),
        ("ingestion.completed", progress(job, me, (3, 0, 3), 100.0)),
    ]


async def test_a_redelivered_chunk_that_was_counted_is_not_counted_again(rig: Rig) -> None:
    job = await rig.submit(2)
    processor = ScriptedProcessor()
    worker = rig.worker(processor)
    me = worker.consumer
    entries = await rig.deliver(me)
    # A worker died after its pipeline counted chunk 0 and before the ack of it ran.
    await rig.tracker.mark_started(job)
    await rig.tracker.record(job, [ChunkOutcome(0, True)])
    assert rig.job(job) == ("processing", 1, 0, 2)

    again = await rig.stream.read_own_pending(me, 10)
    assert rig.ids(again) == rig.ids(entries)
    await worker.handle(again, delivered_before=True)

    assert processor.seen == [[0, 1]]
    assert rig.job(job) == ("completed", 2, 0, 2)
    assert rig.done(job) == {0, 1}
    assert rig.pending() == {}
    assert rig.depth() == 0
    # The metric counts what the processor did; the job counts each chunk once.
    assert rig.counters() == outcome_counters(processed=2)
    assert await rig.events(job) == [
        queued(job, 2),
        ("ingestion.progress", progress(job, me, (2, 0, 2), 100.0)),
        ("ingestion.completed", progress(job, me, (2, 0, 2), 100.0)),
    ]


# --- retry and dead letter --------------------------------------------------------------------
async def test_a_chunk_failing_once_is_retried_after_the_backoff_and_succeeds(rig: Rig) -> None:
    job = await rig.submit(2)
    error = "the model could not parse chunk 1"
    processor = ScriptedProcessor(failures={1: [chunk_fault(error)]})
    worker = rig.worker(processor)
    me = worker.consumer

    await worker.handle(await rig.deliver(me), delivered_before=False)

    assert processor.seen == [[0, 1], [1]]
    assert processor.times[1] - processor.times[0] >= rig.settings.retry_backoff_seconds
    assert rig.job(job) == ("completed", 2, 0, 2)
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.dead_letters() == []
    assert rig.counters() == outcome_counters(processed=2, retried=1)
    assert await rig.events(job) == [
        queued(job, 2),
        started(job, me),
        ("ingestion.progress", progress(job, me, (1, 0, 2), 50.0)),
        task_failed(job, me, 1, 1, error),
        ("ingestion.progress", progress(job, me, (2, 0, 2), 100.0)),
        ("ingestion.completed", progress(job, me, (2, 0, 2), 100.0)),
    ]


async def test_a_chunk_failing_every_attempt_is_dead_lettered_and_fails_its_job(rig: Rig) -> None:
    job = await rig.submit(2)
    processor = ScriptedProcessor(failures={0: [chunk_fault("bad chunk")] * 3})
    worker = rig.worker(processor)
    me = worker.consumer
    entries = await rig.deliver(me)

    await worker.handle(entries, delivered_before=False)

    assert processor.seen == [[0, 1], [0], [0]]
    backoff = rig.settings.retry_backoff_seconds
    assert processor.times[1] - processor.times[0] >= backoff
    assert processor.times[2] - processor.times[1] >= 2 * backoff
    assert rig.job(job) == ("failed", 1, 1, 2)
    assert rig.job_field(job, "error_message") == "1 of 2 chunks failed; first error: bad chunk"
    assert rig.done(job) == {0, 1}
    assert rig.pending() == {}
    assert rig.depth() == 0
    [letter] = rig.dead_letters()
    assert letter == {
        "job_id": job,
        "index": "0",
        "text": "chunk 0",
        "source_uri": "",
        "source_type": "text",
        "metadata": "{}",
        "original_id": entries[0][1],
        "original_stream": rig.keys.stream,
        "error": "bad chunk",
        "attempts": "3",
        "consumer": me,
        "dead_lettered_at": letter["dead_lettered_at"],
    }
    assert letter["dead_lettered_at"]
    assert rig.counters() == outcome_counters(processed=1, failed=1, retried=2, dead_lettered=1)
    assert rig.jobs_finished == 1
    assert await rig.events(job) == [
        queued(job, 2),
        started(job, me),
        ("ingestion.progress", progress(job, me, (1, 0, 2), 50.0)),
        task_failed(job, me, 0, 1, "bad chunk"),
        task_failed(job, me, 0, 2, "bad chunk"),
        task_failed(job, me, 0, 3, "bad chunk"),
        ("ingestion.progress", progress(job, me, (1, 1, 2), 100.0)),
        ("ingestion.failed", progress(job, me, (1, 1, 2), 100.0)),
    ]


async def test_a_processor_that_raises_spends_the_attempts_of_its_whole_batch(make_rig: MakeRig) -> None:
    rig = await make_rig(retry_attempts=2)
    job = await rig.submit(2)
    processor = ScriptedProcessor(raises=ValueError("no such model"))
    worker = rig.worker(processor)

    await worker.handle(await rig.deliver(worker.consumer), delivered_before=False)

    assert processor.seen == [[0, 1], [0, 1]]
    assert rig.job(job) == ("failed", 0, 2, 2)
    letters = rig.dead_letters()
    assert [(d["index"], d["error"], d["attempts"]) for d in letters] == [
        ("0", "ValueError: no such model", "2"),
        ("1", "ValueError: no such model", "2"),
    ]
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.counters() == outcome_counters(failed=2, retried=2, dead_lettered=2)


# --- entries that are no chunk, or no longer there ------------------------------------------
async def test_a_malformed_entry_is_dead_lettered_at_once(rig: Rig) -> None:
    entry_id = rig.r.xadd(rig.keys.stream, {"job_id": "no-such-job", "text": "no index"})
    processor = ScriptedProcessor()
    worker = rig.worker(processor)
    me = worker.consumer

    await worker.handle(await rig.deliver(me), delivered_before=False)

    assert processor.batches == []
    assert rig.pending() == {}
    assert rig.depth() == 0
    [letter] = rig.dead_letters()
    assert letter == {
        "job_id": "no-such-job",
        "text": "no index",
        "original_id": entry_id,
        "original_stream": rig.keys.stream,
        "error": f"stream entry {entry_id} is not a chunk task: KeyError('index')",
        "attempts": "0",
        "consumer": me,
        "dead_lettered_at": letter["dead_lettered_at"],
    }
    assert rig.counters() == outcome_counters(failed=1, dead_lettered=1)


async def test_an_entry_deleted_while_pending_is_acked_and_the_rest_processed(rig: Rig) -> None:
    job = await rig.submit(2)
    processor = ScriptedProcessor()
    worker = rig.worker(processor)
    me = worker.consumer
    gone, kept = rig.ids(await rig.deliver(me))
    rig.r.xdel(rig.keys.stream, gone)

    again = await rig.stream.read_own_pending(me, 10)
    assert [(entry_id, fields is None) for _stream, entry_id, fields in again] == [(gone, True), (kept, False)]
    await worker.handle(again, delivered_before=True)

    assert processor.seen == [[1]]
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.dead_letters() == []
    assert rig.job(job) == ("processing", 1, 0, 2)
    assert rig.counters() == outcome_counters(processed=1)


# --- cancel -----------------------------------------------------------------------------------
async def test_chunks_of_a_cancelled_job_are_acked_without_being_processed(rig: Rig) -> None:
    cancelled = await rig.submit(2)
    live = await rig.submit(1)
    assert (await rig.tracker.cancel(cancelled)).outcome == 1
    processor = ScriptedProcessor()
    worker = rig.worker(processor)
    me = worker.consumer
    entries = await rig.deliver(me)
    assert len(entries) == 3

    await worker.handle(entries, delivered_before=False)

    assert processor.batches == [[(live, 0)]]
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.dead_letters() == []
    assert rig.job(cancelled) == ("cancelled", 0, 0, 2)
    assert rig.done(cancelled) == set()
    assert rig.job(live) == ("completed", 1, 0, 1)
    assert rig.counters() == outcome_counters(processed=1, skipped=2)
    assert await rig.events(cancelled) == [queued(cancelled, 2)]


# --- a dependency's failure ---------------------------------------------------------------------
async def test_a_dependency_failure_spends_no_attempt_and_holds_the_chunk_until_the_gate_closes(rig: Rig) -> None:
    rig.llm_answers = False
    job = await rig.submit(2)
    refused = "APIConnectionError: Connection error."
    processor = ScriptedProcessor(failures={0: [transient(refused, LLM)]})
    worker = rig.worker(processor)
    me = worker.consumer
    entries = await rig.deliver(me)
    first = entries[0][1]
    rig.spawn(rig.gate.run(rig.stopping))
    handling = rig.spawn(worker.handle(entries, delivered_before=False))

    await until(lambda: worker.state == "paused", "the worker paused on the LLM endpoint")
    await until(lambda: rig.gate.open_breakers()[0].probes >= 2, "two probes of the LLM endpoint")
    assert rig.gate.paused
    assert processor.seen == [[0, 1]]
    assert rig.pending() == {me: [first]}
    assert rig.depth() == 1
    assert rig.job(job) == ("processing", 1, 0, 2)
    assert rig.counters() == outcome_counters(processed=1, deferred=1)
    assert rig.metric("shield_pool_paused", dependency=LLM) == 1
    assert rig.metric("shield_pool_pauses_total", dependency=LLM) == 1

    rig.llm_answers = True
    await asyncio.wait_for(handling, 5)

    assert not rig.gate.paused
    assert processor.seen == [[0, 1], [0]]
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.dead_letters() == []
    assert rig.job(job) == ("completed", 2, 0, 2)
    assert rig.counters() == outcome_counters(processed=2, deferred=1)
    assert rig.metric("shield_pool_paused", dependency=LLM) == 0
    events = await rig.events()
    assert [kind for kind, _data in events] == [
        "ingestion.queued",
        "ingestion.started",
        "ingestion.progress",
        "worker_pool.paused",
        "worker_pool.resumed",
        "ingestion.progress",
        "ingestion.completed",
    ]
    paused = events[3][1]
    assert (paused["host"], paused["dependency"], paused["reason"]) == (HOST, LLM, refused)


# --- max_deliveries -------------------------------------------------------------------------------
async def test_an_entry_delivered_more_than_max_deliveries_times_is_dead_lettered_untried(make_rig: MakeRig) -> None:
    rig = await make_rig(max_deliveries=2)
    job = await rig.submit(1)
    processor = ScriptedProcessor(hold=asyncio.Event())  # never released: each run dies in the batch
    for _run in range(2):
        processor.entered.clear()
        dying = rig.spawn(rig.worker(processor).run())
        await asyncio.wait_for(processor.entered.wait(), 5)
        await crashed(dying)
    [entry_id] = rig.pending()[rig.consumer()]
    assert rig.deliveries() == {entry_id: 2}

    worker = rig.worker(processor)
    running = rig.spawn(worker.run())
    await until(rig.dead_letters, "the entry dead-lettered")
    assert await stopped(running, rig.stopping) == WorkerExit.STOPPED

    assert processor.seen == [[0], [0]]
    [letter] = rig.dead_letters()
    assert (letter["original_id"], letter["attempts"], letter["consumer"]) == (entry_id, "0", worker.consumer)
    assert letter["error"] == "delivered more than 2 times without finishing (its process died processing it)"
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.job(job) == ("failed", 0, 1, 1)
    assert rig.counters() == outcome_counters(failed=1, dead_lettered=1)


# --- stop ---------------------------------------------------------------------------------------
async def test_a_stop_during_the_backoff_leaves_the_unfinished_chunk_pending_for_the_next_run(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(retry_backoff_seconds=30)
    job = await rig.submit(3)
    processor = ScriptedProcessor(failures={2: [chunk_fault("flaky")]})
    worker = rig.worker(processor)
    me = worker.consumer
    running = rig.spawn(worker.run())
    await until(lambda: rig.counters()["retried"] == 1, "chunk 2 waiting for its retry")

    assert await stopped(running, rig.stopping) == WorkerExit.STOPPED  # without sitting out the 30 s

    assert processor.seen == [[0, 1, 2]]
    [entry_id] = rig.pending()[me]
    assert rig.pending() == {me: [entry_id]}
    assert rig.depth() == 1
    assert rig.job(job) == ("processing", 2, 0, 3)
    assert rig.done(job) == {0, 1}
    assert rig.dead_letters() == []
    assert rig.counters() == outcome_counters(processed=2, retried=1)

    rig.stopping = asyncio.Event()  # the next run of the process
    running = rig.spawn(rig.worker(processor).run())
    await until(lambda: rig.job(job)[0] == "completed", "the job completed by the next run")
    assert await stopped(running, rig.stopping) == WorkerExit.STOPPED
    assert processor.seen == [[0, 1, 2], [2]]
    assert rig.job(job) == ("completed", 3, 0, 3)
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.counters() == outcome_counters(processed=3, retried=1)


async def test_a_pool_stopped_mid_batch_leaves_it_pending_and_the_next_pool_resumes_it(rig: Rig) -> None:
    job = await rig.submit(2)
    ids = [entry_id for entry_id, _fields in rig.r.xrange(rig.keys.stream)]
    processor = ScriptedProcessor(hold=asyncio.Event())
    me = rig.consumer()
    pool = rig.pool(processor)
    await pool.start()
    await asyncio.wait_for(processor.entered.wait(), 5)
    assert rig.r.exists(rig.keys.heartbeat(me)) == 1

    await pool.stop()  # the batch outlives the grace period: its worker is cancelled

    assert processor.seen == [[0, 1]]
    assert rig.pending() == {me: ids}
    assert rig.depth() == 2
    assert rig.job(job) == ("processing", 0, 0, 2)
    assert rig.r.exists(rig.keys.heartbeat(me)) == 0
    assert rig.counters() == outcome_counters()
    assert rig.metric("shield_active_workers") == 0
    pool_events = [(kind, data) for kind, data in await rig.events() if kind.startswith("worker")]
    assert [kind for kind, _data in pool_events] == [
        "worker_pool.started",
        "worker.started",
        "worker.stopped",
        "worker_pool.stopped",
    ]
    assert pool_events[2][1] == {"worker_id": me, "tasks": 0, "reason": "cancelled"}

    processor.hold.set()
    again = rig.pool(processor)
    await again.start()
    await until(lambda: rig.job(job)[0] == "completed", "the next pool finishing the batch")
    await again.stop()
    assert processor.seen == [[0, 1], [0, 1]]
    assert rig.job(job) == ("completed", 2, 0, 2)
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.counters() == outcome_counters(processed=2)


# --- reclaim --------------------------------------------------------------------------------------
async def test_a_pool_takes_over_a_silent_consumers_entries_and_leaves_a_live_ones(rig: Rig) -> None:
    job = await rig.submit(4)
    silent, live = "gone-host-worker-1", "busy-host-worker-1"
    await rig.deliver(silent, 2)
    live_entries = await rig.deliver(live, 2)
    busy = Heartbeats(rig.redis, rig.keys, host="busy-host", ttl_seconds=30)
    await busy.beat([WorkerState(live, "processing", 0)])
    processor = ScriptedProcessor()
    me = rig.consumer()
    pool = rig.pool(processor)

    await pool.start()
    await until(lambda: rig.job(job)[1] == 2, "the silent consumer's chunks processed")
    await pool.stop()

    assert processor.seen == [[0, 1]]
    assert rig.pending() == {live: rig.ids(live_entries)}
    assert rig.depth() == 2
    assert rig.job(job) == ("processing", 2, 0, 4)
    assert rig.done(job) == {0, 1}
    assert pool.reclaimer.claimed_total == 2
    assert {key: pool.reclaimer.last_claim[key] for key in ("from", "to", "entries")} == {
        "from": silent,
        "to": me,
        "entries": 2,
    }
    assert rig.counters() == outcome_counters(processed=2)


async def test_entries_taken_over_before_the_new_owner_drains_its_own_are_processed_once(rig: Rig) -> None:
    job = await rig.submit(2)
    ids = rig.ids(await rig.deliver("gone-host-worker-1"))
    processor = ScriptedProcessor()
    worker = rig.worker(processor)
    me = worker.consumer
    reclaimer = Reclaimer(rig.stream, rig.heartbeats, interval=1)
    # The pool's reclaimer runs beside its workers: its claim can land before a
    # worker's first read of its own pending entries, which then include the
    # entries also queued in its inbox.
    assert await reclaimer.scan({me: worker.inbox}, itertools.cycle([me])) == 2
    assert rig.pending() == {me: ids}
    assert worker.inbox.qsize() == 1

    running = rig.spawn(worker.run())
    await until(lambda: worker.inbox.empty() and rig.job(job)[0] == "completed", "the inbox handled")
    assert await stopped(running, rig.stopping) == WorkerExit.STOPPED

    assert processor.seen == [[0, 1]]
    assert worker.tasks_done == 2
    assert rig.job(job) == ("completed", 2, 0, 2)
    assert rig.pending() == {}
    assert rig.depth() == 0
    assert rig.counters() == outcome_counters(processed=2)


# --- the continuous pipeline (a PipelineProcessor) -------------------------------------------
async def test_with_a_pipeline_each_chunk_is_counted_and_acked_as_soon_as_it_is_done(rig: Rig) -> None:
    job = await rig.submit(3)
    pipeline = ScriptedPipeline()
    worker = rig.worker(pipeline)
    me = worker.consumer
    running = rig.spawn(worker.run())
    await until(lambda: len(pipeline.submitted) == 3, "the three chunks submitted")

    pipeline.finish(1)
    await until(lambda: rig.job(job)[1] == 1, "chunk 1 counted")
    assert rig.done(job) == {1}
    assert len(rig.pending()[me]) == 2  # chunk 1 acked, 0 and 2 still held
    pipeline.finish(2)
    await until(lambda: rig.job(job)[1] == 2, "chunk 2 counted")
    pipeline.finish(0)
    await until(lambda: rig.job(job) == ("completed", 3, 0, 3), "the job completed")

    assert rig.pending() == {}
    events = await rig.events_until(job, "ingestion.completed")
    progress_steps = [data["chunks_processed"] for kind, data in events if kind == "ingestion.progress"]
    assert progress_steps == [1, 2, 3]  # one event per chunk, in the order they ended
    rig.stopping.set()
    assert await running == WorkerExit.STOPPED


async def test_with_a_pipeline_entries_taken_over_are_handled_while_the_pipeline_has_no_room(rig: Rig) -> None:
    """Another worker blocked in its read can hold every place of the pipeline, and
    take them again as its read returns: a worker waiting for room turns to the
    entries taken over into its inbox at once. Before, a host that took over a
    stopped host's chunks waited for room for ever (found by the SIGSTOP test of
    the writer fence, tests/service/test_fence.py, with the extraction ahead on)."""
    job = await rig.submit(2)
    ids = rig.ids(await rig.deliver("gone-host-worker-1"))
    pipeline = ScriptedPipeline(room=4)
    pipeline.reserved = 4  # every place held by another worker's read
    worker = rig.worker(pipeline)
    running = rig.spawn(worker.run())
    await until(lambda: worker.state == "waiting", "the worker waiting for room")
    reclaimer = Reclaimer(rig.stream, rig.heartbeats, interval=1)
    assert await reclaimer.scan({worker.consumer: worker.inbox}, itertools.cycle([worker.consumer])) == 2
    assert rig.pending() == {worker.consumer: ids}
    await until(lambda: sorted(pipeline.submitted) == [0, 1], "the taken-over chunks submitted without room")
    assert pipeline.reserved == 4 and worker.inbox.empty() and not worker.inbox.arrived.is_set()
    for index in (0, 1):
        pipeline.finish(index)
    await until(lambda: rig.job(job) == ("completed", 2, 0, 2), "the job completed")
    rig.stopping.set()
    assert await stopped(running, rig.stopping) == WorkerExit.STOPPED
    assert rig.pending() == {}


async def test_with_a_pipeline_a_worker_reads_only_what_the_pipeline_can_start(make_rig: MakeRig) -> None:
    rig = await make_rig(batch_size=50)
    job = await rig.submit(10)
    pipeline = ScriptedPipeline(room=3)
    worker = rig.worker(pipeline)
    running = rig.spawn(worker.run())
    await until(lambda: len(pipeline.submitted) == 3, "three chunks submitted")
    await asyncio.sleep(0.3)
    assert len(pipeline.submitted) == 3
    assert rig.depth() == 10 and sum(len(ids) for ids in rig.pending().values()) == 3  # 7 never read
    for index in range(10):
        await until(lambda i=index: i in pipeline.futures, f"chunk {index} submitted")  # type: ignore[misc]
        pipeline.finish(index)
    await until(lambda: rig.job(job) == ("completed", 10, 0, 10), "the job completed")
    rig.stopping.set()
    await running
    assert pipeline.reserved == 0  # what the worker reserved for its last (empty) read, given back


async def test_with_a_pipeline_a_chunk_refused_by_the_cancel_is_acked_unprocessed(rig: Rig) -> None:
    job = await rig.submit(3)
    pipeline = ScriptedPipeline()
    worker = rig.worker(pipeline)
    entries = await rig.deliver(worker.consumer)
    await rig.tracker.mark_started(job)
    assert await rig.tracker.admit(job, [0])  # chunk 0 entered LightRAG before the cancel
    cancel = await rig.tracker.cancel(job)
    assert (cancel.outcome, cancel.chunks_in_lightrag) == (1, 1)
    handling = rig.spawn(worker.handle(entries, delivered_before=True))
    await asyncio.sleep(0.2)
    assert not handling.done()  # chunk 0 was admitted before the cancel: it runs on
    pipeline.finish(0)
    await handling

    assert rig.pending() == {}
    assert rig.job(job) == ("cancelled", 1, 0, 3)  # the cancel's answer was the final count
    assert rig.counters() == outcome_counters(processed=1, skipped=2)


async def test_admission_is_refused_once_the_job_is_cancelled_and_counted_by_the_cancel(rig: Rig) -> None:
    job = await rig.submit(5)
    assert await rig.tracker.admit(job, [0, 1])
    assert await rig.tracker.admit(job, [1])  # a redelivery: its bit is set once
    cancel = await rig.tracker.cancel(job)
    assert (cancel.outcome, cancel.chunks_in_lightrag) == (1, 2)
    assert not await rig.tracker.admit(job, [2])  # after the cancel: refused, not counted
    assert await rig.tracker.admit(job, [0])  # entered before the cancel: runs on
    assert not await rig.tracker.admit(job, [0, 3])  # one of them did not
    again = await rig.tracker.cancel(job)
    assert (again.outcome, again.chunks_in_lightrag) == (0, 2)
    unknown = "00000000-0000-0000-0000-000000000000"
    assert await rig.tracker.admit(unknown, [0])  # no job in Redis: the chunk's own record decides
    assert not rig.r.exists(rig.keys.job_admitted(unknown))  # and no key is left without a TTL


async def test_content_duplicates_are_recorded_once_per_chunk_and_expire_with_their_job(rig: Rig) -> None:
    job = await rig.submit(3)
    holder = f"chunk-{job}-0"
    assert await rig.tracker.record_duplicates(job, {1: holder, 2: holder}) == 2
    assert await rig.tracker.record_duplicates(job, {2: "chunk-other-9"}) == 0  # a redelivery: its first record stays
    assert await rig.tracker.duplicates(job) == {1: holder, 2: holder}
    assert rig.r.hget(rig.keys.job(job), "chunks_duplicate") == "2"
    assert rig.r.hexists(rig.keys.jobs_dirty, job)  # the PostgreSQL sync writes the count
    assert await rig.tracker.record_duplicates("00000000-0000-0000-0000-000000000000", {0: holder}) == -1
    await rig.tracker.record(job, [ChunkOutcome(index, True) for index in range(3)])
    dirty, _total = await rig.tracker.dirty_jobs(10)
    (synced,) = [item for item in dirty if item.job_id == job]
    assert synced.final and synced.duplicates == {1: holder, 2: holder}  # handed to the job's final row
    await rig.tracker.settle([synced])
    ttl = rig.settings.job_status_ttl
    assert 0 < rig.r.ttl(rig.keys.job_duplicates(job)) <= ttl and 0 < rig.r.ttl(rig.keys.job(job)) <= ttl
    assert await rig.tracker.duplicates("00000000-0000-0000-0000-000000000000") is None
