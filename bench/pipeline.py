"""Issue 19's workloads ("Keep the LLM busy: a continuous pipeline"): what the service's
LightRAG path answers while the LLM is slow. Each runs one job (or a backlog and a job)
through the service as deployed (LightRAG processor, role defaults, local storages)
against the lab/test LLM stand-in (roles/lab_llm_standin: deterministic, not a
language model) answering every chat call after `chat_ms` and every embedding call
after `embedding_ms`; the texts are recurring_prose() (a small set of entities, so
LightRAG merges and summarises).

* progress: one job of n chunks; every ingestion.progress event of it over SSE with
  its arrival time: the longest gap between two events (the job's acceptance counting
  as the first), the largest step (chunks counted by one event), the time to the first one.
* cancel: one job of n chunks, POST /jobs/{id}/cancel `after_s` seconds after it was
  accepted; the answer's chunks_in_lightrag, then (once the service is idle) the
  job's documents PROCESSED in LightRAG (GET /jobs/{id}/verify) and the difference.
* w7rag: W7 on LightRAG: a backlog of chunks, then at once a small high-priority job;
  seconds from its POST to its ingestion.completed.

Each returns its figures as a flat dict of numbers (the harness summarises rounds).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

import httpx
from infra import BenchError, Service, SSEClient, log
from ingest import CHAT, Batch, RealContext, calls_between, run_tag
from workloads import W7_JOB_SIZE, JobWatch, TimedOut, post_job

from tests.support.servers import Standin

RECIPE = "recurring"
IDLE_POLL_S = 0.2


def busy(calls: dict[str, int], chat_ms: float, slots: int, seconds: float, chunks: int) -> dict[str, float]:
    """Issue 19's LLM busy %: ideal / wall, ideal = chat calls x chat latency / LLM slots."""
    chat = calls.get(CHAT, 0)
    ideal = chat * chat_ms / 1000 / slots
    return {
        "llm_calls": float(chat),
        "chat_calls_per_chunk": chat / chunks if chunks else 0.0,
        "ideal_s": ideal,
        "llm_busy_percent": 100 * ideal / seconds if seconds > 0 else 0.0,
    }


async def start(ctx: RealContext, standin: Standin, name: str) -> Service:
    return await ctx.launcher.start(
        name, noop=False, llm_url=standin.base_url, llm_max_async=ctx.settings.llm_max_async
    )


