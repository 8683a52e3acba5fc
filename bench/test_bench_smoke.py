"""The benchmark's smoke run: `bench/run.sh --smoke` ends well and reports every workload in numbers.

It proves the harness runs end to end (its own Redis and PostgreSQL, the rendered
service with the no-op and the LightRAG processor, the LLM stand-in, every peer,
lightrag-server, LightRAG in-process, W6's fixtures on the local storages and in
PostgreSQL with pgvector, in a container, and issue 19's progress, cancel and W7 on
LightRAG with the lab/test LLM stand-in at 30 ms a call); the figures of a smoke run
mean nothing, but the checks below hold for any run, and so does what makes a
comparison of the LightRAG contestants fair (issue 21): every contestant complete,
the same LightRAG settings in each (as each one reports them in the JSON), the same
work (chat calls within CHAT_CALLS_SPREAD of each other).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REAL = ("shield-orchestrator", "lightrag-server", "lightrag-inprocess", "lightrag-floor")
PER_RUN = ("chunks_per_s", "seconds", "llm_calls", "embedding_calls", "cpu_s", "peak_rss_mb")
CHAT_CALLS_SPREAD = 0.10  # the contestants of one cell: most chat calls at most this much above the fewest


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def median(figure: Any) -> Any:
    assert isinstance(figure, dict), figure
    return figure["median"]


def positive(figure: Any) -> bool:
    return number(median(figure)) and median(figure) > 0


def assert_real_run(name: str, entry: dict[str, Any], chunks: int) -> None:
    """A contestant's W2/W3/W6 figures: the run completed, every chunk done, every figure a positive number."""
    assert entry.get("status", "ok") == "ok", (name, entry)
    assert entry["complete"]["min"] == 1 and entry["chunks_done"]["min"] == chunks, (name, entry)
    for key in PER_RUN:
        assert positive(entry[key]), (name, key, entry)


def assert_fair(where: str, contestants: dict[str, dict[str, Any]], slots: int, cache: bool) -> None:
    """The contestants of one cell ran LightRAG with the same settings (those of the cell:
    its LLM slots and cache) and did the same work (chat calls within CHAT_CALLS_SPREAD)."""
    settings = {name: entry["lightrag_settings"]["effective"] for name, entry in contestants.items()}
    first = next(iter(settings.values()))
    for name, effective in settings.items():
        differ = {key: (effective.get(key), first.get(key)) for key in set(effective) | set(first)}
        assert all(a == b for a, b in differ.values()), (where, name, differ)
        assert effective["llm_model_max_async"] == slots, (where, name, effective)
        assert effective["enable_llm_cache"] is cache, (where, name, effective)
        assert effective["enable_llm_cache_for_entity_extract"] is cache, (where, name, effective)
    calls = {name: median(entry["llm_calls"]) for name, entry in contestants.items()}
    assert min(calls.values()) > 0 and max(calls.values()) <= (1 + CHAT_CALLS_SPREAD) * min(calls.values()), (
        where,
        calls,
    )


