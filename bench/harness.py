"""shield-orchestrator benchmark: runs the workloads, prints one table, writes the figures as JSON.

    bench/run.sh [--smoke] [--rounds N] [--real-rounds N] [--only w1,w4] [--output PATH]

Run through bench/run.sh, which makes the virtualenvs: this harness and the peer
workers run on .venv-bench-peers, the service (the floor consumer and LightRAG
in-process) on the service's own virtualenv, lightrag-server on .venv-bench-lightrag.
See bench/README.md for what each workload measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from infra import (
    BENCH,
    REPO,
    BenchError,
    Infra,
    ServiceLauncher,
    log,
    percentile,
    render_service,
    start_standin,
    summary,
)
from ingest import (
    CONTESTANTS,
    FLOOR,
    INPROCESS,
    RUNNERS,
    SERVER,
    Batch,
    PgGraph,
    RealContext,
    ensure_fixtures,
    ensure_pg_fixtures,
    fixture_dir,
    lightrag_version,
    on_off,
    run_tag,
    setting,
)
from pg_container import EMPTY, PgvectorServer
from pipeline import cancel_run, progress_run, w7rag_run
from scaleout import run_w8
from workloads import (
    PEERS,
    W4_STAGES,
    Context,
    W1Run,
    w1_floor,
    w1_peer,
    w1_service,
    w4_latency,
    w5_fanout,
    w7_priority,
)

from tests.support.servers import Standin

SERVICE = "shield-orchestrator"
REDIS_FLOOR = "floor"
FLOOR_HIREDIS = "floor + hiredis"
TARGETS = {
    "w1_ratio_to_fastest_peer": 2.0,
    "w1_ratio_to_floor": 0.60,
    "w2_peak_rss_mb": 300.0,
    # issue 21: the service's chunks/s at least this fraction of LightRAG in-process with its flushes deferred
    "w2_ratio_to_lightrag_floor": 0.8,
    "w3_efficiency": 0.90,
    "w4_p99_ms": 20.0,
    "w5_p99_ms": 50.0,
    "w7_high_seconds": 5.0,
    # issue 19 ("Keep the LLM busy"): the baseline before the continuous pipeline
    "w3_llm_busy_percent": 90.0,
    "progress_longest_gap_s": 5.0,
    "progress_largest_step_chunks": 10.0,
    "w7rag_high_seconds": 60.0,
    "cancel_beyond_chunks": 20.0,
}


@dataclass(frozen=True)
class Sizes:
    w1_chunks: int
    w1_job_size: int
    w2_chunks: int
    w3_chunks: int
    w4_jobs: int
    w5_clients: int
    w5_events: int
    w6_chunks: int
    w6_docs: tuple[int, ...]  # sizes of the pre-filled graph
    w7_backlog: int
    w7_urgent: int
    progress_chunks: int  # issue 19: one job, its progress events
    cancel_chunks: int  # issue 19: one job, cancelled
    w7rag_backlog: int  # issue 19: W7 on LightRAG
    w7rag_urgent: int
    w8_chunks: int  # issue 20: one job through 1 and 2 worker hosts on PostgreSQL


FULL = Sizes(20_000, 1_000, 1_000, 200, 200, 100, 1_000, 300, (0, 2_000, 5_000), 2_000, 5, 200, 200, 2_000, 5, 200)
# progress and cancel: more than one worker's batch (the role's batch_size, 50), so that
# the job gives at least two progress events and is still running at the cancel
SMOKE = Sizes(1_000, 500, 6, 4, 20, 10, 50, 4, (0, 20), 300, 5, 60, 60, 60, 5, 8)
LLM_CACHE_CELLS = {"on": (True,), "off": (False,), "both": (False, True)}  # BENCH_LLM_CACHE
WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w6", "w6pg", "w7", "progress", "cancel", "w7rag", "w8")
PIPELINE = ("progress", "cancel", "w7rag")  # issue 19's workloads (bench/pipeline.py): LightRAG, the stand-in slowed


def override_sizes(sizes: Sizes, spec: str) -> Sizes:
    """BENCH_SIZES="w2_chunks=20,w6_docs=0:50": some sizes changed (lists joined by ':')."""
    changes: dict[str, Any] = {}
    names = {f.name for f in fields(Sizes)}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, _, value = part.partition("=")
        if key not in names:
            raise SystemExit(f"BENCH_SIZES: unknown size {key!r} (known: {', '.join(sorted(names))})")
        changes[key] = tuple(int(v) for v in value.split(":")) if key == "w6_docs" else int(value)
    return replace(sizes, **changes)


@dataclass(frozen=True)
class Config:
    smoke: bool
    rounds: int
    real_rounds: int
    sizes: Sizes
    output: Path
    workloads: tuple[str, ...]
    peers: tuple[str, ...]
    concurrency: int
    sse_rate: float
    w3_delay_ms: int
    w3_embedding_delay_ms: int
    w3_llm_slots: tuple[int, ...]  # one W3 cell per value of llm_max_async (lightrag-server's MAX_ASYNC too)
    w3_texts: str  # "recurring" (issue 19: entities recur, LightRAG merges and summarises) or "varied"
    llm_cache: tuple[bool, ...]  # W2 and W3: LightRAG's LLM cache in every contestant, one cell per value
    progress_delay_ms: int
    cancel_delay_ms: int
    cancel_after_s: float
    w7rag_delay_ms: int
    pipeline_embedding_delay_ms: int
    pipeline_limit_s: float
    w8_delays_ms: tuple[int, ...]  # W8: one set of cells per chat latency
    w8_cluster_cap: int
    w2_limit_s: float
    w3_limit_s: float
    w6_limit_s: float
    storage: str  # W2 and W3: LightRAG's local storages, or "postgres" (bench/pg_container.py)
    fixture_limit_s: float
    fixture_step: int
    contestants: tuple[str, ...]
    service_python: str
    server_python: str
    keep: bool


def parse_args(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round (the test's run)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (env BENCH_ROUNDS; default 3, smoke 1)")
    parser.add_argument("--real-rounds", type=int, default=None, help="W2/W3/W6 rounds (env BENCH_REAL_ROUNDS; 1)")
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", ",".join(WORKLOADS)), help="e.g. w1,w4")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (env BENCH_OUTPUT)")
    args = parser.parse_args(argv)
    rounds = args.rounds or int(os.environ.get("BENCH_ROUNDS", "1" if args.smoke else "3"))
    default_output = BENCH / "results" / ("smoke.json" if args.smoke else "latest.json")
    output = args.output or Path(os.environ.get("BENCH_OUTPUT", str(default_output)))
    workloads = tuple(w for w in WORKLOADS if w in {part.strip() for part in args.only.split(",")})
    peers = tuple(p.strip() for p in os.environ.get("BENCH_PEERS", ",".join(p.name for p in PEERS)).split(","))
    default_service_python = REPO / ".venv-service" / "bin" / "python"
    default_server_python = REPO / ".venv-bench-lightrag" / "bin" / "python"
    contestants = {c.strip() for c in os.environ.get("BENCH_CONTESTANTS", ",".join(CONTESTANTS)).split(",")}
    storage = os.environ.get("BENCH_STORAGE", "local")
    if storage not in ("local", "postgres"):
        parser.error(f"BENCH_STORAGE must be local or postgres, not {storage!r}")
    variables = render_service.role_variables()
    role_slots = str(variables["orchestrator_workers_llm_max_async"])
    w3_slots = tuple(int(v) for v in os.environ.get("BENCH_W3_LLM_SLOTS", role_slots).split(",") if v.strip())
    w3_texts = os.environ.get("BENCH_W3_TEXTS", "recurring")
    if w3_texts not in ("recurring", "varied") or not w3_slots or min(w3_slots) < 1:
        parser.error("BENCH_W3_TEXTS must be recurring or varied, BENCH_W3_LLM_SLOTS positive integers (4,16)")
    role_cache = render_service.ansible_bool(variables["orchestrator_workers_lightrag_llm_cache"])
    cache = os.environ.get("BENCH_LLM_CACHE", on_off(role_cache))
    if cache not in LLM_CACHE_CELLS:
        parser.error(f"BENCH_LLM_CACHE must be on, off or both, not {cache!r}")
    # the smoke keeps issue 19's workloads short: the stand-in at 30 ms (embeddings 10 ms)
    slow, embed, after = ("30", "10", "1") if args.smoke else ("1000", "50", "5")
    return Config(
        smoke=args.smoke,
        rounds=max(rounds, 1),
        real_rounds=max(args.real_rounds or int(os.environ.get("BENCH_REAL_ROUNDS", "1")), 1),
        sizes=override_sizes(SMOKE if args.smoke else FULL, os.environ.get("BENCH_SIZES", "")),
        output=output,
        workloads=workloads,
        peers=tuple(p for p in peers if p),
        concurrency=int(os.environ.get("BENCH_CONCURRENCY", "32")),
        sse_rate=float(os.environ.get("BENCH_SSE_RATE", "50")),
        w3_delay_ms=int(os.environ.get("BENCH_W3_DELAY_MS", "1000")),
        w3_embedding_delay_ms=int(os.environ.get("BENCH_W3_EMBEDDING_DELAY_MS", "50")),
        w3_llm_slots=w3_slots,
        w3_texts=w3_texts,
        llm_cache=LLM_CACHE_CELLS[cache],
        progress_delay_ms=int(os.environ.get("BENCH_PROGRESS_DELAY_MS", slow)),
        cancel_delay_ms=int(os.environ.get("BENCH_CANCEL_DELAY_MS", "30" if args.smoke else "300")),
        cancel_after_s=float(os.environ.get("BENCH_CANCEL_AFTER_S", after)),
        w7rag_delay_ms=int(os.environ.get("BENCH_W7RAG_DELAY_MS", slow)),
        pipeline_embedding_delay_ms=int(os.environ.get("BENCH_PIPELINE_EMBEDDING_DELAY_MS", embed)),
        pipeline_limit_s=float(os.environ.get("BENCH_PIPELINE_LIMIT_S", "600")),
        w8_delays_ms=tuple(int(v) for v in os.environ.get("BENCH_W8_DELAYS_MS", slow).split(",") if v.strip()),
        w8_cluster_cap=int(os.environ.get("BENCH_W8_CLUSTER_CAP", "4")),
        w2_limit_s=float(os.environ.get("BENCH_W2_LIMIT_S", "300")),
        w3_limit_s=float(os.environ.get("BENCH_W3_LIMIT_S", "600")),
        w6_limit_s=float(os.environ.get("BENCH_W6_LIMIT_S", "900")),
        storage=storage,
        fixture_limit_s=float(os.environ.get("BENCH_FIXTURE_LIMIT_S", "14400")),
        fixture_step=max(int(os.environ.get("BENCH_FIXTURE_STEP", "500")), 1),
        contestants=tuple(c for c in CONTESTANTS if c in contestants),
        service_python=os.environ.get("BENCH_SERVICE_PYTHON", str(default_service_python)),
        server_python=os.environ.get("BENCH_LIGHTRAG_PYTHON", str(default_server_python)),
        keep=os.environ.get("BENCH_KEEP", "") == "1",
    )


def ratio_summary(ours: list[float], theirs: list[float]) -> dict[str, Any] | None:
    pairs = [a / b for a, b in zip(ours, theirs, strict=False) if b > 0]
    return summary(pairs) if pairs else None


# --- the workloads, round after round -------------------------------------------------------
async def run_w1(ctx: Context, cfg: Config) -> dict[str, Any]:
    n, job = cfg.sizes.w1_chunks, cfg.sizes.w1_job_size
    contestants: list[tuple[str, str, str, Callable[[], Awaitable[W1Run]]]] = [
        (SERVICE, "service", "role defaults: 4 workers, batch 10; no-op processor", lambda: w1_service(ctx, n, job))
    ]
    errors: dict[str, str] = {}
    versions: dict[str, str] = {}
    for peer in PEERS:
        if peer.name not in cfg.peers:
            continue
        contestants.append((peer.name, "peer", peer.setting, lambda peer=peer: w1_peer(ctx, peer, n, job)))  # type: ignore[misc]
        reason = peer.unavailable()
        if reason:
            errors[peer.name] = f"unavailable: {reason}"
        else:
            versions[peer.name] = peer.version()
    contestants += [
        (
            REDIS_FLOOR,
            "floor",
            "service's venv (redis-py, no hiredis)",
            lambda: w1_floor(ctx, n, job, cfg.service_python),
        ),
        (FLOOR_HIREDIS, "floor", "peers' venv (redis-py + hiredis)", lambda: w1_floor(ctx, n, job, sys.executable)),
    ]
    runs: dict[str, list[W1Run]] = {name: [] for name, *_ in contestants}
    for round_no in range(1, cfg.rounds + 1):
        for name, _kind, _setting, runner in contestants:  # interleaved: A B C ..., A B C ...
            if name in errors:
                continue
            try:
                result = await runner()
            except Exception as exc:
                errors[name] = f"failed: {type(exc).__name__}: {exc}"[:400]
                log(f"W1 round {round_no} {name}: {errors[name]}")
                continue
            runs[name].append(result)
            cpu = ", ".join(f"{k} {v:.2f}s" for k, v in result.cpu.items())
            log(f"W1 round {round_no} {name}: {result.rate:,.0f} chunks/s (CPU {cpu})")
    table: dict[str, Any] = {}
    for name, kind, how, _runner in contestants:
        entry: dict[str, Any] = {"kind": kind, "setting": how}
        if name in versions:
            entry["version"] = versions[name]
        if name in errors:
            entry["status"] = "unavailable" if errors[name].startswith("unavailable") else "failed"
            entry["reason"] = errors[name]
        if runs[name] and (name not in errors or kind == "service"):
            entry.setdefault("status", "ok")
            entry.update(summary([r.rate for r in runs[name]]))
            entry["cpu_ms_per_1k"] = {
                key: summary([r.cpu[key] * 1e6 / n for r in runs[name]])["median"] for key in runs[name][0].cpu
            }
        table[name] = entry
    rates = {name: [r.rate for r in results] for name, results in runs.items()}
    ranked = [p for p in cfg.peers if p in table and "median" in table[p]]
    fastest = max(ranked, key=lambda p: table[p]["median"]) if ranked else None
    return {
        "unit": "chunks/s",
        "chunks": n,
        "job_size": job,
        "concurrency": cfg.concurrency,
        "contestants": table,
        "fastest_peer": fastest,
        "ratio_to_fastest_peer": ratio_summary(rates[SERVICE], rates[fastest]) if fastest else None,
        "ratio_to_floor": ratio_summary(rates[SERVICE], rates[REDIS_FLOOR]),
        "ratio_to_floor_hiredis": ratio_summary(rates[SERVICE], rates[FLOOR_HIREDIS]),
        "targets": {
            "ratio_to_fastest_peer": TARGETS["w1_ratio_to_fastest_peer"],
            "ratio_to_floor": TARGETS["w1_ratio_to_floor"],
        },
    }


def per_round_ratio(rounds: list[dict[str, dict[str, float]]], ours: str, theirs: str, key: str) -> Any:
    """Median (min, max) over the rounds of ours[key] / theirs[key], rounds where both ran."""
    pairs = [r[ours][key] / r[theirs][key] for r in rounds if ours in r and theirs in r and r[theirs][key] > 0]
    return summary(pairs) if pairs else None


def contestant_table(
    rounds: list[dict[str, dict[str, float]]],
    names: tuple[str, ...],
    errors: dict[str, str],
    storage: str,
    settings: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Each contestant's figures over the rounds; `settings`: the LightRAG settings each one ran with."""
    table: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {"setting": setting(name, storage)}
        runs = [r[name] for r in rounds if name in r]
        if name in errors:
            entry.update(status="failed", reason=errors[name])
        elif runs:
            entry["status"] = "ok"
        if settings and name in settings:
            entry["lightrag_settings"] = settings[name]
        if runs:
            entry.update({key: summary([run[key] for run in runs]) for key in runs[0]})
        table[name] = entry
    return table


