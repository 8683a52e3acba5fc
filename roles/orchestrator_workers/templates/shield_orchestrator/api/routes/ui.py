"""The operator's console: a static page at /ui (ui.html, ui.js, ui.css in api/static/;
no build step, no CDN). The page itself holds nothing secret: it asks for
the token, keeps it in the browser's session storage and sends it as a header
with every API call (never in a URL)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from ..schemas import ApiError

router = APIRouter(tags=["console"])
STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"ui.js": "text/javascript", "ui.css": "text/css"}
NO_STORE = {"Cache-Control": "no-store"}


@router.get("/ui", include_in_schema=False)
async def console() -> FileResponse:
    return FileResponse(STATIC / "ui.html", media_type="text/html", headers=NO_STORE)


@router.get("/ui/", include_in_schema=False)
async def console_slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=308)


@router.get("/ui/{asset}", include_in_schema=False)
async def console_asset(asset: str) -> FileResponse:
    if asset not in ASSETS:
        raise ApiError(404, f"asset: no {asset[:64]!r} in the console")
    return FileResponse(STATIC / asset, media_type=ASSETS[asset], headers=NO_STORE)
