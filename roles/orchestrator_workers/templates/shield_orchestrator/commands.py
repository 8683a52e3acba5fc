"""The CLI's commands other than serve (cli.py parses, this module runs)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from redis.asyncio import Redis

from .jobs.dead_letters import DeadLetters
from .jobs.history import JobHistory, create_engine
from .jobs.migrations import HEAD, migrate
from .jobs.tracker import JobTracker
from .lightrag.graph_check import check_graph, write_dump
from .lightrag.processor import Endpoints, open_lightrag
from .lightrag.verify import chunk_indexes, verify_job
from .queue.keys import RedisKeys
from .queue.snapshot import SnapshotError, export_queue, import_queue, summary
from .queue.stream import IngestionStream
from .service import make_redis, workspace_lock
from .settings import Settings
from .workers.breaker import DependencyGate

Result = tuple[dict[str, object], int]
EXIT_UNVERIFIED = 1  # verify-graph: the graph could not be read (the service or the storages down)
EXIT_INCONSISTENT = 3  # verify-graph: read, and inconsistent
GRAPH_TIMEOUT = 600.0


async def run(settings: Settings, args: argparse.Namespace) -> Result:
    """The command's JSON answer and exit status."""
    if args.command in ("migrate", "init-db"):
        wanted = getattr(args, "to", HEAD)
        return await migrate_command(settings, None if wanted == "base" else wanted), 0
    if args.command == "inspect-queue":
        return await inspect_queue(settings), 0
    if args.command == "verify-job":
        report = await verify_job_command(settings, args.job_id)
        return report, 0 if report.get("verified") else 1
    if args.command == "verify-graph":
        return await verify_graph_command(settings, args.dump)
    if args.command in ("export-queue", "import-queue"):
        return await queue_snapshot_command(settings, args)
    return await dlq_command(settings, args)


async def migrate_command(settings: Settings, target: str | None) -> dict[str, object]:
    engine = create_engine(settings)
    try:
        report = await migrate(engine, target)
    finally:
        await engine.dispose()
    return {"database": settings.postgres_db, "before": report.before, "after": report.after, "applied": report.applied}


async def inspect_queue(settings: Settings) -> dict[str, object]:
    redis = make_redis(settings)
    try:
        inspection = await IngestionStream(redis, RedisKeys.from_settings(settings)).inspect()
    finally:
        await redis.aclose()
    return inspection.as_dict()


async def queue_snapshot_command(settings: Settings, args: argparse.Namespace) -> Result:
    """export-queue --output PATH / import-queue --input PATH: the queue's part of a
    backup (queue/snapshot.py), with the pool stopped on every host; exit 1 when refused."""
    redis = make_redis(settings)
    keys = RedisKeys.from_settings(settings)
    try:
        if args.command == "export-queue":
            snapshot = await export_queue(redis, keys)
            await asyncio.to_thread(write_private, args.output, json.dumps(snapshot))
            return {**summary(snapshot), "output": args.output}, 0
        loaded = json.loads(await asyncio.to_thread(Path(args.input).read_text, encoding="utf-8"))
        return {**await import_queue(redis, keys, loaded), "input": args.input}, 0
    except (SnapshotError, OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}, 1
    finally:
        await redis.aclose()


def write_private(path: str, content: str) -> None:
    """`content` to `path`, readable by its owner only, replaced in one rename."""
    partial = f"{path}.partial"
    if os.path.exists(partial):
        os.unlink(partial)
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


async def verify_job_command(settings: Settings, job_id: str) -> dict[str, object]:
    """verify-job: from the graph itself when it is in PostgreSQL (any host can read
    it), else from this host's running service (one writer per local storage)."""
    if settings.lightrag_storage != "postgres":
        return await _verify_through_service(settings, job_id)
    async with stores(settings) as (_redis, tracker, history):
        job = await tracker.get(job_id) or await history.get(job_id)
    if job is None:
        return {"job_id": job_id, "verified": False, "error": "job not found"}
    indexes = chunk_indexes(job["job_type"], job["chunks_total"])
    if indexes is None:
        return {"job_id": job_id, "verified": False, "error": "a delete job has no chunk to read back"}
    endpoints = Endpoints(settings)
    rag = await open_lightrag(settings, DependencyGate(lambda _change: None), endpoints)
    try:
        return dict(await verify_job(rag, job["job_id"], indexes))
    finally:
        await rag.finalize_storages()
        await endpoints.close()


