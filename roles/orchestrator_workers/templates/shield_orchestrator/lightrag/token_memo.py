"""tiktoken's encoding, remembering what it encoded last.

LightRAG (1.5.7, pinned) encodes the same strings again and again: every
fragment of an entity's description each time a document merges into that
entity (to decide whether to summarise), and the extraction system prompt
once per document. A py-spy profile of 1,000 chunks put tiktoken at 16.7 %
of the service's CPU, a third of it in those two places
(`scripts/profile-ingestion.py --callers tiktoken`).

`MemoEncoding.encode` remembers the last `size` strings it encoded, their
tokens packed 4 bytes each (a fragment of 60 tokens: under 0.3 kB), and
hands out a new list each time, so a caller that changes its list changes
nothing else. `functools.lru_cache` is safe to call from several threads,
as LightRAG's Tokenizer requires. A call with keyword arguments (LightRAG's
retry with `disallowed_special=()`) and a failed encode (special tokens in
the text: tiktoken's ValueError) are not remembered.
"""

from __future__ import annotations

import functools
from array import array
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from functools import _CacheInfo

    from tiktoken import Encoding

MEMO_SIZE = 8192


class MemoEncoding:
    """tiktoken's encoding, remembering the last `size` strings it encoded.

    Owns the encoding and the memo (tokens packed 4 bytes each). Guarantees: the
    tokens tiktoken gives, as a new list on every call; a call with keyword
    arguments and a failed encode go to tiktoken and are not remembered; safe
    to call from several threads."""

    def __init__(self, encoding: Encoding, size: int = MEMO_SIZE) -> None:
        self._encoding = encoding
        self._packed = functools.lru_cache(maxsize=size)(self._pack)

    def _pack(self, text: str) -> array[int]:
        return array("I", self._encoding.encode(text))

    def encode(self, text: str, **kwargs: Any) -> list[int]:  # tiktoken's keywords, passed on
        if kwargs:
            return self._encoding.encode(text, **kwargs)
        return self._packed(text).tolist()

    def decode(self, tokens: list[int]) -> str:
        return self._encoding.decode(tokens)

    def memo_info(self) -> _CacheInfo:
        """functools' cache_info(): hits, misses, maxsize, currsize."""
        return self._packed.cache_info()
