"""What LightRAG costs the service in memory, beyond the graph it holds.

The file vector storages are written without a copy of their matrix: the same
file nano-vectordb writes, byte for byte, with a transient of one slice
instead of four copies of the matrix. pypinyin, which LightRAG imports, leaves
its phrase dictionary unloaded."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nano_vectordb import NanoVectorDB
from nano_vectordb.dbs import array_to_buffer_string, load_storage
from shield_orchestrator.lightrag.commit.vector_save import SLICE_BYTES, patch_vector_save, write_storage

DIM = 768


def storage(rows: int, *, extra: bool = False) -> dict[str, Any]:
    rng = np.random.default_rng(rows)
    value: dict[str, Any] = {
        "embedding_dim": DIM,
        "data": [
            {"__id__": f"rel-{i}", "content": f'Zürich → Genève «{i}»\n"quoted"', "source_id": "chunk-a<SEP>chunk-b"}
            for i in range(rows)
        ],
        "matrix": rng.standard_normal((rows, DIM)).astype(np.float32),
    }
    if extra:
        value["additional_data"] = {"note": "ünïcode", "n": 3}
    return value


def nano_bytes(value: dict[str, Any]) -> str:
    """What nano-vectordb 0.0.4.3's own `save` writes (its body, on a buffer)."""
    out = io.StringIO()
    json.dump({**value, "matrix": array_to_buffer_string(value["matrix"])}, out, ensure_ascii=False)
    return out.getvalue()


@pytest.mark.parametrize(
    ("rows", "extra"),
    [(0, False), (1, False), (3, True), (SLICE_BYTES // (DIM * 4) + 5, False)],
    ids=["empty", "one row", "additional data", "more than one slice"],
)
def test_the_file_is_the_one_nano_vectordb_writes(rows: int, extra: bool) -> None:
    value = storage(rows, extra=extra)
    out = io.StringIO()
    write_storage(value, out)
    assert out.getvalue() == nano_bytes(value)


def test_a_saved_client_loads_back_unchanged(tmp_path: Path) -> None:
    patch_vector_save()
    assert getattr(NanoVectorDB.save, "__shield_patched__", False)
    path = tmp_path / "vdb_relationships.json"
    client = NanoVectorDB(DIM, storage_file=str(path))
    vectors = storage(40)["matrix"]
    client.upsert([{"__id__": f"rel-{i}", "__vector__": vectors[i], "content": f"r{i}"} for i in range(40)])
    client.save()
    loaded = load_storage(str(path))
    assert loaded is not None
    assert [row["__id__"] for row in loaded["data"]] == [f"rel-{i}" for i in range(40)]
    np.testing.assert_array_equal(loaded["matrix"], client._NanoVectorDB__storage["matrix"])  # type: ignore[attr-defined]
    patch_vector_save()  # a second call leaves the patch as it is
    assert getattr(NanoVectorDB.save, "__shield_patched__", False)


def test_the_transient_is_a_slice_not_the_matrix() -> None:
    """After 1,000 chunks of W2 the relationships' matrix is 20,000 x 768
    floats (61 MB); nano-vectordb's own save peaked 243 MB above it."""
    value = storage(20_000)
    matrix_bytes = value["matrix"].nbytes

    class Sink(io.TextIOBase):
        def write(self, text: str) -> int:
            return len(text)

    tracemalloc.start()
    try:
        write_storage(value, Sink())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * SLICE_BYTES, f"peak {peak / 2**20:.1f} MiB for a {matrix_bytes / 2**20:.0f} MiB matrix"


def test_lightrag_is_imported_without_the_pinyin_phrase_dictionary() -> None:
    """44 MB of resident memory for sorting listings the service never asks for."""
    probe = (
        "from shield_orchestrator.lightrag.processor import prepare_import\n"
        "prepare_import()\n"
        "import lightrag.utils, pypinyin.constants\n"
        "assert lightrag.utils.pypinyin is not None, 'pypinyin not imported by LightRAG'\n"
        "print(len(pypinyin.constants.PHRASES_DICT))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYPINYIN_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0"
