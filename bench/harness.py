"""shield-orchestrator benchmark: runs the workloads, prints one table, writes the figures as JSON.

    bench/run.sh [--smoke] [--rounds N] [--only w1,w4] [--output PATH]

Run through bench/run.sh, which makes the virtualenvs: this harness and the peer
workers run on .venv-bench-peers, the service (and the floor consumer) on the
service's own virtualenv. See bench/README.md for what each workload measures.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infra import BENCH, REPO, BenchError, Infra, ServiceLauncher, log, percentile, render_service, summary
from workloads import (
    PEERS,
    W4_STAGES,
    Context,
    W1Run,
    ingest_real,
    w1_floor,
    w1_peer,
    w1_service,
    w4_latency,
    w5_fanout,
    w7_priority,
)

SERVICE = "shield-orchestrator"
FLOOR = "floor"
FLOOR_HIREDIS = "floor + hiredis"
TARGETS = {
    "w1_ratio_to_fastest_peer": 2.0,
    "w1_ratio_to_floor": 0.60,
    "w2_peak_rss_mb": 300.0,
    "w3_efficiency": 0.90,
    "w4_p99_ms": 20.0,
    "w5_p99_ms": 50.0,
    "w7_high_seconds": 5.0,
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
    w7_backlog: int
    w7_urgent: int


FULL = Sizes(20_000, 1_000, 1_000, 500, 200, 100, 1_000, 2_000, 5)
SMOKE = Sizes(1_000, 500, 10, 10, 20, 10, 50, 300, 5)
WORKLOADS = ("w1", "w2", "w3", "w4", "w5", "w7")


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
    w2_limit_s: float
    w3_limit_s: float
    service_python: str
    keep: bool


def parse_args(argv: list[str]) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round (the test's run)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (env BENCH_ROUNDS; default 3, smoke 1)")
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", ",".join(WORKLOADS)), help="e.g. w1,w4")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (env BENCH_OUTPUT)")
    args = parser.parse_args(argv)
    rounds = args.rounds or int(os.environ.get("BENCH_ROUNDS", "1" if args.smoke else "3"))
    default_output = BENCH / "results" / ("smoke.json" if args.smoke else "latest.json")
    output = args.output or Path(os.environ.get("BENCH_OUTPUT", str(default_output)))
    workloads = tuple(w for w in WORKLOADS if w in {part.strip() for part in args.only.split(",")})
    peers = tuple(p.strip() for p in os.environ.get("BENCH_PEERS", ",".join(p.name for p in PEERS)).split(","))
    default_service_python = REPO / ".venv-service" / "bin" / "python"
    return Config(
        smoke=args.smoke,
        rounds=max(rounds, 1),
        real_rounds=max(int(os.environ.get("BENCH_REAL_ROUNDS", "1")), 1),
        sizes=SMOKE if args.smoke else FULL,
        output=output,
        workloads=workloads,
        peers=tuple(p for p in peers if p),
        concurrency=int(os.environ.get("BENCH_CONCURRENCY", "32")),
        sse_rate=float(os.environ.get("BENCH_SSE_RATE", "50")),
        w3_delay_ms=int(os.environ.get("BENCH_W3_DELAY_MS", "50")),
        w2_limit_s=float(os.environ.get("BENCH_W2_LIMIT_S", "300")),
        w3_limit_s=float(os.environ.get("BENCH_W3_LIMIT_S", "180")),
        service_python=os.environ.get("BENCH_SERVICE_PYTHON", str(default_service_python)),
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
        (FLOOR, "floor", "service's venv (redis-py, no hiredis)", lambda: w1_floor(ctx, n, job, cfg.service_python)),
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
    for name, kind, setting, _runner in contestants:
        entry: dict[str, Any] = {"kind": kind, "setting": setting}
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
        "ratio_to_floor": ratio_summary(rates[SERVICE], rates[FLOOR]),
        "ratio_to_floor_hiredis": ratio_summary(rates[SERVICE], rates[FLOOR_HIREDIS]),
        "targets": {
            "ratio_to_fastest_peer": TARGETS["w1_ratio_to_fastest_peer"],
            "ratio_to_floor": TARGETS["w1_ratio_to_floor"],
        },
    }


async def run_real(ctx: Context, cfg: Config, workload: str) -> dict[str, Any]:
    llm_max_async = int(render_service.role_variables()["orchestrator_workers_llm_max_async"])
    n = cfg.sizes.w2_chunks if workload == "w2" else cfg.sizes.w3_chunks
    delay = 0 if workload == "w2" else cfg.w3_delay_ms
    limit = cfg.w2_limit_s if workload == "w2" else cfg.w3_limit_s
    figures: list[dict[str, float]] = []
    for round_no in range(1, cfg.real_rounds + 1):
        result = await ingest_real(ctx, n, delay, f"{workload}-service", within=limit)
        if workload == "w3":
            result["ideal_s"] = result["llm_calls"] * delay / 1000 / llm_max_async
            result["efficiency"] = result["ideal_s"] / result["seconds"]
        figures.append(result)
        log(f"{workload.upper()} round {round_no}: " + ", ".join(f"{k}={v:,.3f}" for k, v in result.items()))
    out: dict[str, Any] = {"chunks": n, "llm_delay_ms": delay, "llm_max_async": llm_max_async, "limit_s": limit}
    for key in figures[0]:
        out[key] = summary([f[key] for f in figures])
    if workload == "w2":
        out["targets"] = {"peak_rss_mb_below": TARGETS["w2_peak_rss_mb"]}
    else:
        out["formula"] = (
            f"efficiency = ideal / actual; ideal = LLM calls received by the stand-in (GET /stats, "
            f"POST /v1/chat/completions) x {delay} ms / llm_max_async ({llm_max_async}); actual = first POST -> "
            "ingestion.completed received"
        )
        out["targets"] = {"efficiency_at_least": TARGETS["w3_efficiency"]}
    return out


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


# --- the table ---------------------------------------------------------------------------------
def fmt(value: float | None, unit: str) -> str:
    if value is None:
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
    return f"{value:,.0f}"


def row(
    workload: str, figure: str, stats: dict[str, Any] | None, unit: str, target: str = "", met: bool | None = None
) -> list[str]:
    if not stats:
        return [workload, figure, "-", "-", target, "n/a" if target else "", ""]
    spread = f"{fmt(stats['min'], unit)} - {fmt(stats['max'], unit)}"
    verdict = "" if met is None else ("met" if met else "MISSED")
    return [workload, figure, fmt(stats["median"], unit), spread, target, verdict, ""]


def build_table(results: dict[str, Any]) -> str:
    rows: list[list[str]] = [
        ["workload", "figure", "median", "min - max", "target", "verdict", "CPU ms/1k: worker redis enqueuer"]
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
        w2 = w["w2_real_ingestion"]
        label = f"W2 real ingestion ({w2['chunks']:,} chunks)"
        rows.append(row(label, "chunks/s (LightRAG, stand-in at once)", w2["chunks_per_s"], "/s"))
        if w2["complete"]["min"] < 1:
            rows.append(row("", f"chunks done when cut at {w2['limit_s']:.0f}s (INCOMPLETE)", w2["chunks_done"], ""))
        rss = w2["peak_rss_mb"]
        rows.append(row("", "service peak RSS (VmHWM)", rss, "MB", "< 300 MB", rss["max"] < TARGETS["w2_peak_rss_mb"]))
    if "w3_llm_bound" in w:
        w3 = w["w3_llm_bound"]
        label = f"W3 LLM-bound ({w3['chunks']} chunks, {w3['llm_delay_ms']} ms)"
        eff = w3["efficiency"]
        target = TARGETS["w3_efficiency"]
        rows.append(row(label, "efficiency = ideal / actual", eff, "%", f">= {target:.0%}", eff["median"] >= target))
        if w3["complete"]["min"] < 1:
            rows.append(row("", f"chunks done when cut at {w3['limit_s']:.0f}s (INCOMPLETE)", w3["chunks_done"], ""))
        rows.append(row("", "actual (first POST -> completed)", w3["seconds"], "s"))
        rows.append(row("", "ideal", w3["ideal_s"], "s"))
        rows.append(row("", "LLM calls (chat)", w3["llm_calls"], ""))
        formula = f"ideal = LLM calls x {w3['llm_delay_ms']} ms / llm_max_async ({w3['llm_max_async']})"
        rows.append(["", formula, "", "", "", "", ""])
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
    if "w7_priority" in w:
        rows += w7_rows(w["w7_priority"])
    for name, error in results.get("errors", {}).items():
        rows.append([name, f"FAILED: {error}"[:100], "", "", "", "", ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


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
        ctx = Context(infra, ServiceLauncher(cfg.service_python, infra), sys.executable, cfg.concurrency)
        steps: list[tuple[str, str, Callable[[], Awaitable[dict[str, Any]]]]] = [
            ("w1", "w1_pool_overhead", lambda: run_w1(ctx, cfg)),
            ("w2", "w2_real_ingestion", lambda: run_real(ctx, cfg, "w2")),
            ("w3", "w3_llm_bound", lambda: run_real(ctx, cfg, "w3")),
            ("w4", "w4_latency", lambda: run_w4(ctx, cfg)),
            ("w5", "w5_sse_fanout", lambda: run_w5(ctx, cfg)),
            ("w7", "w7_priority", lambda: run_w7(ctx, cfg)),
        ]
        for short, key, step in steps:
            if short not in cfg.workloads:
                continue
            rounds = cfg.real_rounds if short in ("w2", "w3") else cfg.rounds
            log(f"{key}: {rounds} round(s)")
            t0 = time.monotonic()
            try:
                results["workloads"][key] = await step()
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
    return results


def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    results = asyncio.run(run(cfg))
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(results, indent=2) + "\n")
    print(build_table(results))
    meta = results["meta"]
    print(
        f"\nwall time {meta['wall_seconds']:.0f}s; rounds: {cfg.rounds} (W2/W3: {cfg.real_rounds}); "
        f"load average before {' '.join(meta['loadavg_before'])}; figures in {cfg.output}"
    )
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
