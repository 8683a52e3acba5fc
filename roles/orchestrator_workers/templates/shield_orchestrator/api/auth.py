"""The API's one credential: the bearer token every route but /health asks for."""

from __future__ import annotations

import hmac

from fastapi import Request

from .context import Context
from .schemas import ApiError


async def require_token(context: Context, request: Request) -> None:
    """Every route but /health needs `Authorization: Bearer <api_token>` when a token is set."""
    token = context.settings.api_token
    if not token:
        return
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.encode(), token.encode()):
        raise ApiError(401, "authorization: a valid Bearer token is required", {"WWW-Authenticate": "Bearer"})