def check_settings(asked: dict[str, Any], ran: dict[str, dict[str, Any]], where: str) -> None:
    """BenchError unless every contestant's LightRAG got the settings asked for (`effective`),
    naming each setting that differs and every contestant's value of it."""
    if not ran:
        return
    problems: list[str] = []
    for key in sorted({key for got in ran.values() for key in got["effective"]} | set(asked)):
        values = {"asked": asked.get(key, "(none)")} | {
            name: got["effective"].get(key, "(none)") for name, got in ran.items()
        }
        if any(value != values["asked"] for value in values.values()):
            problems.append(f"{key}: " + ", ".join(f"{name} {value!r}" for name, value in values.items()))
    if problems:
        raise BenchError(f"{where}: the contestants' LightRAG settings differ: " + "; ".join(problems))


@dataclass(frozen=True)
class RealCell:
    """One W2/W3 cell: every contestant with this llm_max_async and LLM cache."""

    slots: int
    cache: bool
    label: str  # its key in the JSON's "cells": the slots, and the cache when both are run ("4, cache off")


def real_cells(slot_values: tuple[int, ...], caches: tuple[bool, ...]) -> list[RealCell]:
    both = len(caches) > 1
    return [
        RealCell(slots, cache, f"{slots}, cache {on_off(cache)}" if both else str(slots))
        for slots in slot_values
        for cache in caches
    ]


