"""Request validation: the pydantic models, the deployment's limits, and how a
refusal names the field."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from shield_orchestrator import bounds
from shield_orchestrator.api.errors import validation_error
from shield_orchestrator.api.schemas import ApiError, IngestRequest, field_path, request_body_limit, validate_ingest
from shield_orchestrator.deployed import BOUNDS, DEFAULTS
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
        ({"chunks": []}, "chunks: List should have at least 1 item"),
        ({"chunks": [{"text": ""}]}, "chunks[0].text: must contain text"),
        ({"chunks": [{"text": "ok"}, {"text": " \n\t"}]}, "chunks[1].text: must contain text"),
        ({"chunks": [{"text": "&nbsp; &#160;  "}]}, "chunks[0].text: must contain text"),
        ({"chunks": [{"text": "\x00\x00"}]}, "chunks[0].text: must not contain NUL"),
        ({"chunks": [{"text": "a\ud800b"}]}, "chunks[0].text: lone surrogate \\ud800 at character 1"),
        (
            {"chunks": [{"text": "a", "source_uri": "s\udfff"}]},
            "chunks[0].source_uri: Input should be a valid string, unable to parse raw data as a unicode",
        ),
        ({"chunks": [{"text": "a", "source_uri": "s\x00"}]}, "chunks[0].source_uri: must not contain NUL"),
        (
            {"chunks": [{"text": "a", "source_uri": "u" * 2049}]},
            "chunks[0].source_uri: String should have at most 2048",
        ),
        ({"chunks": [{"text": "a"}], "source_type": "t" * 58}, "source_type: String should have at most 57"),
        (
            {"chunks": [{"text": "a"}], "source_type": "\ud800"},
            "source_type: Input should be a valid string, unable to parse raw data as a unicode",
        ),
        ({"chunks": [{"text": "a"}], "source_type": "a\nb"}, "source_type: must be 1 or more characters"),
        ({"chunks": [{"text": "a"}], "source_type": ""}, "source_type: String should have at least 1"),
        ({"chunks": [{"text": "a"}], "metadata": {"k": "\x00"}}, "metadata: .k: must not contain NUL"),
        ({"chunks": [{"text": "a"}], "metadata": {"\x00": 1}}, "metadata: key '\\x00': must not contain NUL"),
        ({"chunks": [{"text": "a"}], "metadata": {"k": ["\ud800"]}}, "metadata: .k[0]: lone surrogate"),
        ({"chunks": [{"text": "a"}], "metadata": {"k": float("nan")}}, "metadata: nan at .k is not a JSON number"),
        ({"chunks": [{"text": "a"}], "metadata": {"k": float("-inf")}}, "metadata: -inf at .k is not a JSON number"),
        (
            {"chunks": [{"text": "a", "metadata": {"k": "x" * 66000}}]},
            "chunks[0].metadata: 66008 bytes of JSON exceed 65536",
        ),
        ({"chunks": [{"text": "a"}], "metadata": {"k": "é" * 33000}}, "metadata: 66008 bytes of JSON exceed 65536"),
    ],
)
def test_model_refusals_name_the_field(body: object, message: str) -> None:
    status, answer = refusal(body)
    assert status == 422
    assert message in str(answer["detail"])
    assert isinstance(answer["errors"], list) and answer["errors"][0]["field"] == message.split(":")[0]
    assert set(answer) == {"detail", "errors"}


def nested(depth: int, leaf: object = 1) -> object:
    """A metadata value `depth` containers deep (alternating objects and lists)."""
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


@pytest.mark.parametrize("where", ["chunk", "job"])
def test_metadata_depth_is_bounded(where: str) -> None:
    deepest = {"k": nested(bounds.METADATA_MAX_DEPTH - 1)}
    too_deep = {"k": nested(bounds.METADATA_MAX_DEPTH)}
    chunk: dict[str, object] = {"text": "a"}
    body: dict[str, object] = {"chunks": [chunk]}
    holder, field = (chunk, "chunks[0].metadata") if where == "chunk" else (body, "metadata")
    holder["metadata"] = deepest
    IngestRequest.model_validate(body)
    holder["metadata"] = too_deep
    status, answer = refusal(body)
    assert status == 422
    assert answer["errors"][0]["field"] == field
    assert "nested deeper than 8 levels" in str(answer["detail"])
    holder["metadata"] = {"k": nested(300)}
    assert refusal(body)[1]["errors"][0]["field"] == field


def test_valid_metadata_and_text_pass() -> None:
    body = IngestRequest.model_validate(
        {
            "chunks": [{"text": "&amp; x", "source_uri": "u" * 2048, "metadata": {"a": [1, 2.5, None, True, "é"]}}],
            "source_type": "t" * 57,
            "metadata": {"": {"x": -0.0}},
        }
    )
    assert body.chunks[0].text == "&amp; x"


@pytest.mark.parametrize(
    ("schema_name", "value", "valid"),
    [
        ("text", "x", True),
        ("text", " &nbsp; ", False),
        ("text", "&nbsp;a", True),
        ("text", "\t\n", False),
        ("text", "\x01\x1f\x7f \ufffe", False),
        ("text", "&nbsp &#160", False),
        ("text", "\x01a", True),
        ("text", "a\x00", False),
        ("source_type", "text/markdown", True),
        ("source_type", "a\x7f", False),
    ],
)
def test_declared_patterns_are_the_checks(schema_name: str, value: str, valid: bool) -> None:
    """The OpenAPI pattern and the service's check agree (a client generator or a fuzzer
    reading the spec gets the answer it expects)."""
    pattern = {"text": bounds.TEXT_PATTERN, "source_type": bounds.SOURCE_TYPE_PATTERN}[schema_name]
    check = {"text": bounds.check_text, "source_type": bounds.check_source_type}[schema_name]
    assert bool(re.match(pattern, value)) is valid
    if valid:
        check(value)
    else:
        with pytest.raises(ValueError):
            check(value)


def test_unknown_top_level_fields_are_ignored() -> None:
    assert IngestRequest.model_validate({"chunks": [{"text": "a"}], "extra": 1}).chunks[0].text == "a"


@pytest.mark.parametrize(
    ("chunks", "status", "message"),
    [
        ([{"text": f"t{i}"} for i in range(6)], 422, "chunks: 6 chunks exceed max_chunks_per_job (5)"),
        ([{"text": "é" * 101}], 422, "chunks[0].text: 202 bytes exceed max_chunk_bytes (200)"),
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
