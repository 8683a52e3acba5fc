"""Write LightRAG's file vector storages without a copy of their matrix.

With the local storages, every vector storage (entities, relationships,
chunks) is one nano-vectordb JSON file, rewritten whole at each commit.
nano-vectordb 0.0.4.3 (pinned) writes it by turning the whole float32 matrix
into bytes, then base64 bytes, then a str, and `json.dump` copies that str
once more on its way to the file: four copies of the matrix alive at once.
After 1,000 chunks the relationships' matrix is 64 MB (20,000 rows of 768
floats) and its save raised the peak RSS by 243 MB, measured.

`save` here writes the same file, byte for byte (the test compares them):
the same keys in the same order, `data` through `json.dump`, and the matrix
base64-encoded a slice at a time (slices of a multiple of 3 bytes encode to
pieces that join into the encoding of the whole). The transient is one
slice.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import IO

from ..boundary import NanoVectorClient

SLICE_BYTES = 3 * 1024 * 1024  # a multiple of 3: no padding inside the string


def write_storage(storage: Mapping[str, object], out: IO[str]) -> None:
    """What `json.dump({**storage, "matrix": base64(matrix)}, out, ensure_ascii=False)` writes."""
    import numpy as np

    out.write("{")
    for index, (key, value) in enumerate(storage.items()):
        if index:
            out.write(", ")
        out.write(json.dumps(key, ensure_ascii=False))
        out.write(": ")
        if key == "matrix":
            raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8).data  # tobytes() without the copy
            out.write('"')
            for start in range(0, len(raw), SLICE_BYTES):
                out.write(base64.b64encode(raw[start : start + SLICE_BYTES]).decode("ascii"))
            out.write('"')
        else:
            json.dump(value, out, ensure_ascii=False)
    out.write("}")


def patch_vector_save() -> None:
    """Replace nano-vectordb's `NanoVectorDB.save` with the streaming writer.

    A patch of the pinned library (like `patch_postgres_reconnect`): LightRAG
    builds its NanoVectorDB clients itself, and builds them again when it
    reloads a file, so the class is the one place every client goes through."""
    from nano_vectordb import NanoVectorDB

    if getattr(NanoVectorDB.save, "__shield_patched__", False):
        return

    def save(self: NanoVectorClient) -> None:
        with open(self.storage_file, "w", encoding="utf-8") as out:
            write_storage(self._NanoVectorDB__storage, out)

    save.__shield_patched__ = True  # type: ignore[attr-defined]
    save.__wrapped__ = NanoVectorDB.save  # type: ignore[attr-defined]  # nano-vectordb's own, for the contract test
    NanoVectorDB.save = save
