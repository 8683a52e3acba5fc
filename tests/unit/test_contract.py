"""The OpenAPI document the service serves, built in process from the rendered
package: one error model for every refusal, the deployment's limits, the media
types, the docs behind the token; and the README's API table in step with it."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from shield_orchestrator.api.app import create_app
from shield_orchestrator.api.context import AppContext
from shield_orchestrator.build_info import BuildInfo
from shield_orchestrator.deployed import BOUNDS, DEFAULTS
from shield_orchestrator.health import HealthService
from shield_orchestrator.settings import Settings

README = Path(__file__).resolve().parents[2] / "docs" / "api.md"
ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}
TOKEN = "unit-token"


def app_for(**env: str) -> Any:
    """The app as the service builds it; only the settings are real (the OpenAPI
    document, the docs routes and the token check need nothing else)."""
    environ = {f"ORCHESTRATOR_{key.upper()}": value for key, value in env.items()}
    settings = Settings.load({"ORCHESTRATOR_API_TOKEN": TOKEN, **environ}, DEFAULTS, BOUNDS)
    context = AppContext(settings, *([None] * (len(fields(AppContext)) - 1)))  # type: ignore[arg-type]
    return create_app(context)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = app_for(max_chunks_per_job="7", max_chunk_bytes="300").openapi()
    return document


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, ops in spec["paths"].items() for method, op in ops.items()}


def test_every_refusal_is_the_documented_error_model(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error = spec["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["detail"] and set(error["properties"]) == {"detail", "errors"}
    for (method, path), op in operations(spec).items():
        for status, answer in op["responses"].items():
            # The health answers keep their own shape when they say 503 (a dependency
            # down; draining): the body a prober reads either way.
            if int(status) < 400 or (path, status) in {("/health/detailed", "503"), ("/health", "503")}:
                continue
            assert answer["content"] == {"application/json": {"schema": ERROR_BODY}}, (method, path, status)
            if status in ("429", "503"):
                assert "Retry-After" in answer["headers"], (method, path, status)
        if path != "/health":
            assert "401" in op["responses"] and op["security"] == [{"bearerAuth": []}], (method, path)


def test_limits_and_formats_are_the_deployments(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    chunks = schemas["IngestRequest"]["properties"]["chunks"]
    assert (chunks["minItems"], chunks["maxItems"]) == (1, 7)
    text = schemas["ChunkIn"]["properties"]["text"]
    assert text["maxLength"] == 300 and text["pattern"]
    assert schemas["IngestRequest"]["properties"]["source_type"]["maxLength"] == 57
    ops = operations(spec)
    for path in ("/jobs/{job_id}", "/jobs/{job_id}/verify"):
        (job_id,) = ops[("GET", path)]["parameters"]
        assert job_id["schema"]["format"] == "uuid"
    assert set(ops[("GET", "/metrics")]["responses"]["200"]["content"]) == {"text/plain; version=0.0.4"}
    events = ops[("GET", "/events/stream")]["responses"]["200"]
    assert set(events["content"]) == {"text/event-stream"}
    assert "`ingestion.completed`" in events["description"]
    assert ops[("POST", "/lightrag/ingest-async")]["responses"]["202"]["content"]["application/json"]["schema"]


@pytest.mark.parametrize("public", [False, True])
def test_docs_need_the_token_unless_public(public: bool) -> None:
    client = TestClient(app_for(api_docs_public=str(public).lower()))
    for path in ("/openapi.json", "/docs", "/redoc"):
        anonymous = client.get(path)
        assert anonymous.status_code == (200 if public else 401), path
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()["paths"]


def readme_api_table() -> dict[tuple[str, str], set[str]]:
    """The README's HTTP API table: (method, path) -> statuses."""
    section = README.read_text().split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], set[str]] = {}
    for line in section.splitlines():
        match = re.match(r"\| `(GET|POST|PUT|PATCH|DELETE) ([^`?]+)[^`]*` \| ([\d, ]+) \|", line)
        if match:
            rows[(match.group(1), match.group(2))] = {s.strip() for s in match.group(3).split(",")}
    return rows


def test_readme_api_table_matches_the_spec(spec: dict[str, Any]) -> None:
    declared = {key: set(op["responses"]) for key, op in operations(spec).items()}
    assert readme_api_table() == declared


def test_refusals_before_any_store_is_touched() -> None:
    """Answered before the route reads a store (the stores here are absent)."""
    client = TestClient(app_for(max_chunks_per_job="5", max_chunk_bytes="200"))
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    repeated = client.get("/jobs?limit=1&limit=2", headers=auth)
    assert repeated.status_code == 422
    assert repeated.json()["errors"] == [{"field": "limit", "message": "given 2 times; give it once"}]
    not_uuid = client.get("/jobs/" + "x" * 10_000, headers=auth)
    assert not_uuid.status_code == 422 and not_uuid.json()["errors"][0]["field"] == "job_id"
    unknown = client.get("/nowhere", headers=auth)
    assert unknown.status_code == 404 and unknown.json() == {"detail": "Not Found", "errors": []}
    wrong_method = client.delete("/jobs", headers=auth)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "GET"
    chunked = client.post("/lightrag/ingest-async", content=iter([b"[" * 60_000, b" " * 60_000]), headers=auth)
    assert chunked.status_code == 413
    assert chunked.json()["detail"] == "body: more bytes exceed the 88016-byte request limit"
    undecodable = client.post("/lightrag/ingest-async", content=b'{"\xff"}', headers=auth)
    assert undecodable.status_code == 422 and undecodable.json()["errors"][0]["field"] == "body"


def test_health_answers_what_the_health_service_reports() -> None:
    """/health passes on every field of HealthService.basic(), the tree hash included
    (the deploy compares it with the hash the role recorded)."""
    settings = Settings.load({"ORCHESTRATOR_API_TOKEN": TOKEN}, DEFAULTS, BOUNDS)
    absent: Any = None
    build = BuildInfo("9.9.9", "ab" * 32, None)
    health = HealthService(
        settings=settings,
        redis=absent,
        history=absent,
        stream=absent,
        processor=absent,
        pool=absent,
        projection=absent,
        metrics=absent,
        build=build,
        calls=absent,
    )
    context = replace(AppContext(settings, *([absent] * (len(fields(AppContext)) - 1))), health=health)
    body = TestClient(create_app(context)).get("/health").json()
    assert set(body) == set(health.basic())
    assert (body["version"], body["tree_sha256"]) == ("9.9.9", "ab" * 32)