def test_smoke_run_reports_every_workload(tmp_path: Path) -> None:
    # Like the service tests, the harness needs root (PostgreSQL runs as user postgres).
    assert os.geteuid() == 0, "run the tests as root: the benchmark starts PostgreSQL as user postgres"
    output = tmp_path / "smoke.json"
    run = subprocess.run(
        [str(BENCH / "run.sh"), "--smoke"],
        env={**os.environ, "BENCH_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        timeout=900,  # a first run also builds .venv-bench-peers
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-4000:]}"
    assert all(name in run.stdout for name in ("workload", "W5", "W6", "W7", "progress", "cancel")), run.stdout
    results = json.loads(output.read_text())
    assert results["errors"] == {}
    workloads = results["workloads"]
    assert set(workloads) == {
        "w1_pool_overhead",
        "w2_real_ingestion",
        "w3_llm_bound",
        "w4_latency",
        "w5_sse_fanout",
        "w6_growth",
        "w6pg_growth",
        "w7_priority",
        "progress_events",
        "cancel_job",
        "w7rag_priority",
        "w8_scaleout",
    }

    w1 = workloads["w1_pool_overhead"]
    for name, entry in w1["contestants"].items():
        if entry["kind"] == "peer" and entry.get("status") != "ok":
            assert entry["reason"], name  # a peer that cannot run here says why
        else:
            assert number(entry["median"]) and entry["median"] > 0, (name, entry)
    assert w1["fastest_peer"] in w1["contestants"]
    assert number(median(w1["ratio_to_fastest_peer"]))
    assert number(median(w1["ratio_to_floor"]))

    w2 = workloads["w2_real_ingestion"]
    assert w2["cells"] and len(w2["cells"]) == len(w2["llm_cache"]), w2["cells"].keys()
    for label, cell in w2["cells"].items():
        assert set(cell["contestants"]) == set(REAL), label
        for name, entry in cell["contestants"].items():
            assert_real_run(f"W2 {label} {name}", entry, w2["chunks"])
        assert_fair(f"W2 {label}", cell["contestants"], cell["llm_max_async"], cell["llm_cache"])
        for ratio in (
            "service_to_lightrag_server",
            "service_to_lightrag_floor",
            "service_to_inprocess",
            "lightrag_server_to_inprocess",
        ):
            assert positive(cell["ratios"][ratio]), (label, ratio)
    assert number(results["w2_ratio_to_lightrag_server"]) and number(results["w2_ratio_to_lightrag_floor"])

    w3 = workloads["w3_llm_bound"]
    assert w3["texts"] == "recurring" and w3["llm_slots"]
    assert len(w3["cells"]) == len(w3["llm_slots"]) * len(w3["llm_cache"]), w3["cells"].keys()
    assert {cell["llm_max_async"] for cell in w3["cells"].values()} == set(w3["llm_slots"])
    for label, cell in w3["cells"].items():
        assert set(cell["contestants"]) == set(REAL)
        for name, entry in cell["contestants"].items():
            assert_real_run(f"W3 {label} {name}", entry, w3["chunks"])
            # the LLM slots cannot be more than busy: ideal <= wall
            assert 0 < median(entry["llm_busy_percent"]) <= 100, (label, name, entry["llm_busy_percent"])
            assert positive(entry["chat_calls_per_chunk"]) and positive(entry["ideal_s"]), (label, name)
        assert_fair(f"W3 {label}", cell["contestants"], cell["llm_max_async"], cell["llm_cache"])
    assert "llm_max_async" in w3["formula"]
    assert number(results["w3_efficiency"]) and results["w3_efficiency"] > 0
    assert number(results["w3_llm_busy_percent_min"]) and 0 < results["w3_llm_busy_percent_min"] <= 100

    w4 = workloads["w4_latency"]
    assert number(median(w4["p50_ms"])) and number(median(w4["p99_ms"]))
    assert median(w4["p50_ms"]) <= median(w4["p99_ms"])

    w5 = workloads["w5_sse_fanout"]
    assert number(median(w5["p50_ms"])) and number(median(w5["p99_ms"]))
    assert w5["missed"]["max"] == 0, w5["missed"]  # every event reached every client

    for key in ("w6_growth", "w6pg_growth"):  # local storages, then PostgreSQL (pgvector container)
        w6 = workloads[key]
        assert len(w6["fixture_docs"]) >= 2 and w6["fixture_docs"][0] == 0
        assert set(w6["contestants"]) == set(REAL)  # every contestant, the true floor included (issue 21)
        storages = "PostgreSQL storages" if key == "w6pg_growth" else "local storages"
        for name, entry in w6["contestants"].items():
            assert entry["status"] == "ok", (key, name, entry)
            assert storages in entry["setting"], (key, name, entry["setting"])  # says what it ran on
            assert set(entry["by_docs"]) == {str(docs) for docs in w6["fixture_docs"]}, name
            for docs, figures in entry["by_docs"].items():
                assert_real_run(f"{key} {name} at {docs}", figures, w6["chunks"])
        for docs in w6["fixture_docs"]:
            cell = {name: entry["by_docs"][str(docs)] for name, entry in w6["contestants"].items()}
            for name, entry in w6["contestants"].items():
                cell[name]["lightrag_settings"] = entry["lightrag_settings"]
            slots = results["meta"]["lightrag_settings"]["llm_max_async"]
            assert_fair(f"{key} at {docs}", cell, slots, results["meta"]["lightrag_settings"]["llm_cache"])
            assert positive(entry["rate_ratio_last_to_first"]), (key, name)
            assert number(median(entry["rss_growth_mb"])), (key, name)
        for docs in w6["fixture_docs"]:  # the service's rate over each peer's, at every size
            ratios = w6["ratios_by_docs"][str(docs)]
            assert positive(ratios["service_to_lightrag_server"]) and positive(ratios["service_to_lightrag_floor"])
        prefix = key.split("_", 1)[0]
        assert number(results[f"{prefix}_rate_ratio_last_to_first"]) and number(results[f"{prefix}_rss_growth_mb"])
    assert workloads["w6pg_growth"]["storage"].startswith("postgresql")
    w7 = workloads["w7_priority"]
    assert w7["backlog"] > 0 and w7["urgent_chunks"] == 5
    for variant in ("noop", "slow"):
        for key in ("high_seconds", "normal_seconds"):
            assert number(median(w7[variant][key])) and median(w7[variant][key]) > 0, (variant, key, w7)
        for key in ("high_backlog_left", "normal_backlog_left", "high_depth_at_post", "normal_depth_at_post"):
            figure = median(w7[variant][key])
            assert number(figure) and 0 <= figure <= w7["backlog"] + w7["urgent_chunks"], (variant, key, w7)

    # issue 19's workloads (bench/pipeline.py): every figure a number, and what each one means holds
    for key in ("progress_events", "cancel_job", "w7rag_priority"):
        for name, figure in workloads[key].items():
            if isinstance(figure, dict) and "median" in figure:
                assert number(median(figure)), (key, name, figure)
    progress = workloads["progress_events"]
    assert median(progress["complete"]) == 1 and median(progress["chunks_done"]) == progress["chunks"]
    assert median(progress["progress_events"]) >= 2, progress  # a gap needs two events
    assert median(progress["first_progress_s"]) > 0, progress
    assert median(progress["longest_gap_s"]) >= median(progress["longest_gap_between_events_s"]) >= 0, progress
    assert 1 <= median(progress["largest_step_chunks"]) <= progress["chunks"], progress
    assert 0 < median(progress["llm_busy_percent"]) <= 100, progress
    cancel = workloads["cancel_job"]
    at_cancel, final = median(cancel["chunks_at_cancel"]), median(cancel["chunks_in_lightrag_final"])
    assert 0 <= at_cancel <= final <= median(cancel["chunks"]), cancel
    assert median(cancel["beyond_cancel_chunks"]) == final - at_cancel
    # Admission is atomic with the cancel (issue 19): what the answer counts is what ends in LightRAG.
    assert median(cancel["answer_exact"]) == 1 and median(cancel["cancel_to_idle_s"]) >= 0, cancel
    w7rag = workloads["w7rag_priority"]
    assert median(w7rag["complete"]) == 1 and median(w7rag["high_seconds"]) > 0, w7rag
    assert 0 <= median(w7rag["high_backlog_left"]) <= w7rag["backlog"], w7rag
    for key in ("progress_longest_gap_s", "progress_largest_step_chunks", "cancel_beyond_chunks", "w7rag_high_seconds"):
        assert number(results[key]), key

    # issue 20's W8 (bench/scaleout.py): every cell done on PostgreSQL, and each chunk's
    # extraction paid exactly once on 1 host and on 2 (the LLM cache, written from any host)
    w8 = workloads["w8_scaleout"]
    assert w8["by_latency"], w8
    for chat_ms, cells in w8["by_latency"].items():
        assert set(cells) >= {"1 host", "2 hosts"}, cells
        for name, cell in cells.items():
            assert cell["complete"] == 1 and cell["chunks_done"] == w8["chunks"], (chat_ms, name, cell)
            assert 0 < cell["llm_busy_percent"] <= 100 and cell["chunks_per_s"] > 0, (chat_ms, name, cell)
            if not cell["kills"]:
                assert cell["calls_extraction"] == w8["chunks"], (chat_ms, name, cell)
        assert cells["1 host"]["ratio_to_one_host"] == 1.0
