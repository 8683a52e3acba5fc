"""Command line: `python -m shield_orchestrator [--env-file PATH] COMMAND`.

serve              run the API and the worker pool (the systemd unit runs this)
migrate [--to R]   bring the PostgreSQL schema to the head revision (Alembic; idempotent,
                   one host at a time); init-db is its former name
inspect-queue      print the streams, the consumer group, consumers and statistics as JSON
verify-job ID      did the job land in the graph? every chunk's document PROCESSED, its
                   chunk vectors present, its entities counted (exit 1 when not verified)
verify-graph [--dump PATH]
                   is the workspace's graph whole? documents, chunks, entities, relations
                   and vectors cross-checked, every inconsistency named (exit 3 when there
                   is one, 1 when the graph could not be read); --dump writes the canonical
                   dump (JSON) that compares two graphs by equality
dlq list [--job ID] [--limit N] | replay --ids ID... | --job ID | --all | discard ID...
                   the dead letters (a replayed chunk goes back to its own job)
export-queue --output PATH
                   write the queue's part of a backup (both streams with what the group has
                   pending, the dead letters, the jobs' keys) to PATH as JSON (0600); refused
                   (exit 1) while a worker pool runs on any host
import-queue --input PATH
                   replace the queue and the jobs' keys with those of a snapshot: its entries
                   waiting or pending again, as they were (exit 1 when refused)

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
import threading
import time
from collections.abc import Callable, Mapping

from . import __version__, commands
from .deployed import BOUNDS, DEFAULTS
from .jobs.migrations import HEAD
from .lightrag.boundary import LightRAGVersionError, require_pinned_lightrag
from .service import serve
from .settings import Settings, SettingsError

NOISY_LOGGERS = ("httpx", "httpx2", "openai", "nano-vectordb", "lightrag")
EXIT_CONFIG = 2  # the service cannot run as configured or as installed
# LightRAG 1.5.7 (lightrag.py, aget_docs_by_ids) warns this for every batch whose
# documents it has not stored yet: routine here, and it buried the warnings that are not.
LIGHTRAG_STATUS_WARNING = "Document statuses not found for the following IDs"
SUPPRESSED_REPORT_SECONDS = 60.0


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
    lightrag_log = logging.getLogger("lightrag")  # the same logger once lightrag is imported
    if not any(isinstance(known, CountedSuppression) for known in lightrag_log.filters):
        lightrag_log.addFilter(CountedSuppression(LIGHTRAG_STATUS_WARNING))


class CountedSuppression(logging.Filter):
    """Drops the records whose message starts with `prefix`, counting them: the first
    passes (with a note saying so), then at most one record per `every` seconds, the
    first dropped one after that, is rewritten to `suppressed N '<prefix>' warnings in
    the last S s`. A burst followed by silence is reported with the next occurrence."""

    def __init__(
        self, prefix: str, every: float = SUPPRESSED_REPORT_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.every = every
        self.clock = clock
        self.pending = 0  # dropped since the last report
        self.total = 0  # dropped since the start
        self._since: float | None = None
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.prefix):
            return True
        with self._lock:
            now = self.clock()
            if self._since is None:
                self._since = now
                note = f"the next ones are counted and reported once per {self.every:g} s at most"
                self._rewrite(record, f"{message[:300]} ({note})")
                return True
            self.pending += 1
            self.total += 1
            if now - self._since < self.every:
                return False
            self._rewrite(
                record, f"suppressed {self.pending} '{self.prefix}' warnings in the last {now - self._since:.0f} s"
            )
            self.pending, self._since = 0, now
            return True

    @staticmethod
    def _rewrite(record: logging.LogRecord, message: str) -> None:
        record.msg, record.args = message, ()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="shield_orchestrator", description=(__doc__ or "").splitlines()[0])
    top.add_argument("--env-file", help="environment file to read (the unit's EnvironmentFile=)")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = top.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the API and the worker pool")
    migrate = sub.add_parser("migrate", help="bring the PostgreSQL schema to the head revision (idempotent)")
    migrate.add_argument("--to", default=HEAD, help="a revision to go to (down as well); 'base' drops the schema")
    sub.add_parser("init-db", help="the same as migrate (its former name)")
    sub.add_parser("inspect-queue", help="the streams, the consumer group, consumers, statistics (JSON)")
    verify = sub.add_parser("verify-job", help="did the job land in the graph? (JSON; exit 1 when not)")
    verify.add_argument("job_id")
    graph = sub.add_parser("verify-graph", help="cross-check the whole graph (JSON; exit 3 when inconsistent)")
    graph.add_argument("--dump", metavar="PATH", help="write the canonical dump of the graph (JSON) to PATH")
    dlq = sub.add_parser("dlq", help="dead letters: list, replay, discard").add_subparsers(dest="action", required=True)
    listing = dlq.add_parser("list")
    listing.add_argument("--job")
    listing.add_argument("--limit", type=int, default=100)
    replay = dlq.add_parser("replay").add_mutually_exclusive_group(required=True)
    replay.add_argument("--ids", nargs="+")
    replay.add_argument("--job")
    replay.add_argument("--all", action="store_true")
    discard = dlq.add_parser("discard")
    discard.add_argument("ids", nargs="+")
    export = sub.add_parser("export-queue", help="the queue's part of a backup, to a JSON file (the pool stopped)")
    export.add_argument("--output", required=True, metavar="PATH")
    restore = sub.add_parser("import-queue", help="replace the queue with a snapshot's (the pool stopped)")
    restore.add_argument("--input", required=True, metavar="PATH")
    return top


def settings_from(args: argparse.Namespace) -> Settings:
    """The deployed settings, the environment file and the environment; SettingsError or
    ValueError (an unreadable environment file) otherwise."""
    environ: dict[str, str] = {}
    if args.env_file:
        try:
            with open(args.env_file, encoding="utf-8") as handle:
                environ = read_env_file(handle.read())
        except OSError as exc:
            raise ValueError(f"--env-file {args.env_file}: {exc}") from None
    return load_settings({**environ, **os.environ})


def main(argv: list[str] | None = None) -> int:
    """The entry point (`python -m shield_orchestrator`, the `shield-orchestrator` console script)."""
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            # Here, before anything binds or connects: under uvicorn's lifespan the
            # refusal would come out as a traceback.
            require_pinned_lightrag()
            return serve(settings)
        result, code = asyncio.run(commands.run(settings, args))
    except LightRAGVersionError as exc:
        print(f"installation error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(result))
    return code