async def run_real(rctx: RealContext, cfg: Config, workload: str) -> dict[str, Any]:
    """W2 (stand-in at once) or W3 (chat 1 s, embeddings 50 ms): the contestants interleaved
    in each round, the same texts for all within a round. Cells: W3 one per value of
    llm_max_async (BENCH_W3_LLM_SLOTS; lightrag-server's MAX_ASYNC and the in-process
    script get the same), on texts whose entities recur (BENCH_W3_TEXTS); W2 and W3 one per
    LLM cache setting (BENCH_LLM_CACHE), every contestant set the same way. Each run's
    LightRAG settings are checked against the cell's (check_settings)."""
    s = rctx.settings
    n = cfg.sizes.w2_chunks if workload == "w2" else cfg.sizes.w3_chunks
    chat_ms, embed_ms = (0, 0) if workload == "w2" else (cfg.w3_delay_ms, cfg.w3_embedding_delay_ms)
    limit = cfg.w2_limit_s if workload == "w2" else cfg.w3_limit_s
    slot_values = cfg.w3_llm_slots if workload == "w3" else (s.llm_max_async,)
    recipe = cfg.w3_texts if workload == "w3" else "varied"
    cells = real_cells(slot_values, cfg.llm_cache)
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {cell.label: [] for cell in cells}
    errors: dict[str, dict[str, str]] = {cell.label: {} for cell in cells}
    settings: dict[str, dict[str, dict[str, Any]]] = {cell.label: {} for cell in cells}
    standin = await start_standin(cfg.service_python, rctx.infra.logs, chat_ms, f"{workload}-standin", embed_ms)
    pg: PgvectorServer | None = None
    try:
        pg = await asyncio.to_thread(PgvectorServer.start) if cfg.storage == "postgres" else None
        graph = {"postgres": PgGraph(pg, EMPTY)} if pg is not None else {}
        for round_no in range(1, cfg.real_rounds + 1):
            batch = Batch.make(n, run_tag(workload), recipe=recipe)
            for cell in cells:
                ctx = replace(rctx, settings=s.cell(cell.slots, cell.cache))
                where = f"{workload.upper()} round {round_no}" + (f" cell {cell.label}" if len(cells) > 1 else "")
                figures: dict[str, dict[str, float]] = {}
                ran: dict[str, dict[str, Any]] = {}
                for name in cfg.contestants:  # interleaved: A B C, A B C, ...
                    if name in errors[cell.label]:
                        continue
                    run_name = f"{workload}-{name}" + (f"-{cell.label}" if len(cells) > 1 else "")
                    try:
                        run = await RUNNERS[name](ctx, standin, batch, run_name, limit, **graph)
                    except Exception as exc:
                        errors[cell.label][name] = f"{type(exc).__name__}: {exc}"[:500]
                        log(f"{where} {name} FAILED: {errors[cell.label][name]}")
                        continue
                    result = run.figures()
                    if workload == "w3":
                        result["ideal_s"] = result["llm_calls"] * chat_ms / 1000 / cell.slots
                        result["efficiency"] = result["ideal_s"] / result["seconds"]
                        result["llm_busy_percent"] = 100 * result["efficiency"]
                    result["chat_calls_per_chunk"] = result["llm_calls"] / max(result["chunks_done"], 1)
                    figures[name] = result
                    ran[name] = run.settings
                    settings[cell.label].setdefault(name, run.settings)
                    log(f"{where} {name}: " + describe(result))
                check_settings(ctx.settings.effective(), ran, where)
                rounds[cell.label].append(figures)
    finally:
        standin.proc.stop()
        if pg is not None:
            await asyncio.to_thread(pg.stop)

    def cell_figures(cell: RealCell) -> dict[str, Any]:
        done = rounds[cell.label]
        return {
            "llm_max_async": cell.slots,
            "llm_cache": cell.cache,
            "contestants": contestant_table(
                done, cfg.contestants, errors[cell.label], cfg.storage, settings[cell.label]
            ),
            "ratios": {
                "service_to_lightrag_server": per_round_ratio(done, SERVICE, SERVER, "chunks_per_s"),
                "service_to_lightrag_floor": per_round_ratio(done, SERVICE, FLOOR, "chunks_per_s"),
                "service_to_inprocess": per_round_ratio(done, SERVICE, INPROCESS, "chunks_per_s"),
                "lightrag_server_to_inprocess": per_round_ratio(done, SERVER, INPROCESS, "chunks_per_s"),
                "lightrag_server_to_lightrag_floor": per_round_ratio(done, SERVER, FLOOR, "chunks_per_s"),
                "cpu_service_to_lightrag_server": per_round_ratio(done, SERVICE, SERVER, "cpu_s"),
                "cpu_service_to_inprocess": per_round_ratio(done, SERVICE, INPROCESS, "cpu_s"),
                "cpu_service_to_lightrag_floor": per_round_ratio(done, SERVICE, FLOOR, "cpu_s"),
                "note": "chunks/s (cpu_*: CPU seconds), median (min, max) of the per-round ratios",
            },
        }

    first = cell_figures(cells[0])
    failed = {
        name + (f" (cell {cell.label})" if len(cells) > 1 else ""): reason
        for cell in cells
        for name, reason in errors[cell.label].items()
    }
    out: dict[str, Any] = {
        "storage": cfg.storage,
        "chunks": n,
        "texts": recipe,
        "llm_delay_ms": chat_ms,
        "embedding_delay_ms": embed_ms,
        "llm_max_async": slot_values[0],
        "llm_cache": list(cfg.llm_cache),
        "embedding_max_async": s.embedding_max_async,
        "max_parallel_insert": s.cell(slot_values[0], cfg.llm_cache[0]).max_parallel_insert,
        "limit_s": limit,
        "contestants": first["contestants"],  # the first cell's (the only one for W2 unless BENCH_LLM_CACHE=both)
        "ratios": first["ratios"],
        "cells": {cell.label: cell_figures(cell) for cell in cells},
        "failed": failed,
    }
    if workload == "w2":
        out["targets"] = {
            "service_peak_rss_mb_below": TARGETS["w2_peak_rss_mb"],
            "service_to_lightrag_floor_at_least": TARGETS["w2_ratio_to_lightrag_floor"],
        }
    else:
        out["llm_slots"] = list(slot_values)
        out["formula"] = (
            f"llm_busy_percent = 100 x efficiency = 100 x ideal / actual; ideal = LLM calls received by the "
            f"stand-in (GET /stats, POST /v1/chat/completions) x {chat_ms} ms / llm_max_async (the cell's LLM "
            "slots); actual = first request -> every chunk done (each contestant's own clock, bench/ingest.py)"
        )
        out["targets"] = {
            "service_efficiency_at_least": TARGETS["w3_efficiency"],
            "service_llm_busy_percent_at_least_in_every_cell": TARGETS["w3_llm_busy_percent"],
            "service_above_lightrag_server_in_every_cell": True,
        }
    return out


