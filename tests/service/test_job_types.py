"""Job types on a running service (real LightRAG, on the file storages and on its
PostgreSQL storages with pgvector; real Redis and PostgreSQL; the LLM stand-in):
`delete` removes documents by id and by source_uri as LightRAG's own delete does,
`replace` swaps a source_uri's documents for new text (a chunk identical to an
old one included), an unknown type is a 422 naming it, and a second replace of a
source_uri while one runs is a 409. Each check reads the graph back (GET
/graph/verify and its canonical dump), the job view, the PostgreSQL row and the
documents.deleted events."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.helpers import chunk_text, ingest, wait_job
from tests.support.servers import PostgresServer, RedisServer, Standin, free_port
from tests.support.service import ServiceProcess, build_env, run_init_db

POST = "/lightrag/ingest-async"


@dataclass
class Deployment:
    """A running service, its Redis, and the PostgreSQL holding its job history (and,
    on the PostgreSQL storages, its graph)."""

    service: ServiceProcess
    redis: RedisServer
    pg: PostgresServer


@pytest.fixture(scope="module")
def file_storages(
    module_service_factory: Callable[..., ServiceProcess], redis_server: RedisServer, postgres_server: PostgresServer
) -> Deployment:
    return Deployment(module_service_factory("job-types"), redis_server, postgres_server)


@pytest.fixture(scope="module")
def pg_storages(
    rendered: Path, pgvector_server: PostgresServer, llm_standin: Standin, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """Its own Redis: the file storages' service runs beside it, on its own queue."""
    root = tmp_path_factory.mktemp("job-types-pg")
    redis = RedisServer.start(root)
    env = build_env(rendered, redis, pgvector_server, llm_standin, root)
    run_init_db(env)
    env["ORCHESTRATOR_LISTEN_PORT"] = str(port := free_port())
    service = ServiceProcess(env, port, root, name="job-types-pg")
    service.start(lightrag_storage="postgres", lightrag_workspace="jobtypes")
    yield Deployment(service, redis, pgvector_server)
    service.stop()
    redis.stop()


@pytest.fixture(params=["file", "postgres"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    found: Deployment = request.getfixturevalue("file_storages" if request.param == "file" else "pg_storages")
    return found


@pytest.fixture
def client(file_storages: Deployment) -> Iterator[httpx.Client]:
    with file_storages.service.client() as c:
        yield c


def graph(client: httpx.Client) -> dict[str, Any]:
    answer = client.get("/graph/verify", params={"dump": "true"}, timeout=120)
    assert answer.status_code == 200, answer.text
    report: dict[str, Any] = answer.json()
    assert report["consistent"] is True and report["problems"] == [], report["problems"]
    return report


def entity_names(report: dict[str, Any]) -> set[str]:
    return {entity["name"] for entity in report["dump"]["entities"]}


def deleted_events(redis_server: RedisServer, job_id: str) -> list[dict[str, Any]]:
    events = []
    for _id, fields in redis_server.client().xrange("shield:events"):
        data = json.loads(fields["data"])
        if fields["type"] == "documents.deleted" and data["job_id"] == job_id:
            events.append(data)
    return sorted(events, key=lambda event: event["index"])


def pg_row(postgres_server: PostgresServer, job_id: str) -> str:
    return postgres_server.psql(
        f"SELECT job_type, status, chunks_total, chunks_processed, documents_removed FROM job_status "
        f"WHERE job_id = '{job_id}'"
    ).strip()


def settled_row(postgres_server: PostgresServer, job_id: str, expected: str) -> str:
    deadline = time.monotonic() + 30
    row = ""
    while time.monotonic() < deadline:
        row = pg_row(postgres_server, job_id)
        if row == expected:
            break
        time.sleep(0.2)
    return row


def post(client: httpx.Client, body: dict[str, Any], status: int = 202) -> dict[str, Any]:
    response = client.post(POST, json=body)
    assert response.status_code == status, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"job_type": "purge", "chunks": [{"text": "x"}]}, "job_type", "'purge' is not a job type"),
        ({"job_type": 7, "chunks": [{"text": "x"}]}, "job_type", "7 is not a job type"),
        ({"job_type": "delete", "documents": []}, "documents", "at least 1"),
        (
            {"job_type": "delete", "documents": [{"doc_id": "a", "source_uri": "b"}]},
            "documents[0].source_uri",
            "Extra inputs",
        ),
        ({"job_type": "delete", "documents": [{"path": "b"}]}, "documents[0]", "exactly one of doc_id or source_uri"),
        ({"job_type": "delete", "documents": [{"doc_id": "has space"}]}, "documents[0].doc_id", "pattern"),
        ({"job_type": "replace", "chunks": [{"text": "x"}]}, "source_uri", "Field required"),
        (
            {"job_type": "replace", "source_uri": "s://a", "chunks": [{"text": "x", "source_uri": "s://b"}]},
            "chunks[0].source_uri",
            "Extra inputs are not permitted",
        ),
    ],
)
def test_a_job_of_an_unknown_type_or_shape_is_a_422_naming_the_field(
    client: httpx.Client, redis_server: RedisServer, body: dict[str, Any], field: str, words: str
) -> None:
    before = redis_server.client().xlen("shield:ingest")
    refused = client.post(POST, json=body)
    assert refused.status_code == 422, refused.text
    errors = refused.json()["errors"]
    assert any(error["field"] == field and words in error["message"] for error in errors), errors
    assert redis_server.client().xlen("shield:ingest") == before, "a refused job enqueued something"


