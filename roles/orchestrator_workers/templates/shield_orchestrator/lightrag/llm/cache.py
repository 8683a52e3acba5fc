"""LightRAG's LLM response cache on the file storages: a SQLite file, durable on write.

LightRAG keys each extraction, gleaning and summary answer by what makes it
(the prompt with the chunk's text, the system prompt, the model's identity);
with `enable_llm_cache_for_entity_extract` it looks there before it calls the
LLM. That cache is what spares a paid LLM when a chunk is processed again
(a redelivery, a retry, a replay, a takeover, a restart), and what the feeder's
extraction ahead of the pipeline fills (extract.py).

On the PostgreSQL storages the cache is LightRAG's own table, written on upsert.
On the file storages LightRAG keeps it as one JSON file rewritten whole at
every flush: O(cache) per commit, and durable only at the next commit, after
the merge it feeds. `SqliteCache` replaces it there: each answer is one row,
committed (fsync) before `upsert` returns, so it is on disk before the merge
that uses it begins; a kill -9 loses none. It stays outside the group commit
(commit/): the cache is content-addressed, an answer with no document yet is
harmless, and one document's answers are found again whatever the graph holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from typing import Any

CACHE_FILE = "shield_llm_cache.sqlite3"


class _Rows:
    """The SQLite file and its one connection, used from worker threads one at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM cache WHERE key IN (SELECT value FROM json_each(?))", (json.dumps(keys),)
            )
            for key, value in rows:
                found[key] = json.loads(value)
        return found

    def put(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        now = int(time.time())  # as LightRAG's JSON storage stamps a row: the cache hit's timestamp
        values = [
            (key, json.dumps({"create_time": now, **row, "update_time": now}, ensure_ascii=False))
            for key, row in rows.items()
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO cache (key, value) VALUES (?, ?)", values)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def delete(self, keys: list[str]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM cache WHERE key = ?", [(key,) for key in keys])

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM cache").fetchone()[0])

    def clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM cache")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def sqlite_cache(replaced: Any, working_dir: str) -> Any:
    """A SqliteCache in place of LightRAG's `llm_response_cache` (`replaced`, not yet
    initialised): same namespace, workspace and configuration, its file under
    `working_dir` (the workspace's folder when there is one)."""
    from lightrag.base import BaseKVStorage

    class SqliteCache(BaseKVStorage):  # type: ignore[misc]  # LightRAG ships no types
        """LightRAG's LLM response cache as a SQLite file. Owns the file and its
        connection. Guarantees: an upsert is committed and synced before it
        returns; reads see every committed row; nothing is held in memory."""

        rows: _Rows | None = None
        durable_on_write = True  # the group commit leaves it out (commit/group.py)

        async def initialize(self) -> None:
            folder = os.path.join(working_dir, self.workspace) if self.workspace else working_dir
            os.makedirs(folder, exist_ok=True)
            self.rows = await asyncio.to_thread(_Rows, os.path.join(folder, CACHE_FILE))

        async def finalize(self) -> None:
            if self.rows is not None:
                await asyncio.to_thread(self.rows.close)
                self.rows = None

        def _open(self) -> _Rows:
            if self.rows is None:
                raise RuntimeError("the LLM cache is not initialised")
            return self.rows

        async def index_done_callback(self) -> None:
            """Nothing to flush: every upsert is already on disk."""

        async def get_by_id(self, id: str) -> dict[str, Any] | None:
            return (await asyncio.to_thread(self._open().get, [id])).get(id)

        async def get_by_ids(self, ids: list[str]) -> list[dict[str, Any] | None]:
            found = await asyncio.to_thread(self._open().get, list(ids))
            return [found.get(key) for key in ids]

        async def filter_keys(self, keys: set[str]) -> set[str]:
            found = await asyncio.to_thread(self._open().get, list(keys))
            return {key for key in keys if key not in found}

        async def upsert(self, data: dict[str, dict[str, Any]]) -> None:
            if data:
                await asyncio.to_thread(self._open().put, data)

        async def delete(self, ids: list[str]) -> None:
            if ids:
                await asyncio.to_thread(self._open().delete, list(ids))

        async def is_empty(self) -> bool:
            return await asyncio.to_thread(self._open().count) == 0

        async def drop(self) -> dict[str, str]:
            await asyncio.to_thread(self._open().clear)
            return {"status": "success", "message": "data dropped"}

    return SqliteCache(
        namespace=replaced.namespace,
        workspace=replaced.workspace,
        global_config=replaced.global_config,
        embedding_func=replaced.embedding_func,
    )
