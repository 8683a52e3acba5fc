"""W8 (issue 20, "Extract everywhere, merge once"): does a second worker host add speed?

Worker processes of the service on this machine, each a host of its own (its own
state directory, port and LLM slots: the role's llm_max_async), against one
PostgreSQL + pgvector graph (LightRAG's PostgreSQL storages, a fresh database per
cell) and one Redis, the lab/test LLM stand-in (roles/lab_llm_standin: deterministic,
not a language model) answering every chat call after `chat_ms`, every embedding
call after 50 ms. One job of n chunks whose entities recur (recurring_prose(), so
LightRAG merges and summarises), posted to the first host; the others take their
share from the stream. Cells, per chat latency:

* 1 host;
* 2 hosts;
* 2 hosts with a cluster-wide cap of `cap` concurrent chat calls
  (llm_cluster_max_async), as many as one host's slots.

Figures per cell: seconds from the POST to ingestion.completed, chunks/s, chat calls
(the stand-in's count) and per chunk (what a user pays), LLM busy % (ideal = chat
calls x latency / the cell's slots: hosts x llm_max_async, or the cap), CPU of the
hosts; and the ratio of each cell's throughput to one host's. All hosts on one
machine share its two cores: a figure of this machine, not of a cluster.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from infra import SSEClient, group_cpu_seconds, log, start_standin
from ingest import CHAT, EMBED, Batch, PgGraph, RealContext, calls_between, run_tag
from pg_container import EMPTY, PgvectorServer
from workloads import JobWatch, post_job

from tests.support.servers import Standin

EMBEDDING_MS = 50


@dataclass(frozen=True)
class Cell:
    name: str
    hosts: int
    cap: int  # 0: no cluster-wide cap


def cells(cap: int) -> tuple[Cell, ...]:
    return (Cell("1 host", 1, 0), Cell("2 hosts", 2, 0), Cell(f"2 hosts, cluster cap {cap}", 2, cap))


async def run_cell(
    ctx: RealContext, standin: Standin, graph: PgGraph, batch: Batch, cell: Cell, chat_ms: int, within: float
) -> dict[str, float]:
    """One job through `cell.hosts` worker hosts on a fresh PostgreSQL graph."""
    s = ctx.settings
    run_name = f"w8-{chat_ms}-{cell.hosts}h-{cell.cap}"
    database = await asyncio.to_thread(graph.fresh, run_name)
    overrides: dict[str, Any] = {
        "llm_max_async": s.llm_max_async,
        "llm_cluster_max_async": cell.cap,
        "lightrag_storage": "postgres",
        "postgres_host": "127.0.0.1",
        "postgres_port": graph.server.port,
        "postgres_user": graph.server.user,
        "postgres_password": graph.server.password,
        "postgres_db": database,
    }
    hosts = []
    try:
        for index in range(cell.hosts):
            hosts.append(
                await ctx.launcher.start(
                    f"{run_name}-{index + 1}", noop=False, llm_url=standin.base_url, reset=index == 0, **overrides
                )
            )
        first = hosts[0]
        watch = JobWatch()
        async with first.client() as http, SSEClient(first, "ingestion.completed,ingestion.failed", watch.on_event):
            before = standin.stats()
            cpu0 = sum(group_cpu_seconds(host.proc.pid) for host in hosts)
            start = time.time()
            job_id = await post_job(http, batch.job_body())
            end = await watch.wait([job_id], within, first.proc)
            cpu = sum(group_cpu_seconds(host.proc.pid) for host in hosts) - cpu0
            calls = calls_between(before, standin.stats())
            job = (await http.get(f"/jobs/{job_id}")).json()
    finally:
        for host in hosts:
            host.proc.stop(60)
    n = len(batch)
    done = int(job["chunks_processed"])
    seconds = end - start
    slots = cell.cap or cell.hosts * s.llm_max_async
    chat = calls.get(CHAT, 0)
    ideal = chat * chat_ms / 1000 / slots
    return {
        "hosts": float(cell.hosts),
        "cluster_cap": float(cell.cap),
        "slots": float(slots),
        "chunks_done": float(done),
        "complete": float(done == n),
        "seconds": seconds,
        "chunks_per_s": done / seconds if seconds > 0 else 0.0,
        "chat_calls": float(chat),
        "chat_calls_per_chunk": chat / done if done else 0.0,
        "embedding_calls": float(calls.get(EMBED, 0)),
        "llm_busy_percent": 100 * ideal / seconds if seconds > 0 else 0.0,
        "cpu_s": cpu,
    }


async def run_w8(
    ctx: RealContext, python: str, n: int, delays: tuple[int, ...], cap: int, within: float
) -> dict[str, Any]:
    out: dict[str, Any] = {"chunks": n, "texts": "recurring", "llm_max_async": ctx.settings.llm_max_async}
    out["cluster_cap"] = cap
    out["embedding_delay_ms"] = EMBEDDING_MS
    out["by_latency"] = {}
    pg = await asyncio.to_thread(PgvectorServer.start)
    try:
        graph = PgGraph(pg, EMPTY)
        for chat_ms in delays:
            standin = await start_standin(python, ctx.infra.logs, chat_ms, f"w8-standin-{chat_ms}", EMBEDDING_MS)
            figures: dict[str, dict[str, float]] = {}
            try:
                batch = Batch.make(n, run_tag("w8"), recipe="recurring")
                for cell in cells(cap):
                    result = await run_cell(ctx, standin, graph, batch, cell, chat_ms, within)
                    figures[cell.name] = result
                    log(
                        f"W8 chat {chat_ms} ms, {cell.name}: {result['chunks_per_s']:.2f} chunks/s, "
                        f"{result['seconds']:.1f} s, chat {result['chat_calls']:.0f} "
                        f"({result['chat_calls_per_chunk']:.2f}/chunk), LLM busy {result['llm_busy_percent']:.0f}%"
                    )
            finally:
                standin.proc.stop()
            one = figures["1 host"]["chunks_per_s"]
            for result in figures.values():
                result["ratio_to_one_host"] = result["chunks_per_s"] / one if one else 0.0
            out["by_latency"][str(chat_ms)] = figures
    finally:
        await asyncio.to_thread(pg.stop)
    out["targets"] = {
        "two_hosts_ratio_at_least": 1.8,
        "llm_busy_percent_at_least": 90.0,
        "two_hosts_capped_ratio_at_least": 1.0,
    }
    return out