def _service_url(settings: Settings, path: str) -> tuple[str, dict[str, str]]:
    """This host's running service: the URL of `path` and the token's header."""
    host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "", "::") else settings.listen_host
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    return f"http://{host}:{settings.listen_port}{path}", headers


async def _verify_through_service(settings: Settings, job_id: str) -> dict[str, object]:
    url, headers = _service_url(settings, f"/jobs/{job_id}/verify")
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.get(url, headers=headers)
    body: dict[str, object] = response.json()
    if response.status_code != 200:
        return {"job_id": job_id, "verified": False, "error": f"HTTP {response.status_code}: {body.get('detail')}"}
    return body


async def verify_graph_command(settings: Settings, dump_path: str | None) -> Result:
    """verify-graph: like verify-job, from the graph itself when it is in PostgreSQL
    (under the workspace lock, between two rounds of the hosts), else from this
    host's running service. Exit 0 consistent, 3 inconsistent, 1 not read."""
    if settings.lightrag_storage != "postgres":
        report = await _graph_through_service(settings, dump_path is not None)
    else:
        report = await _graph_from_postgres(settings, dump_path is not None)
    dump = report.pop("dump", None)
    if "error" in report:
        return report, EXIT_UNVERIFIED
    if dump_path is not None and isinstance(dump, dict):
        await asyncio.to_thread(write_dump, dump_path, dump)
        report["dump_path"] = dump_path
    return report, 0 if report.get("consistent") else EXIT_INCONSISTENT


async def _graph_from_postgres(settings: Settings, dump: bool) -> dict[str, object]:
    redis = make_redis(settings)
    endpoints = Endpoints(settings)
    try:
        rag = await open_lightrag(settings, DependencyGate(lambda _change: None), endpoints)
        try:
            async with workspace_lock(settings, redis, RedisKeys.from_settings(settings)):
                return dict(await check_graph(rag, dump))
        finally:
            await rag.finalize_storages()
    except Exception as exc:  # noqa: BLE001 - the answer says why the graph could not be read
        return {"consistent": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        await redis.aclose()
        await endpoints.close()


async def _graph_through_service(settings: Settings, dump: bool) -> dict[str, object]:
    url, headers = _service_url(settings, "/graph/verify")
    try:
        async with httpx.AsyncClient(timeout=GRAPH_TIMEOUT) as client:
            response = await client.get(url, headers=headers, params={"dump": "true"} if dump else None)
        body: dict[str, object] = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return {"consistent": False, "error": f"the service at {url}: {type(exc).__name__}: {exc}"[:500]}
    if response.status_code != 200:
        return {"consistent": False, "error": f"HTTP {response.status_code}: {body.get('detail')}"}
    return body


@asynccontextmanager
async def stores(settings: Settings) -> AsyncIterator[tuple[Redis, JobTracker, JobHistory]]:
    redis = make_redis(settings)
    engine = create_engine(settings)
    try:
        yield (
            redis,
            JobTracker(redis, RedisKeys.from_settings(settings), ttl_seconds=settings.job_status_ttl),
            JobHistory(engine),
        )
    finally:
        await redis.aclose()
        await engine.dispose()


async def dlq_command(settings: Settings, args: argparse.Namespace) -> Result:
    async with stores(settings) as (redis, tracker, history):
        letters = DeadLetters(redis, RedisKeys.from_settings(settings), tracker, history)
        if args.action == "list":
            found = await letters.find(args.job, args.limit)
            return {"dead_letters": [letter.as_dict() for letter in found], "count": len(found)}, 0
        if args.action == "discard":
            gone = [entry_id for entry_id in args.ids if await letters.discard(entry_id)]
            return {"discarded": gone, "missing": sorted(set(args.ids) - set(gone))}, 0 if len(gone) == len(
                args.ids
            ) else 1
        chosen = await letters.get(args.ids) if args.ids else await letters.find(args.job, limit=100_000)
        if not chosen:
            return {"replayed": 0, "error": "no such dead letter"}, 1
        report = await letters.replay(chosen, "cli")
        return {"replayed": report.replayed, "jobs": report.jobs, "skipped_jobs": report.skipped}, 0
