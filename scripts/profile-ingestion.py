#!/usr/bin/env python3
"""Where does the service spend its CPU per chunk on the LightRAG path? A py-spy profile.

Starts its own Redis, PostgreSQL and the LLM stand-in (test/lab stand-in,
answering at once) on loopback, the service rendered from a role checkout,
posts N chunks of prose, samples the service with py-spy while they are
ingested, and prints the functions with the most CPU of their own (self time)
and the chunks/s and CPU seconds of the run.

    .venv-service/bin/python scripts/profile-ingestion.py [--chunks 300] [--top 15] [--repo PATH]

--repo renders the service from another checkout (to compare before/after).
Needs root (PostgreSQL runs as user postgres) and py-spy on PATH or in the venv.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.servers import PostgresServer, RedisServer, Standin, free_port, wait_until  # noqa: E402
from tests.support.service import API_TOKEN, PG_PASSWORD, settings_env  # noqa: E402

PEOPLE = ["Amara Osei", "Bjorn Halvorsen", "Chiara Benedetti", "Dmitri Volkov", "Elena Marquez", "Farid Haddad"]
PLACES = ["Rotterdam", "Valparaiso", "Kyoto", "Tromso", "Marrakesh", "Wellington"]
ORGS = ["Northwind Shipping", "Helios Grid", "Aurora Textiles", "Cobalt Ridge Mining", "Lumen Archives"]


def prose(index: int, tag: str) -> str:
    a, b = PEOPLE[index % 6], PEOPLE[(index + 2) % 6]
    org, place = ORGS[index % 5], PLACES[index % 6]
    return (
        f"In report {tag}-{index}, {a} of {org} met {b} in {place} to settle the spring contract. "
        f"{b} had led the {org} office in {place} for years, and {a} agreed to ship the first cargo "
        f"from {place} before the autumn storms. The {org} board in {place} approved the plan."
    )


# Where a sample is (anywhere in its stack): the costs the issue names.
MARKERS = {
    "storage flush (index_done_callback)": "index_done_callback",
    "JSON writes (write_json)": "write_json",
    "LLM calls (chat completions)": "completions.py",
    "embedding calls": "embeddings.py",
    "OpenAI/httpx client set-up": "create_openai_async_client",
    "SSL context creation": "create_default_context",
    "tokenisation (tiktoken)": "tiktoken",
    "entity extraction (operate.extract_entities)": "extract_entities",
    "graph merge (merge_nodes_and_edges)": "merge_nodes_and_edges",
    "doc-status reads (aget_docs_by_ids)": "aget_docs_by_ids",
}


def samples(collapsed: Path) -> Iterator[tuple[str, int]]:
    """py-spy's raw (collapsed) output: each stack (frames joined by ;) and its sample count."""
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            yield stack, int(count)


def inclusive(collapsed: Path) -> list[tuple[str, float]]:
    """Share of samples whose stack passes through each marker."""
    hits: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in samples(collapsed):
        total += count
        for label, marker in MARKERS.items():
            if marker in stack:
                hits[label] += count
    return [(label, 100.0 * hits[label] / max(total, 1)) for label in MARKERS]