def describe(result: dict[str, float]) -> str:
    parts = [
        f"{result['chunks_per_s']:.2f} chunks/s",
        f"{result['seconds']:.1f} s",
        f"CPU {result['cpu_s']:.1f} s",
        f"RSS {result['peak_rss_mb']:.0f} MB",
        f"chat {result['llm_calls']:.0f}",
        f"embeddings {result['embedding_calls']:.0f}",
    ]
    if "efficiency" in result:
        parts.append(f"efficiency {result['efficiency']:.0%}")
    if not result["complete"]:
        parts.append(f"CUT: {result['chunks_done']:.0f} done")
    return ", ".join(parts)


W6_RATIOS = {"service_to_lightrag_server": SERVER, "service_to_lightrag_floor": FLOOR}  # W6's ratios_by_docs


async def run_w6(rctx: RealContext, cfg: Config, storage: str = "local") -> dict[str, Any]:
    """W6: 300 chunks into a graph pre-filled with 0, 2,000 and 5,000 documents (a
    fixture, copied for every run), every contestant (the service, lightrag-server,
    LightRAG in-process and the true floor), stand-in at once. `storage`: LightRAG's
    local file storages (cached fixtures), or its PostgreSQL storages in a
    PostgreSQL 17 + pgvector container (bench/pg_container.py)."""
    n, sizes = cfg.sizes.w6_chunks, sorted(cfg.sizes.w6_docs)
    names = tuple(cfg.contestants)
    pg: PgvectorServer | None = None
    if storage == "postgres":
        pg = await asyncio.to_thread(PgvectorServer.start)
    try:
        if pg is not None:
            fixtures = await ensure_pg_fixtures(rctx, pg, sizes, cfg.fixture_limit_s)
        else:
            fixtures = await ensure_fixtures(rctx, sizes, cfg.fixture_limit_s, cfg.fixture_step)
        return await _w6_rounds(rctx, cfg, n, sizes, names, fixtures, pg)
    finally:
        if pg is not None:
            await asyncio.to_thread(pg.stop)


async def _w6_rounds(
    rctx: RealContext,
    cfg: Config,
    n: int,
    sizes: list[int],
    names: tuple[str, ...],
    fixtures: dict[str, Any],
    pg: PgvectorServer | None,
) -> dict[str, Any]:
    rounds: list[dict[int, dict[str, dict[str, float]]]] = []
    errors: dict[str, str] = {}
    settings: dict[str, dict[str, Any]] = {}
    standin = await start_standin(cfg.service_python, rctx.infra.logs, 0, "w6-standin")
    try:
        for round_no in range(1, cfg.real_rounds + 1):
            by_size: dict[int, dict[str, dict[str, float]]] = {}
            for size in sizes:
                batch = Batch.make(n, run_tag(f"w6-{size}"))
                by_size[size] = {}
                ran: dict[str, dict[str, Any]] = {}
                for name in names:
                    if name in errors:
                        continue
                    graph: dict[str, Any] = (
                        {"postgres": PgGraph(pg, fixtures["databases"][str(size)])}
                        if pg is not None
                        else {"fixture": fixture_dir(fixtures, size)}
                    )
                    try:
                        run = await RUNNERS[name](rctx, standin, batch, f"w6-{size}-{name}", cfg.w6_limit_s, **graph)
                    except Exception as exc:
                        errors[name] = f"{size} documents: {type(exc).__name__}: {exc}"[:500]
                        log(f"W6 round {round_no} {name} on {size:,} documents FAILED: {errors[name]}")
                        continue
                    by_size[size][name] = run.figures()
                    ran[name] = run.settings
                    settings.setdefault(name, run.settings)
                    log(f"W6 round {round_no} {name} on {size:,} documents: " + describe(by_size[size][name]))
                check_settings(rctx.settings.effective(), ran, f"W6 round {round_no} on {size:,} documents")
            rounds.append(by_size)
    finally:
        standin.proc.stop()
    first, last = sizes[0], sizes[-1]
    storage = "postgres" if pg is not None else "local"
    table: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {"setting": setting(name, storage)}
        if name in errors:
            entry.update(status="failed", reason=errors[name])
        if name in settings:
            entry["lightrag_settings"] = settings[name]
        entry["by_docs"] = {
            str(size): contestant_table([r[size] for r in rounds], (name,), {}, storage)[name] for size in sizes
        }
        pairs = [(r[first][name], r[last][name]) for r in rounds if name in r[first] and name in r[last]]
        rates = [b["chunks_per_s"] / a["chunks_per_s"] for a, b in pairs if a["chunks_per_s"] > 0]
        growth = [b["peak_rss_mb"] - a["peak_rss_mb"] for a, b in pairs]
        entry["rate_ratio_last_to_first"] = summary(rates) if rates else None
        entry["rss_growth_mb"] = summary(growth) if growth else None
        if name not in errors and pairs:
            entry["status"] = "ok"
        table[name] = entry
    return {
        "storage": "postgresql (PGKVStorage, PGDocStatusStorage, PGTableGraphStorage, PGVectorStorage)"
        if pg is not None
        else "local (JSON, NanoVectorDB, NetworkX)",
        "chunks": n,
        "fixture_docs": sizes,
        "fixture": fixtures,
        "contestants": table,
        "ratios_by_docs": {
            str(size): {
                key: per_round_ratio([r[size] for r in rounds], SERVICE, peer, "chunks_per_s")
                for key, peer in W6_RATIOS.items()
            }
            for size in sizes
        },
        "figures_note": (
            f"rate_ratio_last_to_first = chunks/s at {last:,} documents / at {first:,} (per round); "
            f"rss_growth_mb = peak RSS at {last:,} - at {first:,}; ratios_by_docs: the service's "
            "chunks/s over each contestant's, median (min, max) of the per-round ratios"
        ),
        "failed": errors,
    }


async def run_w4(ctx: Context, cfg: Config) -> dict[str, Any]:
    p50: list[float] = []
    p99: list[float] = []
    stages: dict[str, list[float]] = {stage: [] for stage in W4_STAGES}
    for round_no in range(1, cfg.rounds + 1):
        latencies, round_stages = await w4_latency(ctx, cfg.sizes.w4_jobs)
        p50.append(percentile(latencies, 50))
        p99.append(percentile(latencies, 99))
        for stage, values in round_stages.items():
            stages[stage] += values
        log(f"W4 round {round_no}: p50 {p50[-1]:.2f} ms, p99 {p99[-1]:.2f} ms, max {max(latencies):.2f} ms")
    return {
        "jobs": cfg.sizes.w4_jobs,
        "p50_ms": summary(p50),
        "p99_ms": summary(p99),
        "stages_ms": {
            stage: {"p50": percentile(values, 50), "p99": percentile(values, 99)} for stage, values in stages.items()
        },
        "stages_note": "accept = POST sent -> created_at; pickup = created_at -> started_at; "
        "process = started_at -> completed_at; notify = completed_at -> ingestion.completed received",
        "targets": {"p99_ms_below": TARGETS["w4_p99_ms"]},
    }


