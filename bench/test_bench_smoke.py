"""The benchmark's smoke run: `bench/run.sh --smoke` ends well and reports every workload in numbers.

It proves the harness runs end to end (its own Redis and PostgreSQL, the rendered
service with the no-op and the LightRAG processor, the LLM stand-in, every peer);
the figures of a smoke run mean nothing.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def median(figure: Any) -> Any:
    assert isinstance(figure, dict), figure
    return figure["median"]


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
    assert "workload" in run.stdout and "W5" in run.stdout and "W7" in run.stdout, run.stdout  # the table
    results = json.loads(output.read_text())
    assert results["errors"] == {}
    workloads = results["workloads"]
    assert set(workloads) == {
        "w1_pool_overhead",
        "w2_real_ingestion",
        "w3_llm_bound",
        "w4_latency",
        "w5_sse_fanout",
        "w7_priority",
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
    assert median(w2["complete"]) == 1
    assert number(median(w2["chunks_per_s"])) and median(w2["chunks_per_s"]) > 0
    assert number(median(w2["peak_rss_mb"])) and median(w2["peak_rss_mb"]) > 0

    w3 = workloads["w3_llm_bound"]
    assert median(w3["llm_calls"]) > 0
    assert number(median(w3["efficiency"])) and 0 < median(w3["efficiency"]) <= 1.5
    assert "llm_max_async" in w3["formula"]

    w4 = workloads["w4_latency"]
    assert number(median(w4["p50_ms"])) and number(median(w4["p99_ms"]))
    assert median(w4["p50_ms"]) <= median(w4["p99_ms"])

    w5 = workloads["w5_sse_fanout"]
    assert number(median(w5["p50_ms"])) and number(median(w5["p99_ms"]))
    assert number(median(w5["missed"]))

    w7 = workloads["w7_priority"]
    assert w7["backlog"] > 0 and w7["urgent_chunks"] == 5
    for variant in ("noop", "slow"):
        for key in ("high_seconds", "normal_seconds"):
            assert number(median(w7[variant][key])) and median(w7[variant][key]) > 0, (variant, key, w7)
        for key in ("high_backlog_left", "normal_backlog_left", "high_depth_at_post", "normal_depth_at_post"):
            figure = median(w7[variant][key])
            assert number(figure) and 0 <= figure <= w7["backlog"] + w7["urgent_chunks"], (variant, key, w7)
