"""The operator's console (/ui) in a real browser: Debian's headless chromium
(/usr/bin/chromium, installed by scripts/bootstrap-host.sh) driven by Playwright,
which never downloads a browser here. Log in, watch a 50-chunk job go from
queued to completed without a reload, see a dead letter appear and replay it,
discard one, cancel a job. Screenshots of the main views are kept in
.cache/artefacts/console/ (gitignored)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.service.conftest import ServiceFactory
from tests.support.helpers import ingest, make_chunks, wait_job
from tests.support.service import API_TOKEN, ServiceProcess

CHROMIUM = Path(os.environ.get("SHIELD_CHROMIUM", "/usr/bin/chromium"))
ARTEFACTS = Path(__file__).resolve().parents[2] / ".cache" / "artefacts" / "console"
WAIT_MS = 120_000

# Records, in the page, every "status:chunks processed" each job's row has shown
# (rows are re-rendered on every change, so each new row is noted).
WATCH_STATUSES = """
() => {
  window.seenStatuses = {};
  const note = (row) => {
    if (!row.dataset || !row.dataset.jobId) return;
    const seen = (window.seenStatuses[row.dataset.jobId] ||= []);
    const now = row.dataset.status + ":" + row.querySelector("progress").value;
    if (now !== seen[seen.length - 1]) seen.push(now);
  };
  new MutationObserver((changes) => {
    for (const change of changes) for (const node of change.addedNodes) note(node);
  }).observe(document.getElementById("jobs-body"), { childList: true });
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the console's browser test needs Debian's chromium "
            "(scripts/bootstrap-host.sh installs it; `apt-get install chromium`)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def log_in(page: Page, svc: ServiceProcess, requests: list[str], console: list[str]) -> None:
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: console.append(message.text))
    page.goto(f"{svc.url}/ui")
    expect(page.get_by_test_id("login")).to_be_visible()
    shot(page, "01-login")
    page.get_by_label("API token").fill("wrong-token")
    page.get_by_test_id("login-button").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("401")
    page.get_by_label("API token").fill(API_TOKEN)
    page.get_by_test_id("login-button").click()
    expect(page.get_by_test_id("stream-state")).to_have_text("live", timeout=15_000)
    expect(page.get_by_test_id("worker-row").first).to_be_visible(timeout=15_000)
    assert page.evaluate("sessionStorage.getItem('shield-orchestrator-token')") == API_TOKEN
    page.evaluate("window.notReloaded = true")


def fail_once(chunks: list[dict[str, Any]], index: int, tag: str) -> None:
    chunks[index]["text"] = f"Marker LAB_STANDIN_FAIL_ONCE {tag} was filed by Quinn Archer at the Tidewater Depot."


def watch_a_job_complete(page: Page, svc: ServiceProcess) -> None:
    client = svc.client()
    wait_job(client, ingest(client, make_chunks(2, prefix="ui-warm"))["job_id"])
    page.evaluate(WATCH_STATUSES)
    job_id = ingest(client, make_chunks(50, prefix="ui-fifty"))["job_id"]
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row).to_be_visible(timeout=15_000)
    shot(page, "02-jobs-live")
    expect(row).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(row.get_by_test_id("job-percent")).to_contain_text("100.0 %")
    seen: list[str] = page.evaluate("window.seenStatuses")[job_id]
    assert seen[0].split(":")[0] in ("queued", "processing") and seen[-1] == "completed:50", seen
    partial = [item for item in seen if item.startswith("processing:") and item != "processing:0"]
    assert partial, f"no progress was shown between queued and completed: {seen}"
    assert page.evaluate("window.notReloaded") is True
    page.get_by_test_id("job-filter").select_option("completed")
    expect(page.locator('[data-testid="job-row"][data-status="completed"]').first).to_be_visible()
    assert page.locator('[data-testid="job-row"]:not([data-status="completed"])').count() == 0
    page.get_by_test_id("job-filter").select_option("")
    shot(page, "03-jobs-completed")