def top_self(collapsed: Path, top: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """py-spy's raw (collapsed) stacks: the share of samples per innermost frame,
    and per package of the innermost frame (where the CPU goes, by library)."""
    frames_count: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in samples(collapsed):
        inner = stack.split(";")[-1]
        total += count
        name, _, where = inner.partition(" (")
        path = where.rstrip(")").rsplit(":", 1)[0]
        frames_count[f"{name} ({Path(path).name})"] += count
        packages[_package(path)] += count
    share = 100.0 / max(total, 1)
    return (
        [(frame, n * share) for frame, n in frames_count.most_common(top)],
        [(package, n * share) for package, n in packages.most_common(top)],
    )


def callers(collapsed: Path, marker: str, top: int) -> list[tuple[str, float]]:
    """Of the samples whose stack passes through `marker`, the share (of all samples)
    per caller: the nearest LightRAG frame outside lightrag/utils.py above the first
    frame that matches (who asked for that work)."""
    hits: collections.Counter[str] = collections.Counter()
    total = 0
    for stack, count in samples(collapsed):
        total += count
        frames = stack.split(";")
        first = next((i for i, frame in enumerate(frames) if marker in frame), None)
        if first is None:
            continue
        outer = [f for f in reversed(frames[:first]) if "/lightrag/" in f and "/lightrag/utils.py" not in f]
        name, _, where = (outer[0] if outer else frames[first]).partition(" (")
        path, _, line_no = where.rstrip(")").rpartition(":")
        hits[f"{name} ({Path(path).name}:{line_no})"] += count
    return [(caller, 100.0 * n / max(total, 1)) for caller, n in hits.most_common(top)]


def _package(path: str) -> str:
    marker = "site-packages/"
    if marker in path:
        return path.split(marker, 1)[1].split("/", 1)[0]
    if "/shield_orchestrator/" in path:
        return "shield_orchestrator"
    return "python stdlib" if "/lib/python" in path else (Path(path).name or "?")


def load_renderer(repo: Path) -> Any:
    """scripts/render_service.py of the checkout to profile (this checkout's own is
    already imported by tests.support: load the other one under its own name)."""
    spec = importlib.util.spec_from_file_location(
        f"render_service_{abs(hash(repo))}", repo / "scripts" / "render_service.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--chunks", type=int, default=300)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument(
        "--callers", metavar="MARKER", help="also list who calls the frames matching MARKER, e.g. tiktoken"
    )
    parser.add_argument("--set", action="append", default=[], help="name=value: a setting of the service")
    args = parser.parse_args()
    render_service = load_renderer(args.repo)

    root = Path(tempfile.mkdtemp(prefix="shield-profile-"))
    os.chmod(root, 0o755)  # noqa: S103 - PostgreSQL runs as user postgres
    servers: list[RedisServer | Standin] = []
    postgres = None
    try:
        redis = RedisServer.start(root)
        servers.append(redis)
        postgres = PostgresServer.start_new(root / "postgres", PG_PASSWORD)
        standin = Standin.start(root, embedding_dim=768, extra=["--no-failure-injection"])
        servers.append(standin)
        src = render_service.render(root / "src").parent
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")} | {"PYTHONPATH": str(src)}
        env |= settings_env(
            {
                "state_dir": root / "state",
                "listen_host": "127.0.0.1",
                "listen_port": port,
                "redis_port": redis.port,
                "postgres_port": postgres.port,
                "postgres_password": PG_PASSWORD,
                "api_token": API_TOKEN,
                "llm_base_url": standin.base_url,
                "embedding_base_url": standin.base_url,
                "hostname": "profilehost",
            }
            | dict(item.split("=", 1) for item in args.set)
        )
        (root / "state").mkdir()
        subprocess.run(
            [sys.executable, "-m", "shield_orchestrator", "migrate"], env=env, check=True, capture_output=True
        )
        return profile(env, port, standin, root, args)
    finally:
        for server in servers:
            server.stop()
        if postgres is not None and postgres.running:
            postgres.stop("fast")
        shutil.rmtree(root, ignore_errors=True)


def profile(env: dict[str, str], port: int, standin: Standin, root: Path, args: argparse.Namespace) -> int:
    log = open(root / "service.log", "wb")
    service = subprocess.Popen([sys.executable, "-m", "shield_orchestrator", "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 90, "the service")
        tag = os.urandom(4).hex()
        chunks = [{"text": prose(i, tag), "source_uri": f"profile/{tag}/{i}"} for i in range(args.chunks)]
        before = standin.stats()
        collapsed = root / "profile.txt"
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        sampler = subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(service.pid),
                "--format",
                "raw",
                "--full-filenames",
                "--output",
                str(collapsed),
                "--rate",
                "50",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cpu_before = _cpu(service.pid)
        started = time.monotonic()
        job = httpx.post(f"{url}/lightrag/ingest-async", json={"chunks": chunks}, headers=headers, timeout=60).json()
        wait_until(
            lambda: httpx.get(f"{url}/jobs/{job['job_id']}", headers=headers).json()["status"] == "completed",
            3600,
            "the job",
            0.2,
        )
        elapsed = time.monotonic() - started
        cpu = _cpu(service.pid) - cpu_before
        sampler.send_signal(subprocess.signal.SIGINT)
        sampler.wait(60)
        calls = {key: value - before.get(key, 0) for key, value in standin.stats().items()}
        print(f"{args.chunks} chunks in {elapsed:.1f}s = {args.chunks / elapsed:.2f} chunks/s; service CPU {cpu:.1f}s")
        chat, embeddings = calls.get("POST /v1/chat/completions", 0), calls.get("POST /v1/embeddings", 0)
        print(f"stand-in calls: chat {chat}, embeddings {embeddings}")
        frames, packages = top_self(collapsed, args.top)
        print("self time by function:")
        for frame, share in frames:
            print(f"  {share:5.1f}%  {frame}")
        print("self time by package:")
        for package, share in packages:
            print(f"  {share:5.1f}%  {package}")
        print("samples passing through:")
        for label, share in inclusive(collapsed):
            print(f"  {share:5.1f}%  {label}")
        if args.callers:
            print(f"callers of {args.callers}:")
            for caller, share in callers(collapsed, args.callers, args.top):
                print(f"  {share:5.1f}%  {caller}")
        print("LightRAG's files after the run:")
        for path in sorted((root / "state").rglob("*"), key=lambda item: -item.stat().st_size)[:8]:
            if path.is_file():
                print(f"  {path.stat().st_size / 1e6:7.2f} MB  {path.name}")
        return 0
    finally:
        service.terminate()
        service.wait(90)
        log.close()


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