async def run_w5(ctx: Context, cfg: Config) -> dict[str, Any]:
    p50: list[float] = []
    p99: list[float] = []
    missed: list[float] = []
    cpu: dict[str, list[float]] = {"service_cpu_us_per_frame": [], "harness_cpu_us_per_frame": []}
    for round_no in range(1, cfg.rounds + 1):
        result = await w5_fanout(ctx, cfg.sizes.w5_clients, cfg.sizes.w5_events, cfg.sse_rate)
        for key, values in cpu.items():
            values.append(result[key])
        latencies = result["latencies"]
        if not latencies:
            raise BenchError("W5: no event reached any client")
        p50.append(percentile(latencies, 50))
        p99.append(percentile(latencies, 99))
        missed.append(float(result["missed"]))
        log(f"W5 round {round_no}: p50 {p50[-1]:.2f} ms, p99 {p99[-1]:.2f} ms, missed {result['missed']}")
    return {
        "clients": cfg.sizes.w5_clients,
        "events": cfg.sizes.w5_events,
        "rate_per_s": cfg.sse_rate,
        "p50_ms": summary(p50),
        "p99_ms": summary(p99),
        "missed": summary(missed),
        **{key: summary(values) for key, values in cpu.items()},
        "targets": {"p99_ms_below": TARGETS["w5_p99_ms"], "missed": 0},
    }


# W7's processors: the no-op one, and one taking this long per chunk, so that the
# backlog still waits when the small job arrives (the no-op pool drains 2,000 chunks
# about as fast as they are POSTed).
W7_SLOW_MS_PER_CHUNK = 10.0


async def run_w7(ctx: Context, cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {"backlog": cfg.sizes.w7_backlog, "urgent_chunks": cfg.sizes.w7_urgent}
    for variant, ms_per_chunk in (("noop", 0.0), ("slow", W7_SLOW_MS_PER_CHUNK)):
        figures: list[dict[str, float]] = []
        for round_no in range(1, cfg.rounds + 1):
            figures.append(await w7_priority(ctx, cfg.sizes.w7_backlog, cfg.sizes.w7_urgent, ms_per_chunk))
            log(f"W7 {variant} round {round_no}: " + ", ".join(f"{k}={v:,.3f}" for k, v in figures[-1].items()))
        out[variant] = {"ms_per_chunk": ms_per_chunk, **{key: summary([f[key] for f in figures]) for key in figures[0]}}
    out["targets"] = {"high_seconds_below": TARGETS["w7_high_seconds"]}
    return out


# --- issue 19: progress, cancel, W7 on LightRAG (bench/pipeline.py) ----------------------------
async def pipeline_rounds(
    rctx: RealContext, cfg: Config, name: str, chat_ms: int, runner: Callable[[Standin], Awaitable[dict[str, float]]]
) -> dict[str, Any]:
    """cfg.real_rounds runs of `runner` against one stand-in at chat_ms (embeddings
    pipeline_embedding_delay_ms); every figure summarised over the rounds."""
    standin = await start_standin(
        cfg.service_python, rctx.infra.logs, chat_ms, f"{name}-standin", cfg.pipeline_embedding_delay_ms
    )
    runs: list[dict[str, float]] = []
    try:
        for round_no in range(1, cfg.real_rounds + 1):
            runs.append(await runner(standin))
            log(f"{name} round {round_no}: " + ", ".join(f"{k}={v:,.2f}" for k, v in runs[-1].items()))
    finally:
        standin.proc.stop()
    return {
        "llm_delay_ms": chat_ms,
        "embedding_delay_ms": cfg.pipeline_embedding_delay_ms,
        "llm_max_async": rctx.settings.llm_max_async,
        "texts": "recurring",
        **{key: summary([run[key] for run in runs]) for key in runs[0]},
    }


async def run_progress(rctx: RealContext, cfg: Config) -> dict[str, Any]:
    n, chat_ms = cfg.sizes.progress_chunks, cfg.progress_delay_ms
    out = await pipeline_rounds(
        rctx, cfg, "progress", chat_ms, lambda standin: progress_run(rctx, standin, n, chat_ms, cfg.pipeline_limit_s)
    )
    out = {"chunks": n, **out}
    out["note"] = (
        "longest_gap_s: between consecutive ingestion.progress events of the job (arrival over SSE), the job's "
        "acceptance (the POST's 202) counting as the first (longest_gap_between_events_s: without it); a step = "
        "chunks counted by one event (processed + failed, the first from 0); first_progress_s from the POST"
    )
    out["targets"] = {
        "longest_gap_s_at_most": TARGETS["progress_longest_gap_s"],
        "largest_step_chunks_at_most": TARGETS["progress_largest_step_chunks"],
    }
    return out


async def run_cancel(rctx: RealContext, cfg: Config) -> dict[str, Any]:
    n, chat_ms, after = cfg.sizes.cancel_chunks, cfg.cancel_delay_ms, cfg.cancel_after_s
    out = await pipeline_rounds(
        rctx,
        cfg,
        "cancel",
        chat_ms,
        lambda standin: cancel_run(rctx, standin, n, chat_ms, after, cfg.pipeline_limit_s),
    )
    out = {"cancel_after_s_asked": after, **out}
    out["note"] = (
        "chunks_at_cancel = the cancel's answer (chunks_in_lightrag); chunks_in_lightrag_final = the job's documents "
        "PROCESSED in LightRAG (GET /jobs/{id}/verify) once the service is idle (GET /queue: nothing waiting or "
        "pending); beyond_cancel_chunks = final - at cancel; answer_exact = 1 when the answer was the final number"
    )
    out["targets"] = {"beyond_cancel_chunks_at_most": TARGETS["cancel_beyond_chunks"], "answer_exact": 1}
    return out


async def run_w7rag(rctx: RealContext, cfg: Config) -> dict[str, Any]:
    backlog, urgent, chat_ms = cfg.sizes.w7rag_backlog, cfg.sizes.w7rag_urgent, cfg.w7rag_delay_ms
    out = await pipeline_rounds(
        rctx, cfg, "w7rag", chat_ms, lambda standin: w7rag_run(rctx, standin, backlog, urgent, cfg.pipeline_limit_s)
    )
    out = {"backlog": backlog, "urgent_chunks": urgent, **out}
    out["note"] = (
        "the LightRAG processor: backlog POSTed in jobs of 1,000 (normal), then a job of urgent_chunks at priority "
        "high; high_seconds = its POST -> its ingestion.completed over SSE (complete 0: cut at the limit); "
        "high_backlog_left = backlog chunks not yet counted then; the backlog is then cancelled"
    )
    out["targets"] = {"high_seconds_at_most": TARGETS["w7rag_high_seconds"]}
    return out


# --- the table ---------------------------------------------------------------------------------
def fmt(value: float | None, unit: str) -> str:
    if value is None or value != value:  # not measured, or NaN (e.g. a gap with one progress event)
        return "-"
    if unit == "/s":
        return f"{value:,.0f}/s" if value >= 100 else f"{value:.2f}/s"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value * 100:.0f}%"
    if unit == "s":
        return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "pct":
        return f"{value:.0f}%"
    return f"{value:,.0f}"


def row(
    workload: str, figure: str, stats: dict[str, Any] | None, unit: str, target: str = "", met: bool | None = None
) -> list[str]:
    if not stats:
        return [workload, figure, "-", "-", target, "n/a" if target else "", ""]
    spread = f"{fmt(stats['min'], unit)} - {fmt(stats['max'], unit)}"
    verdict = "" if met is None else ("met" if met else "MISSED")
    return [workload, figure, fmt(stats["median"], unit), spread, target, verdict, ""]


def real_rows(label: str, workload: dict[str, Any]) -> list[list[str]]:
    """One row per contestant: chunks/s, and beside it CPU, peak RSS and the stand-in's call counts."""
    rows: list[list[str]] = []
    for name, entry in workload["contestants"].items():
        if "chunks_per_s" not in entry:
            rows.append([label, name, entry.get("reason", "?")[:70], "", "", "", ""])
        else:
            figure = f"{name} chunks/s" + ("" if entry["complete"]["min"] >= 1 else " (INCOMPLETE)")
            rows.append(row(label, figure, entry["chunks_per_s"], "/s"))
            rows[-1][-1] = (
                f"CPU {entry['cpu_s']['median']:.1f} s, RSS {entry['peak_rss_mb']['median']:.0f} MB, "
                f"chat {entry['llm_calls']['median']:,.0f}, emb {entry['embedding_calls']['median']:,.0f}"
            )
        label = ""
    return rows


