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
  (llm_cluster_max_async), as many as one host's slots;
* 2 hosts, the second killed (SIGKILL, its whole process group) at a quarter, a half
  and three quarters of the job and started again each time: its chunks are taken
  over and its documents redone. Its chat calls against the clean 2-host cell's are
  what a fault costs the user (the LLM cache makes a redone extraction free).

Figures per cell: seconds from the POST to ingestion.completed, chunks/s, chat calls
(the stand-in's count) and per chunk (what a user pays), LLM busy % (ideal = chat
calls x latency / the cell's slots: hosts x llm_max_async, or the cap), CPU of the
hosts; and the ratio of each cell's throughput to one host's. All hosts on one
machine share its two cores: a figure of this machine, not of a cluster.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import httpx
from infra import Service, SSEClient, group_cpu_seconds, log, start_standin
from ingest import CHAT, EMBED, Batch, PgGraph, RealContext, calls_between, run_tag
from pg_container import EMPTY, PgvectorServer
from workloads import JobWatch, post_job

from tests.support.servers import Standin

EMBEDDING_MS = 50


KILLS = (0.25, 0.5, 0.75)  # the kill cell: host 2 killed when this share of the job is done


@dataclass(frozen=True)
class Cell:
    name: str
    hosts: int
    cap: int  # 0: no cluster-wide cap
    kills: tuple[float, ...] = ()


def cells(cap: int) -> tuple[Cell, ...]:
    return (
        Cell("1 host", 1, 0),
        Cell("2 hosts", 2, 0),
        Cell(f"2 hosts, cluster cap {cap}", 2, cap),
        Cell(f"2 hosts, {len(KILLS)} kill -9s of host 2", 2, 0, KILLS),
    )


async def kill_and_restart(
    ctx: RealContext, http: httpx.AsyncClient, job_id: str, n: int, hosts: list[Service], cell: Cell, start: Any
) -> int:
    """Kill host 2 (SIGKILL) as the job passes each share of `cell.kills`, and start it
    again; the number of kills made."""
    killed = 0
    for share in cell.kills:
        while True:
            job = (await http.get(f"/jobs/{job_id}")).json()
            if int(job["chunks_processed"]) >= share * n or job["status"] in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
        if job["status"] in ("completed", "failed", "cancelled"):
            break
        victim = hosts[1]
        os.killpg(victim.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(victim.proc.stop, 5)
        killed += 1
        hosts[1] = await start(f"restart{killed}")
    return killed


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
    hosts: list[Service] = []

    async def start_host(suffix: str, reset: bool = False) -> Service:
        return await ctx.launcher.start(
            f"{run_name}-{suffix}", noop=False, llm_url=standin.base_url, reset=reset, **overrides
        )

    killed = 0
    try:
        for index in range(cell.hosts):
            hosts.append(await start_host(str(index + 1), reset=index == 0))
        first = hosts[0]
        watch = JobWatch()
        async with first.client() as http, SSEClient(first, "ingestion.completed,ingestion.failed", watch.on_event):
            before = standin.stats()
            cpu0 = sum(group_cpu_seconds(host.proc.pid) for host in hosts)
            start = time.time()
            job_id = await post_job(http, batch.job_body())
            if cell.kills:
                killed = await kill_and_restart(ctx, http, job_id, len(batch), hosts, cell, start_host)
            end = await watch.wait([job_id], within, first.proc)
            cpu = 0.0 if cell.kills else sum(group_cpu_seconds(host.proc.pid) for host in hosts) - cpu0
            after = standin.stats()
            calls = calls_between(before, after)
            kinds = {key: after[key] - before.get(key, 0) for key in after if key.startswith("chat:")}
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
        "cpu_s": cpu,  # 0 in the kill cell (a killed host's CPU is not counted)
        "kills": float(killed),
        # chat calls by what they were (the stand-in's classification): extraction, gleaning, summary
        **{f"calls_{key.removeprefix('chat:')}": float(count) for key, count in kinds.items()},
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
                    by_kind = ", ".join(f"{k[6:]} {v:.0f}" for k, v in result.items() if k.startswith("calls_"))
                    log(
                        f"W8 chat {chat_ms} ms, {cell.name}: {result['chunks_per_s']:.2f} chunks/s, "
                        f"{result['seconds']:.1f} s, chat {result['chat_calls']:.0f} "
                        f"({result['chat_calls_per_chunk']:.2f}/chunk: {by_kind}), "
                        f"LLM busy {result['llm_busy_percent']:.0f}%"
                    )
            finally:
                standin.proc.stop()
            one = figures["1 host"]["chunks_per_s"]
            clean = figures["2 hosts"]["chat_calls"]
            for result in figures.values():
                result["ratio_to_one_host"] = result["chunks_per_s"] / one if one else 0.0
                result["chat_calls_to_clean_two_hosts"] = result["chat_calls"] / clean if clean else 0.0
            out["by_latency"][str(chat_ms)] = figures
    finally:
        await asyncio.to_thread(pg.stop)
    out["targets"] = {
        "two_hosts_ratio_at_least": 1.8,
        "llm_busy_percent_at_least": 90.0,
        "two_hosts_capped_ratio_at_least": 1.0,
        "chat_calls_with_kills_to_clean_at_most": 1.05,
    }
    return out
