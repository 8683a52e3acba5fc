"""What the API refuses before a route reads a request: a body over the request
limit (413, counted on the bytes received) and a query parameter given twice (422)."""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_body
from .schemas import ApiError


class BodyTooLarge(HTTPException):
    """The 413 of a body over the request limit, naming the limit and what was received.
    An HTTPException, so that FastAPI's body parsing lets it through to the ErrorBody handler."""

    def __init__(self, limit: int, received: int | None = None) -> None:
        size = f"{received} bytes" if received is not None else "more bytes"
        super().__init__(413, f"body: {size} exceed the {limit}-byte request limit")


class BodyLimit:
    """The request body limit on the bytes actually received, whatever the framing:
    a declared Content-Length over the limit is refused before a byte is read;
    otherwise every body message is counted as it arrives and the request fails
    with 413 as soon as the count passes the limit, so at most `limit` bytes of a
    body are ever held (chunked bodies included)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            response = JSONResponse(error_body(str(BodyTooLarge(self.limit, declared).detail)), 413)
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # An HTTPException: FastAPI lets it through its body parsing to http_error.
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def reject_repeated_query(request: Request) -> None:
    """A query parameter of the route given twice (`?limit=1&limit=99`) is refused
    rather than one of the values silently chosen."""
    route = request.scope.get("route")
    declared = {param.alias for param in getattr(getattr(route, "dependant", None), "query_params", [])}
    names = [name for name, _ in request.query_params.multi_items() if name in declared]
    for name in sorted({name for name in names if names.count(name) > 1}):
        raise ApiError(422, f"{name}: given {names.count(name)} times; give it once")
