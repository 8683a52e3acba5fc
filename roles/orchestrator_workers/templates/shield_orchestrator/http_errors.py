"""How the API answers what it refuses: one JSON shape, a message naming the field."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from .context import Context
from .schemas import ApiError, field_path

MAX_ERRORS_LISTED = 50


async def api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)


async def validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": field_path(tuple(err["loc"])), "message": str(err["msg"])} for err in exc.errors()]
    detail = "; ".join(f"{err['field']}: {err['message']}" for err in errors[:5])
    return JSONResponse({"detail": detail, "errors": errors[:MAX_ERRORS_LISTED]}, status_code=422)


def install(app: FastAPI, body_limit: int) -> None:
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Before the body is read and parsed: a declared oversize body costs nothing.
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > body_limit:
            return JSONResponse({"detail": f"body: {length} bytes exceed the {body_limit}-byte request limit"}, 413)
        return await call_next(request)


async def require_token(context: Context, request: Request) -> None:
    """Every route but /health needs `Authorization: Bearer <api_token>` when a token is set."""
    token = context.settings.api_token
    if not token:
        return
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.encode(), token.encode()):
        raise ApiError(401, "authorization: a valid Bearer token is required", {"WWW-Authenticate": "Bearer"})
