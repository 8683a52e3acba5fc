"""How the API answers what it refuses: one JSON shape (ErrorBody), a message naming
the field, the same shape declared in the OpenAPI for every status a route sends.

Routes raise ApiError("<field>: <what is wrong>"); `error_responses(...)` gives a
route's `responses=` for the statuses it can answer (Retry-After declared where
it is sent).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..jobs.requests import UNKNOWN_JOB_TYPE, unknown_job_type_message
from .schemas import ApiError, ErrorBody, field_path

MAX_ERRORS_LISTED = 50
MAX_FIELD_CHARS = 120
_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]-]*): ")
_VALUE_ERROR = "Value error, "
FASTAPI_UNREADABLE_BODY = "There was an error parsing the body"

DESCRIPTIONS = {
    401: "No valid `Authorization: Bearer <token>`",
    404: "No such job or path",
    405: "Method not allowed on this path (see the Allow header)",
    409: "Conflicts with the current state: the job's, or the first use of the Idempotency-Key",
    413: "The body is over the request limit (a field over its own limit is a 422)",
    422: "A field is invalid: `errors` names each one",
    429: "Too many: the queue backlog or the event stream clients are at their limit; retry after `Retry-After`",
    503: "A dependency (Redis, PostgreSQL, LightRAG) is unavailable; nothing was changed",
}
RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}
}


def error_body(message: str, errors: Sequence[dict[str, str]] | None = None) -> dict[str, Any]:
    """{"detail": message, "errors": [{"field", "message"}]}: the field parsed from
    "<field>: <message>" when no list is given."""
    if errors is None:
        match = _FIELD_PREFIX.match(message)
        errors = [{"field": match.group(1), "message": message[match.end() :]}] if match else []
    return {"detail": message, "errors": list(errors)[:MAX_ERRORS_LISTED]}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route for these error statuses, all ErrorBody."""
    answers: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        answer: dict[str, Any] = {"model": ErrorBody, "description": DESCRIPTIONS[status]}
        if status in (429, 503):
            answer["headers"] = RETRY_AFTER
        answers[status] = answer
    return answers


async def api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(exc.message), status_code=exc.status, headers=exc.headers)


async def http_error(_request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path 404, 405, the body limit's 413) in the same
    shape; a body FastAPI cannot decode (not UTF-8) is a 422 like a body that is not JSON."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == FASTAPI_UNREADABLE_BODY:
        return JSONResponse(error_body("body: cannot be read as UTF-8 JSON"), status_code=422)
    return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers)


async def validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [_field_error(err) for err in exc.errors()]
    detail = "; ".join(f"{err['field']}: {err['message']}" for err in errors[:5])
    return JSONResponse(error_body(detail, errors), status_code=422)


def _field_error(err: Any) -> dict[str, str]:  # Any: pydantic's ErrorDetails, as FastAPI passes it on
    if err["type"] == UNKNOWN_JOB_TYPE:  # the union's own error sits on the body: it is job_type's
        return {"field": "job_type", "message": unknown_job_type_message(err.get("input"))}
    field, message = field_path(tuple(err["loc"])), str(err["msg"]).removeprefix(_VALUE_ERROR)
    named = _FIELD_PREFIX.match(message)
    if field == "body" and named:  # a check across fields names the field in its message
        field, message = named.group(1), message[named.end() :]
    return {"field": field[:MAX_FIELD_CHARS], "message": message}


def install(app: FastAPI) -> None:
    """Answer ApiError, a request FastAPI cannot validate and Starlette's own refusals as ErrorBody."""
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