# --- progress ------------------------------------------------------------------------------
@dataclass
class Progress:
    """The job's ingestion.progress events: (arrival wall time, chunks counted so far)."""

    job_id: str = ""

    def __post_init__(self) -> None:
        self.events: list[tuple[float, int]] = []
        self.early: list[tuple[str, float, int]] = []  # before the job id is known (the POST's answer)

    def on_event(self, event_type: str, data: dict[str, Any], now: float) -> None:
        if event_type != "ingestion.progress":
            return
        done = int(data["chunks_processed"]) + int(data["chunks_failed"])
        if not self.job_id:
            self.early.append((data["job_id"], now, done))
        elif data["job_id"] == self.job_id:
            self.events.append((now, done))

    def known(self, job_id: str) -> None:
        self.job_id = job_id
        self.events = [(now, done) for other, now, done in self.early if other == job_id] + self.events

    def figures(self, sent: float, accepted: float) -> dict[str, float]:
        """The job's acceptance (the POST's 202) counts as an event of 0 chunks: a job silent
        for a minute before its first event has a gap of a minute, whatever follows."""
        events = sorted(self.events)
        times = [now for now, _ in events]
        counts = [done for _, done in events]
        steps = [b - a for a, b in itertools.pairwise([0, *counts])]
        silences = [b - a for a, b in itertools.pairwise([accepted, *times])]
        nan = float("nan")
        return {
            "progress_events": float(len(events)),
            "first_progress_s": times[0] - sent if times else nan,
            "longest_gap_s": max(silences) if times else nan,
            "longest_gap_between_events_s": max(silences[1:]) if len(times) > 1 else nan,
            "largest_step_chunks": float(max(steps)) if steps else nan,
            "median_step_chunks": float(sorted(steps)[len(steps) // 2]) if steps else nan,
        }


async def progress_run(ctx: RealContext, standin: Standin, n: int, chat_ms: float, within: float) -> dict[str, float]:
    """One job of n chunks; its ingestion.progress events over SSE, timed on arrival."""
    batch = Batch.make(n, run_tag("progress"), recipe=RECIPE)
    service = await start(ctx, standin, "progress-service")
    watch, progress = JobWatch(), Progress()

    def on_event(event_type: str, data: dict[str, Any], now: float) -> None:
        progress.on_event(event_type, data, now)
        if event_type in ("ingestion.completed", "ingestion.failed"):
            watch.on_event(event_type, data, now)

    try:
        async with (
            service.client() as http,
            SSEClient(service, "ingestion.progress,ingestion.completed,ingestion.failed", on_event),
        ):
            before = standin.stats()
            sent = time.time()
            job_id = await post_job(http, batch.job_body())
            accepted = time.time()
            progress.known(job_id)
            complete = 1.0
            try:
                end = await watch.wait([job_id], within, service.proc)
            except TimedOut:
                end, complete = time.time(), 0.0
            calls = calls_between(before, standin.stats())
            job = (await http.get(f"/jobs/{job_id}")).json()
        seconds = end - sent
        return {
            "complete": complete,
            "chunks_done": float(job["chunks_processed"]),
            "seconds": seconds,
            "accept_s": accepted - sent,
            **progress.figures(sent, accepted),
            **busy(calls, chat_ms, ctx.settings.llm_max_async, seconds, int(job["chunks_processed"]) or n),
        }
    finally:
        service.proc.stop(5.0)


# --- cancel --------------------------------------------------------------------------------
async def wait_idle(http: httpx.AsyncClient, service: Service, within: float) -> float:
    """Until nothing is waiting or in flight (GET /queue: queue_depth and pending 0, twice
    in a row); the wall time it was first seen so."""
    deadline = time.monotonic() + within
    seen: float | None = None
    while True:
        queue = (await http.get("/queue")).json()
        if queue["queue_depth"] == 0 and queue["pending"] == 0:
            if seen is not None:
                return seen
            seen = time.time()
        else:
            seen = None
        service.proc.check()
        if time.monotonic() > deadline:
            raise BenchError(f"service not idle after {within:.0f}s: {queue}")
        await asyncio.sleep(IDLE_POLL_S)


async def cancel_run(
    ctx: RealContext, standin: Standin, n: int, chat_ms: float, after_s: float, within: float
) -> dict[str, float]:
    """One job of n chunks, cancelled after_s seconds after the POST's 202; what the cancel
    answered, and the job's documents PROCESSED in LightRAG once the service is idle."""
    batch = Batch.make(n, run_tag("cancel"), recipe=RECIPE)
    service = await start(ctx, standin, "cancel-service")
    try:
        async with service.client() as http:
            before = standin.stats()
            sent = time.time()
            job_id = await post_job(http, batch.job_body())
            accepted = time.time()
            await asyncio.sleep(max(accepted + after_s - time.time(), 0))
            cancel_sent = time.time()
            reply = await http.post(f"/jobs/{job_id}/cancel")
            cancel_answered = time.time()
            if reply.status_code == 200:
                at_cancel, finished_first = int(reply.json()["chunks_in_lightrag"]), 0.0
            elif reply.status_code == 409:  # the job ended before the cancel reached it
                job = (await http.get(f"/jobs/{job_id}")).json()
                at_cancel, finished_first = int(job["chunks_processed"]), 1.0
                log(f"cancel: job {job_id} finished ({job['status']}) before the cancel")
            else:
                raise BenchError(f"POST /jobs/{job_id}/cancel: HTTP {reply.status_code} {reply.text[:300]}")
            idle = await wait_idle(http, service, within)
            verify = await http.get(f"/jobs/{job_id}/verify")
            if verify.status_code != 200:
                raise BenchError(f"GET /jobs/{job_id}/verify: HTTP {verify.status_code} {verify.text[:300]}")
            final = int(verify.json()["documents_processed"])
            job = (await http.get(f"/jobs/{job_id}")).json()
            calls = calls_between(before, standin.stats())
        return {
            "chunks": float(n),
            "cancel_after_s": cancel_sent - accepted,
            "cancel_answer_ms": (cancel_answered - cancel_sent) * 1000,
            "finished_before_cancel": finished_first,
            "chunks_at_cancel": float(at_cancel),
            "chunks_in_lightrag_final": float(final),
            "beyond_cancel_chunks": float(final - at_cancel),
            "answer_exact": 1.0 if final == at_cancel else 0.0,
            "job_chunks_processed_final": float(job["chunks_processed"]),
            "cancel_to_idle_s": idle - cancel_answered,
            **busy(calls, chat_ms, ctx.settings.llm_max_async, idle - sent, final or n),
        }
    finally:
        service.proc.stop(5.0)


# --- W7 on LightRAG ------------------------------------------------------------------------
async def w7rag_run(ctx: RealContext, standin: Standin, backlog: int, urgent: int, within: float) -> dict[str, float]:
    """A backlog of `backlog` chunks (jobs of up to W7_JOB_SIZE, normal priority), then at
    once a job of `urgent` chunks at priority high: seconds from its POST to its
    ingestion.completed; then the backlog is cancelled (it would take hours at 1 s a call)."""
    tag = run_tag("w7rag")
    queued = Batch.make(backlog, tag, recipe=RECIPE)
    small = Batch.make(urgent, f"{tag}-urgent", recipe=RECIPE)
    service = await start(ctx, standin, "w7rag-service")
    watch = JobWatch()
    try:
        async with service.client() as http, SSEClient(service, "ingestion.completed,ingestion.failed", watch.on_event):
            backlog_ids = []
            for k in range(0, backlog, W7_JOB_SIZE):
                backlog_ids.append(await post_job(http, queued.part(k, k + W7_JOB_SIZE).job_body()))
            depth = float((await http.get("/queue")).json()["queue_depth"])
            sent = time.time()
            urgent_id = await post_job(http, small.job_body(priority="high"))
            complete = 1.0
            try:
                done = await watch.wait([urgent_id], within, service.proc)
            except TimedOut:
                done, complete = time.time(), 0.0
            jobs = [(await http.get(f"/jobs/{job_id}")).json() for job_id in backlog_ids]
            left = sum(job["chunks_total"] - job["chunks_processed"] - job["chunks_failed"] for job in jobs)
            for job_id in backlog_ids:  # the rest of the backlog is not the measure
                await http.post(f"/jobs/{job_id}/cancel")
        return {
            "complete": complete,
            "high_seconds": done - sent,
            "high_depth_at_post": depth,
            "high_backlog_left": float(left),
        }
    finally:
        service.proc.stop(5.0)