def test_delete_removes_documents_by_source_uri_and_by_id_and_their_entities(deployment: Deployment) -> None:
    client, redis_server, postgres_server = deployment.service.client(), deployment.redis, deployment.pg
    chunks = [
        {"text": chunk_text(100), "source_uri": "file:///keep.txt"},
        {"text": chunk_text(101), "source_uri": "file:///drop.txt"},
        {"text": chunk_text(102), "source_uri": "file:///drop.txt"},
        {"text": chunk_text(103), "source_uri": "file:///by-id.txt"},
    ]
    ingested = ingest(client, chunks)
    assert wait_job(client, ingested["job_id"])["status"] == "completed"
    before = graph(client)
    job = ingested["job_id"]
    by_id = f"chunk-{job}-3"

    accepted = post(
        client,
        {
            "job_type": "delete",
            "documents": [{"source_uri": "file:///drop.txt"}, {"doc_id": by_id}, {"doc_id": "doc-never-there"}],
        },
    )
    assert accepted["chunks_total"] == 3
    done = wait_job(client, accepted["job_id"])
    assert done["status"] == "completed", done
    assert done["job_type"] == "delete" and done["chunks_processed"] == 3 and done["documents_removed"] == 3

    after = graph(client)
    processed = before["counts"]["documents"]["processed"] - 3
    assert after["counts"]["documents"]["processed"] == processed
    assert after["counts"]["chunks"] == before["counts"]["chunks"] - 3
    kept = {chunk for entity in after["dump"]["entities"] for chunk in entity["source_chunks"]}
    assert len(kept) == processed  # every entity left is supported by a document that is left
    assert entity_names(after) < entity_names(before), "no entity went with the deleted documents"

    events = deleted_events(redis_server, accepted["job_id"])
    assert [(e["index"], e["documents_removed"]) for e in events] == [(0, 2), (1, 1), (2, 0)], events
    assert sorted(events[0]["doc_ids"]) == [f"chunk-{job}-1", f"chunk-{job}-2"]
    assert events[1]["doc_ids"] == [by_id] and events[2]["doc_id"] == "doc-never-there"
    assert settled_row(postgres_server, accepted["job_id"], "delete|completed|3|3|3") == "delete|completed|3|3|3"

    again = post(client, {"job_type": "delete", "documents": [{"source_uri": "file:///drop.txt"}]})
    repeated = wait_job(client, again["job_id"])
    assert repeated["status"] == "completed" and repeated["documents_removed"] == 0, repeated
    assert graph(client)["counts"] == after["counts"]


def test_replace_swaps_a_sources_documents_and_a_second_replace_waits_for_the_first(
    deployment: Deployment, llm_standin: Standin
) -> None:
    client, postgres_server = deployment.service.client(), deployment.pg
    source = "file:///manual.txt"
    old = [{"text": chunk_text(200), "source_uri": source}, {"text": chunk_text(201), "source_uri": source}]
    first = ingest(client, old)
    assert wait_job(client, first["job_id"])["status"] == "completed"
    before = graph(client)

    # The new text keeps one old chunk word for word: it must come back as the new job's own document.
    llm_standin.outage(503, 6)
    body = {
        "job_type": "replace",
        "source_uri": source,
        "chunks": [{"text": chunk_text(202)}, {"text": old[1]["text"]}],
    }
    accepted = post(client, body)
    assert accepted["chunks_total"] == 3  # the retire, then two chunks
    running = client.post(POST, json={**body, "chunks": [{"text": chunk_text(203)}]})
    assert running.status_code == 409, running.text
    assert running.json()["errors"][0]["field"] == "source_uri" and accepted["job_id"] in running.json()["detail"]

    done = wait_job(client, accepted["job_id"], timeout=180)
    assert done["status"] == "completed", done
    assert done["job_type"] == "replace" and done["metadata"]["source_uri"] == source
    assert done["documents_removed"] == 2 and done["chunks_processed"] == 3, done
    after = graph(client)
    processed = before["counts"]["documents"]["processed"]
    assert after["counts"]["documents"]["processed"] == processed  # two out, two in
    verify = client.get(f"/jobs/{accepted['job_id']}/verify", timeout=60)
    assert verify.status_code == 200, verify.text
    assert verify.json()["verified"] is True, verify.json()
    old_only = entity_names(before) - entity_names(after)
    assert old_only, "the replaced text's own entities are still in the graph"
    row = "replace|completed|3|3|2"
    assert settled_row(postgres_server, accepted["job_id"], row) == row

    later = post(client, {**body, "chunks": [{"text": chunk_text(203)}]})  # the first ended: allowed again
    assert wait_job(client, later["job_id"])["documents_removed"] == 2