def build_table(results: dict[str, Any]) -> str:
    rows: list[list[str]] = [
        ["workload", "figure", "median", "min - max", "target", "verdict", "W1: CPU ms/1k worker redis enqueuer"]
    ]
    w = results["workloads"]
    if "w1_pool_overhead" in w:
        w1 = w["w1_pool_overhead"]
        label = f"W1 pool overhead ({w1['chunks']:,} no-op)"
        for name, entry in w1["contestants"].items():
            figure = f"{name} {entry.get('version', '')}".strip()
            if "median" in entry:
                rows.append(row(label, figure, entry, "/s"))
                cpu = entry["cpu_ms_per_1k"]
                rows[-1][-1] = f"{cpu['consumer']:.0f} {cpu['redis']:.0f} {cpu['enqueuer']:.0f}"
            else:
                rows.append([label, figure, entry.get("reason", "?")[:70], "", "", "", ""])
            label = ""
        ratio = w1["ratio_to_fastest_peer"]
        target = TARGETS["w1_ratio_to_fastest_peer"]
        met = ratio is not None and ratio["median"] >= target
        rows.append(row("", f"ratio to fastest peer ({w1['fastest_peer']})", ratio, "x", f">= {target:.0f}x", met))
        ratio = w1["ratio_to_floor"]
        target = TARGETS["w1_ratio_to_floor"]
        met = ratio is not None and ratio["median"] >= target
        rows.append(row("", "ratio to floor (same client stack)", ratio, "%", f">= {target:.0%}", met))
        rows.append(row("", "ratio to floor + hiredis (info)", w1["ratio_to_floor_hiredis"], "%"))
    if "w2_real_ingestion" in w:
        rows += w2_rows(w["w2_real_ingestion"])
    if "w3_llm_bound" in w:
        rows += w3_rows(w["w3_llm_bound"])
    if "w8_scaleout" in w:
        rows += w8_rows(w["w8_scaleout"])
    if "w4_latency" in w:
        w4 = w["w4_latency"]
        label = f"W4 latency ({w4['jobs']} 1-chunk jobs)"
        rows.append(row(label, "POST -> ingestion.completed p50", w4["p50_ms"], "ms"))
        p99 = w4["p99_ms"]
        target = TARGETS["w4_p99_ms"]
        rows.append(row("", "POST -> ingestion.completed p99", p99, "ms", f"< {target:.0f} ms", p99["median"] < target))
        parts = ", ".join(f"{stage} {values['p50']:.1f}" for stage, values in w4["stages_ms"].items())
        rows.append(["", f"p50 by stage (ms): {parts}", "", "", "", "", ""])
    if "w5_sse_fanout" in w:
        w5 = w["w5_sse_fanout"]
        label = f"W5 SSE fan-out ({w5['clients']} x {w5['events']:,} @ {w5['rate_per_s']:.0f}/s)"
        rows.append(row(label, "delivery latency p50", w5["p50_ms"], "ms"))
        p99 = w5["p99_ms"]
        target = TARGETS["w5_p99_ms"]
        rows.append(row("", "delivery latency p99", p99, "ms", f"< {target:.0f} ms", p99["median"] < target))
        missed = w5["missed"]
        rows.append(row("", "events missed (all clients)", missed, "", "0", missed["max"] == 0))
        service_cpu = w5["service_cpu_us_per_frame"]["median"]
        harness_cpu = w5["harness_cpu_us_per_frame"]["median"]
        note = f"CPU per delivered frame: service {service_cpu:.0f} us, clients (harness) {harness_cpu:.0f} us"
        rows.append(["", note, "", "", "", "", ""])
    for key, storage in (("w6_growth", "local"), ("w6pg_growth", "PostgreSQL")):
        if key not in w:
            continue
        w6 = w[key]
        docs = "/".join(f"{d:,}" for d in w6["fixture_docs"])
        label = f"W6 growth, {storage} ({w6['chunks']} chunks into {docs} docs)"
        first, last = w6["fixture_docs"][0], w6["fixture_docs"][-1]
        for name, entry in w6["contestants"].items():
            for docs, figures in entry["by_docs"].items():
                rows.append(row(label, f"{name} at {int(docs):,} docs: chunks/s", figures.get("chunks_per_s"), "/s"))
                label = ""
                if "peak_rss_mb" in figures:
                    rss, cpu = figures["peak_rss_mb"]["median"], figures["cpu_s"]["median"]
                    rows[-1][-1] = f"RSS {rss:.0f} MB, CPU {cpu:.1f} s"
            ratio = entry.get("rate_ratio_last_to_first")
            rows.append(row("", f"{name}: chunks/s at {last:,} / at {first:,}", ratio, "x"))
            rows.append(row("", f"{name}: RSS growth {first:,} -> {last:,}", entry.get("rss_growth_mb"), "MB"))
            if "reason" in entry:
                rows.append(["", f"  {entry['reason'][:90]}", "", "", "", "", ""])
        for docs, ratios in w6.get("ratios_by_docs", {}).items():
            for key, peer in W6_RATIOS.items():
                if ratios.get(key):
                    rows.append(row("", f"ratio service / {peer} at {int(docs):,} docs", ratios[key], "x"))
    if "w7_priority" in w:
        rows += w7_rows(w["w7_priority"])
    rows += pipeline_rows(w)
    for name, error in results.get("errors", {}).items():
        rows.append([name, f"FAILED: {error}"[:100], "", "", "", "", ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def w8_args(cfg: Config) -> tuple[int, tuple[int, ...], int, float]:
    return cfg.sizes.w8_chunks, cfg.w8_delays_ms, cfg.w8_cluster_cap, cfg.pipeline_limit_s


def w8_rows(w8: dict[str, Any]) -> list[list[str]]:
    """Per chat latency: each cell's chunks/s and its ratio to one host; LLM busy; chat calls per chunk."""
    rows: list[list[str]] = []
    targets = w8["targets"]
    for chat_ms, cells in w8["by_latency"].items():
        label = (
            f"W8 worker hosts ({w8['chunks']} chunks, recurring texts, PostgreSQL, lab stand-in chat {chat_ms} ms, "
            f"{w8['llm_max_async']} slots per host)"
        )
        for name, cell in cells.items():
            ratio = cell["ratio_to_one_host"]
            if cell.get("kills"):
                spent = cell["chat_calls_to_clean_two_hosts"]
                most = targets["chat_calls_with_kills_to_clean_at_most"]
                figure = {"median": spent, "min": spent, "max": spent}
                rows.append(row(label, f"{name}: chat calls to the clean run's", figure, "x", f"<= {most:.2f}x"))
                rows[-1][5] = "met" if spent <= most else "MISSED"
                label = ""
                note = f"  {cell['kills']:.0f} kills, {cell['seconds']:.1f} s, chat {cell['chat_calls']:.0f}"
                rows.append(["", note + ("" if cell["complete"] else " (INCOMPLETE)"), "", "", "", "", ""])
                continue
            if cell["hosts"] == 1:
                want, verdict = "", None
            elif cell["cluster_cap"]:
                want = f">= {targets['two_hosts_capped_ratio_at_least']:.1f}x"
                verdict = ratio >= targets["two_hosts_capped_ratio_at_least"]
            else:
                want = f">= {targets['two_hosts_ratio_at_least']:.1f}x"
                verdict = ratio >= targets["two_hosts_ratio_at_least"]
            figure = {"median": ratio, "min": ratio, "max": ratio}
            rows.append(row(label, f"{name}: chunks/s to 1 host's", figure, "x", want, verdict))
            label = ""
            busy = cell["llm_busy_percent"]
            note = (
                f"  {cell['chunks_per_s']:.2f} chunks/s, {cell['seconds']:.1f} s, LLM busy {busy:.0f}% "
                f"of {cell['slots']:.0f} slots (target >= {targets['llm_busy_percent_at_least']:.0f}%), "
                f"chat {cell['chat_calls']:.0f} ({cell['chat_calls_per_chunk']:.2f}/chunk), CPU {cell['cpu_s']:.1f} s"
                + ("" if cell["complete"] else " (INCOMPLETE)")
            )
            rows.append(["", note, "", "", "", "", ""])
    return rows


def w2_rows(w2: dict[str, Any]) -> list[list[str]]:
    """Per cell (LLM cache on / off): every contestant's chunks/s; the service's ratio to
    lightrag-server and, beside it, to the true floor (lightrag-floor: its overhead)."""
    rows: list[list[str]] = []
    storage = ", PostgreSQL storages" if w2.get("storage") == "postgres" else ""
    cells = w2.get("cells") or {"": w2}
    for cell in cells.values():
        cache = f", LLM cache {on_off(cell['llm_cache'])}" if "llm_cache" in cell else ""
        label = f"W2 real ingestion ({w2['chunks']:,} chunks, stand-in at once{storage}{cache})"
        rows += real_rows(label, cell)
        ratios = cell["ratios"]
        floor = ratios.get("service_to_lightrag_floor")
        target = TARGETS["w2_ratio_to_lightrag_floor"]
        rows.append(row("", "ratio service / lightrag-server (chunks/s)", ratios["service_to_lightrag_server"], "x"))
        rows.append(
            row(
                "",
                "ratio service / lightrag-floor (the true floor)",
                floor,
                "x",
                f">= {target:.1f}x",
                floor["median"] >= target if floor else None,
            )
        )
        rows.append(row("", "ratio service / lightrag-inprocess (flush per doc)", ratios["service_to_inprocess"], "x"))
        rows.append(row("", "CPU s ratio service / lightrag-server", ratios["cpu_service_to_lightrag_server"], "x"))
        rss = cell["contestants"].get(SERVICE, {}).get("peak_rss_mb")
        target = TARGETS["w2_peak_rss_mb"]
        met = rss["max"] < target if rss else None
        rows.append(row("", "service peak RSS (VmHWM)", rss, "MB", f"< {target:.0f} MB", met))
    return rows


def w3_rows(w3: dict[str, Any]) -> list[list[str]]:
    """Per cell (llm_max_async): every contestant's LLM busy %; the service's verdict: >= 90 % and
    above lightrag-server in the same cell."""
    rows: list[list[str]] = []
    storage = ", PostgreSQL" if w3.get("storage") == "postgres" else ""
    delays = f"lab stand-in chat {w3['llm_delay_ms']} ms, emb {w3['embedding_delay_ms']} ms"
    label = f"W3 LLM-bound ({w3['chunks']} chunks, {w3.get('texts', 'varied')} texts, {delays}{storage})"
    target = TARGETS["w3_llm_busy_percent"] / 100
    cells = w3.get("cells") or {str(w3["llm_max_async"]): w3}
    for slots, cell in cells.items():
        contestants = cell["contestants"]
        server = contestants.get(SERVER, {}).get("efficiency")
        for name, entry in contestants.items():
            eff = entry.get("efficiency")
            verdict = None
            if name == SERVICE:
                verdict = bool(eff) and eff["median"] >= target and (server is None or eff["median"] > server["median"])
            want = f">= {target:.0%}" + (", > server" if server else "") if name == SERVICE else ""
            rows.append(row(label, f"slots {slots}, {name}: LLM busy", eff, "%", want, verdict))
            label = ""
            if eff:
                note = (
                    f"  actual {entry['seconds']['median']:.1f} s, ideal {entry['ideal_s']['median']:.1f} s, "
                    f"chat {entry['llm_calls']['median']:,.0f} ({entry['chat_calls_per_chunk']['median']:.2f}/chunk), "
                    f"embeddings {entry['embedding_calls']['median']:,.0f}, "
                    f"CPU {entry['cpu_s']['median']:.1f} s, RSS {entry['peak_rss_mb']['median']:.0f} MB"
                    + ("" if entry["complete"]["min"] >= 1 else " (INCOMPLETE)")
                )
                rows.append(["", note, "", "", "", "", ""])
            elif "reason" in entry:
                rows.append(["", f"  {entry['reason'][:90]}", "", "", "", "", ""])
        ratios = cell.get("ratios", {})
        parts = [
            f"{what} {fmt(ratios[key]['median'], 'x')}"
            for what, key in (
                ("lightrag-server", "service_to_lightrag_server"),
                ("lightrag-floor", "service_to_lightrag_floor"),
            )
            if ratios.get(key)
        ]
        if parts:
            rows.append(["", f"  slots {slots}: service chunks/s to " + ", to ".join(parts), "", "", "", "", ""])
    formula = f"busy = ideal / actual; ideal = chat calls x {w3['llm_delay_ms']} ms / llm_max_async (slots)"
    rows.append(["", formula, "", "", "", "", ""])
    return rows


def pipeline_rows(w: dict[str, Any]) -> list[list[str]]:
    """Issue 19's workloads: progress, cancel, W7 on LightRAG."""
    rows: list[list[str]] = []
    if "progress_events" in w:
        p = w["progress_events"]
        label = f"progress ({p['chunks']} chunks, lab stand-in chat {p['llm_delay_ms']} ms)"
        gap, step = TARGETS["progress_longest_gap_s"], TARGETS["progress_largest_step_chunks"]
        longest = p["longest_gap_s"]
        rows.append(
            row(
                label,
                "longest gap between progress events (from the 202)",
                longest,
                "s",
                f"<= {gap:.0f} s",
                ok(longest, gap),
            )
        )
        largest = p["largest_step_chunks"]
        rows.append(row("", "largest step (chunks per event)", largest, "", f"<= {step:.0f}", ok(largest, step)))
        rows.append(row("", "POST -> first progress event", p["first_progress_s"], "s"))
        rows.append(row("", "progress events / job seconds", p["progress_events"], ""))
        rows[-1][2] += f" / {fmt(p['seconds']['median'], 's')}"
        rows.append(row("", "LLM busy (chat calls per chunk beside)", p["llm_busy_percent"], "pct"))
        rows[-1][-1] = f"{p['chat_calls_per_chunk']['median']:.2f} calls/chunk"
    if "cancel_job" in w:
        c = w["cancel_job"]
        at = c["cancel_after_s_asked"]
        label = f"cancel ({c['chunks']['median']:.0f} chunks, lab stand-in chat {c['llm_delay_ms']} ms, at {at:g} s)"
        beyond = c["beyond_cancel_chunks"]
        limit = TARGETS["cancel_beyond_chunks"]
        rows.append(
            row(label, "chunks in LightRAG beyond the cancel's count", beyond, "", f"<= {limit:.0f}", ok(beyond, limit))
        )
        rows.append(row("", "the cancel's answer / final in LightRAG", c["chunks_at_cancel"], ""))
        rows[-1][2] += f" / {c['chunks_in_lightrag_final']['median']:.0f}"
        exact = c["answer_exact"]
        rows[-1][4:6] = ["answer = final", "met" if exact["min"] >= 1 else "MISSED"]
        rows.append(row("", "cancel -> idle", c["cancel_to_idle_s"], "s"))
        if c["finished_before_cancel"]["max"] > 0:
            rows.append(["", "  the job finished before the cancel in some round", "", "", "", "", ""])
    if "w7rag_priority" in w:
        r = w["w7rag_priority"]
        label = (
            f"W7 on LightRAG ({r['urgent_chunks']} behind {r['backlog']:,}, lab stand-in chat {r['llm_delay_ms']} ms)"
        )
        high = r["high_seconds"]
        limit = TARGETS["w7rag_high_seconds"]
        met = high["max"] <= limit and r["complete"]["min"] >= 1
        figure = "high: POST -> completed" + ("" if r["complete"]["min"] >= 1 else " (CUT at the limit)")
        rows.append(row(label, figure, high, "s", f"<= {limit:.0f} s", met))
        rows.append(row("", "  queue depth at its POST / backlog left at its end", r["high_depth_at_post"], ""))
        rows[-1][2] += f" / {r['high_backlog_left']['median']:.0f}"
    return rows


def ok(figure: dict[str, Any] | None, limit: float) -> bool:
    """A figure at most `limit` in every round (NaN, or none: not met)."""
    return figure is not None and bool(figure["max"] <= limit)  # NaN compares False


def w7_rows(w7: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    label = f"W7 priority ({w7['urgent_chunks']} chunks behind {w7['backlog']:,})"
    target = TARGETS["w7_high_seconds"]
    for variant in ("noop", "slow"):
        figures = w7[variant]
        name = "no-op" if variant == "noop" else f"{figures['ms_per_chunk']:.0f} ms/chunk"
        high = figures["high_seconds"]
        met = high["max"] < target
        rows.append(row(label, f"{name}, high: POST -> completed", high, "s", f"< {target:.0f} s", met))
        rows.append(row("", "  queue depth at its POST / backlog left at its end", figures["high_depth_at_post"], ""))
        rows[-1][2] += f" / {figures['high_backlog_left']['median']:.0f}"
        rows.append(row("", f"{name}, normal (comparison): POST -> completed", figures["normal_seconds"], "s"))
        rows.append(row("", "  queue depth at its POST / backlog left at its end", figures["normal_depth_at_post"], ""))
        rows[-1][2] += f" / {figures['normal_backlog_left']['median']:.0f}"
        label = ""
    return rows


# --- main --------------------------------------------------------------------------------------
def git_describe() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "roles"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" (templates modified)" if dirty.stdout.strip() else "")


def loadavg() -> list[str]:
    """1, 5 and 15 min load averages: anything else running on the machine skews every figure."""
    with open("/proc/loadavg") as handle:
        return handle.read().split()[:3]


async def run(cfg: Config) -> dict[str, Any]:
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="shield-bench-"))
    os.chmod(root, 0o755)  # noqa: S103 - PostgreSQL runs as user postgres and must reach its data dir
    infra = Infra(root)
    variables = render_service.role_variables()
    results: dict[str, Any] = {
        "meta": {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "smoke": cfg.smoke,
            "rounds": cfg.rounds,
            "real_rounds": cfg.real_rounds,
            "sizes": asdict(cfg.sizes),
            "git": git_describe(),
            "loadavg_before": loadavg(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "service_settings": {
                key: variables[f"orchestrator_workers_{key}"]
                for key in ("pool_size", "batch_size", "block_ms", "llm_max_async", "embedding_max_async")
            },
        },
        "workloads": {},
        "errors": {},
    }
    try:
        await infra.start()
        # the peer modules read these at import (here, for enqueueing, and in their workers)
        os.environ["BENCH_REDIS_URL"] = infra.redis_url
        os.environ["BENCH_CONCURRENCY"] = str(cfg.concurrency)
        launcher = ServiceLauncher(cfg.service_python, infra)
        ctx = Context(infra, launcher, sys.executable, cfg.concurrency)
        rctx = RealContext(infra, launcher, cfg.service_python, cfg.server_python)
        results["meta"]["lightrag_settings"] = asdict(rctx.settings)
        results["meta"]["llm_cache_cells"] = [on_off(cache) for cache in cfg.llm_cache]  # W2, W3 (BENCH_LLM_CACHE)
        if {"w2", "w3", "w6", "w6pg", "w8", *PIPELINE} & set(cfg.workloads):
            versions = {"service_venv": lightrag_version(cfg.service_python)}
            if {"w2", "w3", "w6", "w6pg"} & set(cfg.workloads) and SERVER in cfg.contestants:
                versions["lightrag_server_venv"] = lightrag_version(cfg.server_python)
            results["meta"]["lightrag_versions"] = versions
        steps: list[tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("w1", "w1_pool_overhead", lambda: run_w1(ctx, cfg)),
            ("w2", "w2_real_ingestion", lambda: run_real(rctx, cfg, "w2")),
            ("w3", "w3_llm_bound", lambda: run_real(rctx, cfg, "w3")),
            ("w4", "w4_latency", lambda: run_w4(ctx, cfg)),
            ("w5", "w5_sse_fanout", lambda: run_w5(ctx, cfg)),
            ("w6", "w6_growth", lambda: run_w6(rctx, cfg)),
            ("w6pg", "w6pg_growth", lambda: run_w6(rctx, cfg, "postgres")),
            ("w7", "w7_priority", lambda: run_w7(ctx, cfg)),
            ("progress", "progress_events", lambda: run_progress(rctx, cfg)),
            ("cancel", "cancel_job", lambda: run_cancel(rctx, cfg)),
            ("w7rag", "w7rag_priority", lambda: run_w7rag(rctx, cfg)),
            ("w8", "w8_scaleout", lambda: run_w8(rctx, cfg.service_python, *w8_args(cfg))),
        ]
        for short, key, step in steps:
            if short not in cfg.workloads:
                continue
            rounds = cfg.real_rounds if short in ("w2", "w3", "w6", "w6pg", "w8", *PIPELINE) else cfg.rounds
            log(f"{key}: {rounds} round(s)")
            t0 = time.monotonic()
            try:
                results["workloads"][key] = await step()
                for name, reason in results["workloads"][key].get("failed", {}).items():
                    results["errors"][f"{key} {name}"] = reason
            except Exception as exc:
                results["errors"][key] = f"{type(exc).__name__}: {exc}"[:600]
                log(f"{key} FAILED: {results['errors'][key]} (logs: {infra.logs})")
            log(f"{key}: {time.monotonic() - t0:.0f}s")
    finally:
        infra.stop()
        if cfg.keep or results["errors"]:
            log(f"kept {root} (logs under logs/)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    results["meta"]["wall_seconds"] = round(time.time() - started, 1)
    results["meta"]["loadavg_after"] = loadavg()
    results.update(headline(results["workloads"]))
    return results


def headline(workloads: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for, at the JSON's top level (None when not measured)."""

    def median(figure: Any) -> Any:
        return figure["median"] if isinstance(figure, dict) and "median" in figure else None

    w2, w3, w6, w6pg = (
        workloads.get(key, {}) for key in ("w2_real_ingestion", "w3_llm_bound", "w6_growth", "w6pg_growth")
    )
    service6 = w6.get("contestants", {}).get(SERVICE, {})
    progress, cancel, w7rag = (workloads.get(key, {}) for key in ("progress_events", "cancel_job", "w7rag_priority"))
    busy = [
        median(cell["contestants"].get(SERVICE, {}).get("llm_busy_percent")) for cell in w3.get("cells", {}).values()
    ]
    service6pg = w6pg.get("contestants", {}).get(SERVICE, {})
    return {
        "w2_ratio_to_lightrag_server": median(w2.get("ratios", {}).get("service_to_lightrag_server")),
        # issue 21: the service's overhead over the true floor (W2's first cell, as the ratio above)
        "w2_ratio_to_lightrag_floor": median(w2.get("ratios", {}).get("service_to_lightrag_floor")),
        "w3_efficiency": median(w3.get("contestants", {}).get(SERVICE, {}).get("efficiency")),
        "w6_rate_ratio_last_to_first": median(service6.get("rate_ratio_last_to_first")),
        "w6_rss_growth_mb": median(service6.get("rss_growth_mb")),
        "w6pg_rate_ratio_last_to_first": median(service6pg.get("rate_ratio_last_to_first")),
        "w6pg_rss_growth_mb": median(service6pg.get("rss_growth_mb")),
        # issue 19: the service's LLM busy % in its worst W3 cell, and the three workloads' figures
        "w3_llm_busy_percent_min": min((b for b in busy if b is not None), default=None),
        "progress_longest_gap_s": median(progress.get("longest_gap_s")),
        "progress_largest_step_chunks": median(progress.get("largest_step_chunks")),
        "cancel_beyond_chunks": median(cancel.get("beyond_cancel_chunks")),
        "w7rag_high_seconds": median(w7rag.get("high_seconds")),
    }


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    results = asyncio.run(run(cfg))
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(results, indent=2) + "\n")
    print(build_table(results))
    meta = results["meta"]
    print(
        f"\nwall time {meta['wall_seconds']:.0f}s; rounds: {cfg.rounds} "
        f"(W2/W3/W6, progress, cancel, w7rag: {cfg.real_rounds}); "
        f"load average before {' '.join(meta['loadavg_before'])}; figures in {cfg.output}"
    )
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