def dead_letter_appears(page: Page, svc: ServiceProcess, n: int, failing: int, tag: str) -> tuple[str, Locator]:
    """A job of n chunks whose chunk `failing` is dead-lettered; its row in the page."""
    chunks = make_chunks(n, prefix=tag)
    fail_once(chunks, failing, tag)
    job_id = ingest(svc.client(), chunks)["job_id"]
    letter = page.locator(f'[data-testid="dead-letter-row"][data-job-id="{job_id}"]')
    expect(letter).to_be_visible(timeout=WAIT_MS)
    return job_id, letter


def replay_a_dead_letter(page: Page, svc: ServiceProcess) -> None:
    job_id, letter = dead_letter_appears(page, svc, 4, 2, "ui-replay")
    expect(letter.get_by_test_id("letter-error")).to_contain_text("injected failure")
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    expect(page.get_by_test_id("queue-dead")).to_have_text("1", timeout=15_000)
    shot(page, "04-dead-letters")
    letter.get_by_test_id("replay-letter").click()
    expect(page.get_by_test_id("dlq-message")).to_contain_text("Replayed 1 chunk")
    expect(letter).to_have_count(0)
    expect(row).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(row.get_by_test_id("job-failed")).to_have_text("0")


def discard_a_dead_letter(page: Page, svc: ServiceProcess) -> None:
    job_id, letter = dead_letter_appears(page, svc, 1, 0, "ui-discard")
    letter.get_by_test_id("discard-letter").click()
    expect(letter.get_by_test_id("discard-letter")).to_have_text("Confirm discard")
    letter.get_by_test_id("discard-letter").click()
    expect(letter).to_have_count(0)
    assert svc.client().get("/dead-letters", params={"job_id": job_id}).json()["count"] == 0


def cancel_a_job(page: Page, svc: ServiceProcess) -> None:
    client = svc.client()
    job_id = ingest(client, make_chunks(300, prefix="ui-cancel"))["job_id"]
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row).to_be_visible(timeout=15_000)
    row.get_by_test_id("job-open").click()
    detail = page.get_by_test_id("job-detail")
    expect(detail).to_be_visible()
    expect(page.get_by_test_id("detail-id")).to_have_text(job_id)
    page.get_by_test_id("cancel-job").click()
    expect(page.get_by_test_id("detail-message")).to_contain_text("Cancelled.")
    expect(page.get_by_test_id("detail-status")).to_have_text("cancelled", timeout=15_000)
    expect(row).to_have_attribute("data-status", "cancelled", timeout=15_000)
    expect(page.get_by_test_id("cancel-job")).to_be_disabled()
    assert client.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
    shot(page, "05-job-detail-cancelled")


def test_the_console_live_in_a_browser(service_factory: ServiceFactory, page: Page) -> None:
    svc: ServiceProcess = service_factory(retry_attempts=1, batch_size=5).start()
    requests: list[str] = []
    console: list[str] = []
    log_in(page, svc, requests, console)
    watch_a_job_complete(page, svc)
    replay_a_dead_letter(page, svc)
    discard_a_dead_letter(page, svc)
    cancel_a_job(page, svc)
    shot(page, "06-console")
    assert requests and not [url for url in requests if API_TOKEN in url], "the token went into an address"
    assert not [line for line in console if API_TOKEN in line], "the token went to the browser console"
    assert API_TOKEN not in svc.log_text()
    assert page.evaluate("window.notReloaded") is True
    assert len(list(ARTEFACTS.glob("*.png"))) >= 6


def test_the_console_assets_are_served_without_a_token_and_nothing_else_is(service: ServiceProcess) -> None:
    for path, kind in (("/ui", "text/html"), ("/ui/ui.js", "text/javascript"), ("/ui/ui.css", "text/css")):
        response = httpx.get(f"{service.url}{path}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), path
        assert "no-store" in response.headers["cache-control"]
        assert API_TOKEN not in response.text
    assert httpx.get(f"{service.url}/ui/settings.py").status_code == 404
    assert httpx.get(f"{service.url}/queue").status_code == 401
