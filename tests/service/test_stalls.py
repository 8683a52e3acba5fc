"""A slow LLM is visible (issue 19): with the stand-in answering chat calls in 1.5 s
and a stall threshold of 1 s, the service logs each stalled call once, shows the
calls in /health/detailed while they wait, and counts them in /metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.service.conftest import ServiceFactory
from tests.support.helpers import ingest, make_chunks, wait_job
from tests.support.servers import Standin, wait_until
from tests.support.service import EMBEDDING_DIM

STALL_LINE = re.compile(r"llm_endpoint call has waited \d+s, over the 1s stall threshold")


def _stalled_now(client: Any) -> dict[str, Any] | None:
    report = client.get("/health/detailed").json()["endpoint_calls"]
    llm = report["endpoints"]["llm_endpoint"]
    return report if llm["stalled_now"] >= 1 else None


def test_a_slow_llm_is_logged_shown_and_counted(service_factory: ServiceFactory, tmp_path: Path) -> None:
    standin = Standin.start(
        tmp_path,
        embedding_dim=EMBEDDING_DIM,
        name="standin-slow",
        extra=["--delay-ms", "1500", "--embedding-delay-ms", "0"],
    )
    try:
        svc = service_factory(
            llm_base_url=standin.base_url, embedding_base_url=standin.base_url, llm_stall_seconds=1
        ).start()
        client = svc.client()
        job_id = ingest(client, make_chunks(2, prefix="stall"))["job_id"]
        report = wait_until(lambda: _stalled_now(client), 60, "a stalled LLM call in /health/detailed")
        llm = report["endpoints"]["llm_endpoint"]
        assert report["stall_threshold_seconds"] == 1
        assert llm["address"] == standin.base_url
        assert llm["in_flight"] >= llm["stalled_now"] >= 1 and llm["oldest_wait_seconds"] >= 1
        assert report["endpoints"]["embedding_endpoint"]["stalled_total"] == 0
        done = wait_job(client, job_id, 180)
        assert done["status"] == "completed", done
        metrics = client.get("/metrics").text
        total = float(re.search(r'shield_endpoint_stalled_calls_total\{endpoint="llm_endpoint"\} (\S+)', metrics)[1])
        assert total >= 1
        assert 'shield_endpoint_calls_stalled{endpoint="llm_endpoint"} 0.0' in metrics
        # One journal line per stalled call, never more.
        assert len(STALL_LINE.findall(svc.log_text())) == int(total)
    finally:
        standin.stop()
