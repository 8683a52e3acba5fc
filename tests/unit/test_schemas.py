"""Request validation: the pydantic models, the deployment's limits, and how a
refusal names the field."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from shield_orchestrator.deployed import BOUNDS, DEFAULTS
from shield_orchestrator.http_errors import validation_error
from shield_orchestrator.schemas import ApiError, IngestRequest, field_path, request_body_limit, validate_ingest
from shield_orchestrator.settings import Settings
from starlette.requests import Request

SETTINGS = Settings.load(
    {"ORCHESTRATOR_MAX_CHUNKS_PER_JOB": "5", "ORCHESTRATOR_MAX_CHUNK_BYTES": "200"}, DEFAULTS, BOUNDS
)


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("body", "chunks", 3, "text"), "chunks[3].text"),
        (("body",), "body"),
        (("query", "limit"), "limit"),
        (("header", "last-event-id"), "last-event-id"),
        (("body", "metadata", "a", "b"), "metadata.a.b"),
        ((), "body"),
    ],
)
def test_field_path(loc: tuple[int | str, ...], path: str) -> None:
    assert field_path(loc) == path


def refusal(body: object) -> tuple[int, dict[str, object]]:
    """What the API answers for a body the models refuse: status and JSON."""
    try:
        IngestRequest.model_validate(body)
    except ValidationError as exc:
        error = RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in exc.errors()])
        request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
        response = asyncio.run(validation_error(request, error))
        return response.status_code, json.loads(bytes(response.body))
    raise AssertionError("the body was accepted")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "chunks: Field required"),
        ({"chunks": [{"text": 42}]}, "chunks[0].text: Input should be a valid string"),
        ({"chunks": [{"source_uri": "x"}]}, "chunks[0].text: Field required"),
        ({"chunks": "text"}, "chunks: Input should be a valid list"),
        ({"chunks": [{"text": "a"}], "metadata": []}, "metadata: Input should be a valid dictionary"),
    ],
)
def test_model_refusals_name_the_field(body: object, message: str) -> None:
    status, answer = refusal(body)
    assert status == 422
    assert message in str(answer["detail"])
    assert isinstance(answer["errors"], list) and answer["errors"][0]["field"] == message.split(":")[0]


def test_unknown_top_level_fields_are_ignored() -> None:
    assert IngestRequest.model_validate({"chunks": [{"text": "a"}], "extra": 1}).chunks[0].text == "a"


@pytest.mark.parametrize(
    ("chunks", "status", "message"),
    [
        ([], 422, "chunks: at least one chunk is required"),
        ([{"text": ""}], 422, "chunks[0].text: must be a non-empty string"),
        ([{"text": "ok"}, {"text": " \n\t"}], 422, "chunks[1].text: must be a non-empty string"),
        ([{"text": f"t{i}"} for i in range(6)], 413, "chunks: 6 chunks exceed max_chunks_per_job (5)"),
        ([{"text": "é" * 101}], 413, "chunks[0].text: 202 bytes exceed max_chunk_bytes (200)"),
    ],
)
def test_deployment_limits(chunks: list[dict[str, str]], status: int, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        validate_ingest(IngestRequest.model_validate({"chunks": chunks}), SETTINGS)
    assert caught.value.status == status
    assert message in caught.value.message


def test_chunks_at_the_limits_pass() -> None:
    body = IngestRequest.model_validate({"chunks": [{"text": "é" * 100}] * 5})
    validate_ingest(body, SETTINGS)


def test_request_body_limit_leaves_room_for_escaping() -> None:
    assert request_body_limit(SETTINGS) == 5 * (2 * 200 + 4096) + 65536
