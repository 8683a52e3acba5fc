"""Command line: `python -m shield_orchestrator [--env-file PATH] serve | init-db | inspect-queue`.

serve          run the API and the worker pool (the systemd unit runs this)
init-db        create the PostgreSQL schema if missing (idempotent)
inspect-queue  print the stream, its consumer group, consumers and statistics as JSON
verify-job ID  did the job land in the graph? every chunk's document PROCESSED, its chunk
               vectors present, its entities counted (JSON; exit 1 when not verified)

--env-file reads the environment file the unit uses (the secrets) itself, so
that no secret has to travel on a command line or through sudo's log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping

import httpx

from .app import make_redis, serve
from .breaker import DependencyGate
from .database import JobHistory, create_engine, ensure_schema
from .deployed import BOUNDS, DEFAULTS
from .job_tracker import JobTracker
from .keys import RedisKeys
from .lightrag_processor import Endpoints, open_lightrag
from .settings import Settings, SettingsError
from .stream import IngestionStream
from .verify import verify_job

NOISY_LOGGERS = ("httpx", "httpx2", "openai", "nano-vectordb", "lightrag")
EXIT_CONFIG = 2


def read_env_file(text: str) -> dict[str, str]:
    """NAME=value lines as systemd's EnvironmentFile= reads them: comments and
    blank lines skipped; a value in double quotes takes the escapes \\ \" \\$ \\`
    and \n, one in single quotes is literal."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, sep, raw = line.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ValueError(f"line {number}: not NAME=value")
        values[name.strip()] = _unquote(raw.strip())
    return values


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    if not (len(raw) >= 2 and raw[0] == raw[-1] == '"'):
        return raw
    out: list[str] = []
    chars = iter(raw[1:-1])
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            out.append("\n" if following == "n" else following)
        else:
            out.append(char)
    return "".join(out)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """The deployed settings with the environment's overrides; SettingsError when invalid."""
    return Settings.load(environ, DEFAULTS, BOUNDS)


def configure_logging(level: str) -> None:
    # Under systemd, journald stamps time and unit; elsewhere add the time.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)
    # One line per HTTP call or per LightRAG pipeline step drowns what an
    # operator greps for; their warnings and errors still come through.
    if level.upper() != "DEBUG":
        for noisy in NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)


async def init_db(settings: Settings) -> list[str]:
    engine = create_engine(settings)
    try:
        return await ensure_schema(engine)
    finally:
        await engine.dispose()


async def inspect_queue(settings: Settings) -> dict[str, object]:
    redis = make_redis(settings)
    try:
        inspection = await IngestionStream(redis, RedisKeys.from_settings(settings)).inspect()
    finally:
        await redis.aclose()
    return inspection.as_dict()


async def verify_job_command(settings: Settings, job_id: str) -> dict[str, object]:
    """verify-job: from the graph itself when it is in PostgreSQL (any host can read
    it), else from this host's running service (one writer per local storage)."""
    if settings.lightrag_storage != "postgres":
        return await _verify_through_service(settings, job_id)
    redis = make_redis(settings)
    engine = create_engine(settings)
    try:
        job = await JobTracker(redis, RedisKeys.from_settings(settings), ttl_seconds=1).get(job_id)
        job = job or await JobHistory(engine).get(job_id)
    finally:
        await redis.aclose()
        await engine.dispose()
    if job is None:
        return {"job_id": job_id, "verified": False, "error": "job not found"}
    endpoints = Endpoints(settings)
    rag = await open_lightrag(settings, DependencyGate(lambda _change: None), endpoints)
    try:
        return dict(await verify_job(rag, job["job_id"], job["chunks_total"]))
    finally:
        await rag.finalize_storages()
        await endpoints.close()


async def _verify_through_service(settings: Settings, job_id: str) -> dict[str, object]:
    host = "127.0.0.1" if settings.listen_host in ("0.0.0.0", "", "::") else settings.listen_host
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
    url = f"http://{host}:{settings.listen_port}/jobs/{job_id}/verify"
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.get(url, headers=headers)
    body: dict[str, object] = response.json()
    if response.status_code != 200:
        return {"job_id": job_id, "verified": False, "error": f"HTTP {response.status_code}: {body.get('detail')}"}
    return body


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="shield_orchestrator", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--env-file", help="environment file to read (the unit's EnvironmentFile=)")
    parser.add_argument("command", choices=["serve", "init-db", "inspect-queue", "verify-job"])
    parser.add_argument("job_id", nargs="?", help="the job (verify-job)")
    args = parser.parse_args(argv)
    environ: dict[str, str] = {}
    try:
        if args.env_file:
            with open(args.env_file, encoding="utf-8") as handle:
                environ = read_env_file(handle.read())
    except (OSError, ValueError) as exc:
        print(f"configuration error: --env-file {args.env_file}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        settings = load_settings({**environ, **os.environ})
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    if args.command == "serve":
        return serve(settings)
    if args.command == "init-db":
        created = asyncio.run(init_db(settings))
        print(json.dumps({"created": created, "database": settings.postgres_db}))
        return 0
    if args.command == "verify-job":
        if not args.job_id:
            print("verify-job: a job id is required", file=sys.stderr)
            return EXIT_CONFIG
        report = asyncio.run(verify_job_command(settings, args.job_id))
        print(json.dumps(report))
        return 0 if report.get("verified") else 1
    print(json.dumps(asyncio.run(inspect_queue(settings))))
    return 0
