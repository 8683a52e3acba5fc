"""The console's static files (ui.html, ui.js, ui.css): rendered by the role like
the rest of the package, self-contained (no CDN: hosts may be air-gapped), and
careful with the token (session storage, a header, never an address or a log)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.service import render

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "roles" / "orchestrator_workers" / "templates" / "shield_orchestrator" / "api" / "static"
ASSETS = ("ui.html", "ui.js", "ui.css")
BROWSER_TEST = REPO / "tests" / "service" / "test_console_ui.py"


def text(name: str) -> str:
    return (TEMPLATES / name).read_text()


def test_the_assets_are_rendered_unchanged_into_the_package(tmp_path: Path) -> None:
    static = render(tmp_path) / "shield_orchestrator" / "api" / "static"
    for name in ASSETS:
        assert (static / name).read_text() == text(name), name


def test_no_jinja_delimiters_in_the_assets() -> None:
    for name in ASSETS:
        assert not re.search(r"\{\{|\{%|\{#", text(name)), name


def test_nothing_is_loaded_from_elsewhere() -> None:
    for name in ASSETS:
        assert not re.search(r"(?i)\b(https?:)?//[a-z0-9.-]+\.[a-z]", text(name)), f"{name} refers to another host"
        assert "@import" not in text(name) and "url(" not in text(name), name
    html = text("ui.html")
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["/ui/ui.css", "/ui/ui.js"]


def test_the_token_stays_in_session_storage_and_a_header() -> None:
    js = text("ui.js")
    assert "sessionStorage" in js and "localStorage" not in js and "document.cookie" not in js
    assert not re.search(r"\bconsole\.\w+\(", js), "nothing the page does goes to the browser's console"
    assert "EventSource" not in js.replace("EventSource cannot", ""), "EventSource cannot send the header"
    # token() is read only to build the header or to ask whether there is one.
    uses = re.findall(r".{0,40}(?<!function )\btoken\(\).{0,10}", js)
    allowed = ('"Bearer " + token()', "!token()", "if (token())")
    assert uses and all(any(form in use for form in allowed) for use in uses), uses
    assert not re.search(r"[?&]token=|access_token", js)


def test_every_testid_the_browser_test_uses_exists() -> None:
    used = set(re.findall(r'(?:get_by_test_id\(|data-testid=\\?")"?([a-z-]+)', BROWSER_TEST.read_text()))
    present = set(re.findall(r'data-testid="([a-z-]+)"', text("ui.html")))
    js = text("ui.js")
    present |= set(re.findall(r'(?:button|cell)\([^\n]*?"([a-z]+(?:-[a-z]+)+)"', js))
    present |= set(re.findall(r'(?:testid = |rowOfJob\()"([a-z-]+)"', js))
    present |= set(re.findall(r'rowOfJob\([^\n]*?"([a-z]+(?:-[a-z]+)+)"\)', js))
    assert used and used <= present, sorted(used - present)
