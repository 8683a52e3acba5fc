"""verify-graph on a running service (local storages): after a small job, with a
chunk whose text another chunk already holds (a content duplicate: LightRAG's
FAILED `dup-` record), GET /graph/verify finds the graph consistent with the
job's counts, and the CLI answers the same through the service, writing the
same canonical dump."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.helpers import ingest, make_chunks, wait_job
from tests.support.service import ServiceProcess, run_cli


def test_a_small_job_leaves_a_consistent_graph_and_the_cli_agrees(service_factory: Any, tmp_path: Path) -> None:
    svc: ServiceProcess = service_factory().start()
    client = svc.client()
    chunks = make_chunks(3)
    duplicate = {**chunks[0], "source_uri": "file:///corpus/copy-of-doc-0.txt"}
    accepted = ingest(client, [*chunks, duplicate])
    job = wait_job(client, accepted["job_id"], timeout=120)
    assert job["status"] == "completed", job

    answer = client.get("/graph/verify", params={"dump": "true"})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["consistent"] is True and report["problems"] == [], report["problems"]
    counts = report["counts"]
    assert counts["documents"]["processed"] == 3
    assert counts["chunks"] == counts["chunk_vectors"] == 3
    assert counts["entities"] == counts["entity_vectors"] > 0
    assert counts["relations"] == counts["relation_vectors"] > 0
    dump = report["dump"]
    assert dump["vectors"] == {"chunks": 3, "entities": counts["entities"], "relationships": counts["relations"]}
    sources = {source for entity in dump["entities"] for source in entity["source_chunks"]}
    assert len(sources) == 3 and all(source.startswith("text-") for source in sources)

    path = tmp_path / "graph.json"
    cli = run_cli(svc.env, "verify-graph", "--dump", str(path))
    assert cli.returncode == 0, cli.stderr
    line = json.loads(cli.stdout.splitlines()[-1])
    assert line["consistent"] is True and line["counts"] == counts and line["dump_path"] == str(path)
    assert json.loads(path.read_text()) == dump
    assert client.get("/graph/verify", headers={"Authorization": "Bearer wrong"}).status_code == 401
