"""Small test helpers: chunk texts with known entities, job polling, a real SSE client."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PEOPLE = ["Alice Johnson", "Bruno Martins", "Chen Wei", "Dana Okafor", "Erik Lindqvist", "Fatima Zahra"]
ORGS = ["Acme Corporation", "Globex Industries", "Initech Systems", "Umbrella Research", "Stark Logistics"]
CITIES = ["Berlin", "Lisbon", "Nairobi", "Osaka", "Toronto"]


def chunk_text(i: int) -> str:
    person = PEOPLE[i % len(PEOPLE)]
    other = PEOPLE[(i + 1) % len(PEOPLE)]
    org = ORGS[i % len(ORGS)]
    city = CITIES[i % len(CITIES)]
    return (
        f"{person} met {other} at the {org} office in {city} during review number {i}. "
        f"{person} leads the {org} storage team and reports progress to {other}."
    )


def make_chunks(n: int, offset: int = 0, prefix: str = "doc") -> list[dict[str, Any]]:
    return [
        {
            "text": chunk_text(offset + i),
            "source_uri": f"file:///corpus/{prefix}-{offset + i}.txt",
            "metadata": {"n": offset + i},
        }
        for i in range(n)
    ]


def ingest(client: httpx.Client, chunks: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    response = client.post("/lightrag/ingest-async", json={"chunks": chunks, "source_type": "text", **extra})
    assert response.status_code == 202, response.text
    return response.json()


def wait_job(
    client: httpx.Client, job_id: str, timeout: float = 120, statuses: tuple[str, ...] = ("completed", "failed")
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get(f"/jobs/{job_id}")
        if response.status_code == 200:
            job = response.json()
            if job["status"] in statuses:
                return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {statuses} in {timeout}s; last: {job}")


@dataclass
class SSEEvent:
    id: str
    type: str
    data: dict[str, Any]
    received: float = field(default_factory=time.time)


@dataclass
class SSECollector:
    """A real SSE client on its own thread: parses id/event/data frames."""

    url: str
    headers: dict[str, str]
    stop_when: Any = None
    events: list[SSEEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    status_code: int | None = None
    error: BaseException | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    def start(self) -> SSECollector:
        threading.Thread(target=self._run, daemon=True).start()
        assert self.connected.wait(15), f"SSE client could not connect: {self.error!r}"
        return self

    def _run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(10, read=60)) as response:
                self.status_code = response.status_code
                self.connected.set()
                if response.status_code != 200:
                    return
                frame: dict[str, str] = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        self.comments.append(line)
                    elif line == "":
                        if "event" in frame:
                            event = SSEEvent(frame.get("id", ""), frame["event"], json.loads(frame.get("data", "{}")))
                            self.events.append(event)
                            if self.stop_when is not None and self.stop_when(event):
                                return
                        frame = {}
                    else:
                        key, _, value = line.partition(":")
                        frame[key] = value.removeprefix(" ")
        except BaseException as exc:  # reported to the test through self.error
            self.error = exc
            self.connected.set()
        finally:
            self.finished.set()

    def wait(self, timeout: float) -> list[SSEEvent]:
        assert self.finished.wait(timeout), f"SSE stream did not finish in {timeout}s; got {len(self.events)} events"
        return self.events


def lightrag_files(state_dir: Path) -> dict[str, Path]:
    """LightRAG's local storage files under the service's state directory."""
    found = {}
    for path in (state_dir / "lightrag").rglob("*"):
        if path.name.startswith("kv_store_doc_status") and path.suffix == ".json":
            found["doc_status"] = path
        elif path.suffix == ".graphml":
            found["graph"] = path
    return found
