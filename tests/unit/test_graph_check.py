"""verify-graph's checker on a real LightRAG (offline, file storages): a graph as
LightRAG leaves it is consistent, with exact counts; each way of breaking it is
named by its kind and id, and by nothing else; the canonical dump of a corpus
does not depend on how it was ingested; GET /graph/verify and the CLI command
answer from it."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from shield_orchestrator import commands
from shield_orchestrator.api.app import create_app
from shield_orchestrator.api.context import AppContext
from shield_orchestrator.cli import parser
from shield_orchestrator.deployed import BOUNDS, DEFAULTS
from shield_orchestrator.lightrag.graph_check import (
    KINDS,
    GraphSnapshot,
    GraphUnreadable,
    GraphVerification,
    GraphVerifier,
    check_graph,
    dump_json,
    entity_vector_id,
    graph_problems,
    relation_vector_ids,
    stored_ids,
)
from shield_orchestrator.lightrag.processor import LightRAGProcessor
from shield_orchestrator.settings import Settings

from tests.support.offline_lightrag import open_offline_rag

TEXTS = {
    "d1": "Amara Osei met the board of Northwind Shipping in Rotterdam. "
    "Northwind Shipping owns the Rotterdam Terminal.",
    "d2": "Jonas Berg leads Baltic Freight in Gdansk. Baltic Freight competes with Northwind Shipping.",
    "d3": "Carla Diaz works for Andes Mining in Lima.",
}
ENTITIES = 10  # what the stand-in extracts from TEXTS
RELATIONS = 11
Rag = Any
Problems = set[tuple[str, str]]


async def ingest(rag: Rag, keys: list[str], prefix: str = "") -> None:
    """TEXTS[key] as document prefix+key (another prefix: as another job would name it)."""
    ids = [prefix + key for key in keys]
    await rag.ainsert([TEXTS[key] for key in keys], ids=ids, file_paths=[f"{doc_id}.txt" for doc_id in ids])


@pytest.fixture
async def rag(tmp_path: Path) -> AsyncIterator[Rag]:
    instance = await open_offline_rag(tmp_path)
    await ingest(instance, sorted(TEXTS))
    yield instance
    await instance.finalize_storages()


def named(report: GraphVerification) -> Problems:
    return {(problem["kind"], problem["id"]) for problem in report["problems"]}


async def test_a_graph_as_lightrag_leaves_it_is_consistent_with_exact_counts(rag: Rag) -> None:
    report = await check_graph(rag)
    assert report["problems"] == [] and report["consistent"] is True
    assert report["counts"] == {
        "documents": {"processed": 3},
        "chunks": 3,
        "chunk_vectors": 3,
        "entities": ENTITIES,
        "entity_vectors": ENTITIES,
        "relations": RELATIONS,
        "relation_vectors": RELATIONS,
    }
    assert report["dump"] is None and report["workspace"] == rag.workspace


async def delete_chunk_vector(rag: Rag) -> Problems:
    await rag.chunks_vdb.delete(["d2-chunk-000"])
    return {("chunk_vector_missing", "d2-chunk-000")}


async def delete_chunk_row(rag: Rag) -> Problems:
    await rag.text_chunks.delete(["d2-chunk-000"])
    return {("chunk_missing", "d2-chunk-000")}


async def delete_document_text(rag: Rag) -> Problems:
    await rag.full_docs.delete(["d1"])
    return {("document_content_missing", "d1")}


async def add_orphan_entity(rag: Rag) -> Problems:
    node = {"entity_id": "Ghost Ship", "entity_type": "ship", "description": "a ship", "source_id": "gone-chunk-000"}
    await rag.chunk_entity_relation_graph.upsert_node("Ghost Ship", node)
    return {
        ("entity_orphan", "Ghost Ship"),
        ("entity_vector_missing", "Ghost Ship"),
        ("unknown_source_chunk", "gone-chunk-000"),
    }


async def drop_entity_vector(rag: Rag) -> Problems:
    await rag.entities_vdb.delete([entity_vector_id("Jonas Berg")])
    return {("entity_vector_missing", "Jonas Berg")}


async def fail_a_processed_document(rag: Rag) -> Problems:
    """d3 FAILED, its chunk, vector, entities and relations left behind."""
    record = await rag.doc_status.get_by_id("d3")
    await rag.doc_status.upsert({"d3": {**record, "status": "failed", "error_msg": "killed"}})
    lone = ["Andes Mining", "Carla Diaz", "Lima"]
    return {
        ("unprocessed_document_data", "d3"),
        *(("entity_orphan", name) for name in lone),
        *(("relation_orphan", f"{a}<SEP>{b}") for a, b in [(lone[0], lone[1]), (lone[0], lone[2]), (lone[1], lone[2])]),
    }


async def remove_an_edge(rag: Rag) -> Problems:
    await rag.chunk_entity_relation_graph.remove_edges([("Jonas Berg", "Gdansk")])
    vector_id = relation_vector_ids(("Gdansk", "Jonas Berg"))[0]
    return {("relation_missing", "Gdansk<SEP>Jonas Berg"), ("relation_vector_stray", vector_id)}


async def add_stray_vectors_and_chunk(rag: Rag) -> Problems:
    await rag.entities_vdb.upsert({entity_vector_id("Nobody"): {"entity_name": "Nobody", "content": "Nobody\nno one"}})
    chunk = {"content": "loose text", "full_doc_id": "d9", "chunk_order_index": 0, "tokens": 2}
    await rag.text_chunks.upsert({"d9-chunk-000": chunk})
    await rag.chunks_vdb.upsert({"d9-chunk-000": {"content": "loose text", "full_doc_id": "d9"}})
    return {
        ("entity_vector_stray", entity_vector_id("Nobody")),
        ("chunk_stray", "d9-chunk-000"),
        ("chunk_vector_stray", "d9-chunk-000"),
    }


async def delete_an_entity(rag: Rag) -> Problems:
    """Gdansk out of the graph, its two relations with it; their vectors stay."""
    await rag.chunk_entity_relation_graph.delete_node("Gdansk")
    edges = [("Baltic Freight", "Gdansk"), ("Gdansk", "Jonas Berg")]
    return {
        ("entity_missing", "Gdansk"),
        ("entity_vector_stray", entity_vector_id("Gdansk")),
        *(("relation_missing", f"{a}<SEP>{b}") for a, b in edges),
        *(("relation_vector_stray", relation_vector_ids((a, b))[0]) for a, b in edges),
    }


async def drop_relation_vector(rag: Rag) -> Problems:
    await rag.relationships_vdb.delete(relation_vector_ids(("Baltic Freight", "Jonas Berg")))
    return {("relation_vector_missing", "Baltic Freight<SEP>Jonas Berg")}


async def forget_a_documents_chunks(rag: Rag) -> Problems:
    """d1's status lists no chunk: its chunk is nobody's, though its entities stay claimed."""
    record = await rag.doc_status.get_by_id("d1")
    await rag.doc_status.upsert({"d1": {**record, "chunks_list": [], "chunks_count": 0}})
    return {
        ("document_without_chunks", "d1"),
        ("chunk_stray", "d1-chunk-000"),
        ("chunk_vector_stray", "d1-chunk-000"),
        ("unknown_source_chunk", "d1-chunk-000"),
    }


CORRUPTIONS = [
    delete_an_entity,
    drop_relation_vector,
    forget_a_documents_chunks,
    delete_chunk_vector,
    delete_chunk_row,
    delete_document_text,
    add_orphan_entity,
    drop_entity_vector,
    fail_a_processed_document,
    remove_an_edge,
    add_stray_vectors_and_chunk,
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=[corrupt.__name__ for corrupt in CORRUPTIONS])
async def test_each_corruption_is_named_by_kind_and_id(rag: Rag, corrupt: Callable[[Rag], Awaitable[Problems]]) -> None:
    expected = await corrupt(rag)
    report = await check_graph(rag)
    assert named(report) == expected
    assert report["consistent"] is False and report["problems_total"] == len(expected)
    assert set(report["problems_by_kind"]) <= set(KINDS)
    assert all(problem["detail"] for problem in report["problems"])


async def test_a_stray_vector_is_named_by_what_it_names(rag: Rag) -> None:
    await add_stray_vectors_and_chunk(rag)
    (stray,) = [p for p in (await check_graph(rag))["problems"] if p["kind"] == "entity_vector_stray"]
    assert "'Nobody'" in stray["detail"]


async def test_the_same_corpus_gives_the_same_dump_however_it_was_ingested(rag: Rag, tmp_path: Path) -> None:
    other = await open_offline_rag(tmp_path / "other")
    try:
        for key in reversed(sorted(TEXTS)):  # one document at a time, in the other order, under other ids
            await ingest(other, [key], prefix="job2-")
        first, second = (await check_graph(rag, dump=True))["dump"], (await check_graph(other, dump=True))["dump"]
    finally:
        await other.finalize_storages()
    assert first is not None and second is not None
    assert dump_json(first) == dump_json(second)
    assert first["vectors"] == {"chunks": 3, "entities": ENTITIES, "relationships": RELATIONS}
    assert first["documents_processed"] == 3 and len(first["entities"]) == ENTITIES
    (northwind,) = [entity for entity in first["entities"] if entity["name"] == "Northwind Shipping"]
    assert len(northwind["source_chunks"]) == 2 and len(northwind["descriptions"]) == 2
    assert all(chunk.startswith("text-") for chunk in northwind["source_chunks"])


async def test_a_partial_graph_gives_another_dump(rag: Rag, tmp_path: Path) -> None:
    other = await open_offline_rag(tmp_path / "other")
    try:
        await ingest(other, ["d1", "d2"])
        partial = (await check_graph(other, dump=True))["dump"]
    finally:
        await other.finalize_storages()
    whole = (await check_graph(rag, dump=True))["dump"]
    assert partial is not None and whole is not None and dump_json(partial) != dump_json(whole)


def test_a_relation_to_no_entity_is_named() -> None:
    """A graph storage may hold an edge whose end is gone (networkx cannot: its
    snapshot is built here)."""
    docs = {"d1": {"status": "processed", "chunks_list": ["d1-chunk-000"]}}
    snap = GraphSnapshot(docs=docs, nodes={"A": {"source_id": "d1-chunk-000"}})
    snap.edges = {("A", "B"): {"source_id": "d1-chunk-000"}}
    snap.vectors = {"entities": {entity_vector_id("A")}, "relationships": set(relation_vector_ids(("A", "B")))}
    assert [(p["kind"], p["id"]) for p in graph_problems(snap)] == [("relation_endpoint_missing", "A<SEP>B")]


class FakeDB:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.asked: list[tuple[str, list[Any]]] = []

    async def query(self, sql: str, params: list[Any], multirows: bool = False) -> list[dict[str, str]]:
        self.asked.append((sql, params))
        return [{"id": item} for item in self.ids]


async def test_postgresql_storages_are_listed_by_their_table_in_the_workspace() -> None:
    """No PostgreSQL with pgvector here: the listing's SQL and buffers, on stand-ins of the classes."""
    kv = type("PGKVStorage", (), {})()
    kv.db, kv.workspace, kv.namespace = FakeDB(["a", "b"]), "shield", "text_chunks"
    assert await stored_ids(kv) == {"a", "b"}
    assert kv.db.asked == [("SELECT id FROM LIGHTRAG_DOC_CHUNKS WHERE workspace=$1", ["shield"])]
    vectors = type("PGVectorStorage", (), {})()
    vectors.db, vectors.workspace, vectors.table_name = FakeDB(["x", "y"]), "shield", "LIGHTRAG_VDB_ENTITY_h_32d"
    vectors._pending_vector_docs, vectors._pending_vector_deletes = {"z": object()}, {"y"}
    assert await stored_ids(vectors) == {"x", "z"}
    assert vectors.db.asked[0][0] == "SELECT id FROM LIGHTRAG_VDB_ENTITY_h_32d WHERE workspace=$1"
    with pytest.raises(GraphUnreadable, match="OtherStorage"):
        await stored_ids(type("OtherStorage", (), {})())


async def test_unreadable_storages_raise_graph_unreadable(rag: Rag) -> None:
    async def broken(*_: Any, **__: Any) -> Any:
        raise ConnectionRefusedError("storage down")

    rag.chunk_entity_relation_graph.get_all_nodes = broken
    with pytest.raises(GraphUnreadable, match="storage down"):
        await check_graph(rag)


def test_operations_md_names_every_kind() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    section = text.split("## verify-job and verify-graph", 1)[1]
    assert re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE) == list(KINDS)


def test_the_lightrag_processor_is_a_graph_verifier() -> None:
    assert issubclass(LightRAGProcessor, GraphVerifier)


class Verifier:
    def __init__(self, answer: GraphVerification | Exception) -> None:
        self.answer = answer
        self.dumps: list[bool] = []

    async def verify_graph(self, dump: bool = False) -> GraphVerification:
        self.dumps.append(dump)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    async def verify(self, job_id: str, chunks_total: int) -> Any:
        raise AssertionError("not this one")


def client_with(verifier: Any) -> TestClient:
    settings = Settings.load({"ORCHESTRATOR_API_TOKEN": "unit-token"}, DEFAULTS, BOUNDS)
    context = AppContext(settings, *([None] * (len(fields(AppContext)) - 1)))  # type: ignore[arg-type]
    app = create_app(dataclasses.replace(context, verifier=verifier))
    return TestClient(app, headers={"Authorization": "Bearer unit-token"})


async def test_get_graph_verify_answers_the_report_needs_the_token_and_503s(rag: Rag) -> None:
    report = await check_graph(rag, dump=True)
    verifier = Verifier(report)
    client = client_with(verifier)
    answer = client.get("/graph/verify", params={"dump": "true"})
    assert answer.status_code == 200 and answer.json() == json.loads(json.dumps(report))
    assert client.get("/graph/verify").status_code == 200 and verifier.dumps == [True, False]
    assert client.get("/graph/verify", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/graph/verify", params={"dump": "maybe"}).status_code == 422
    down = client_with(Verifier(GraphUnreadable("ConnectionRefusedError: storage down"))).get("/graph/verify")
    assert down.status_code == 503 and "storage down" in down.json()["detail"] and down.headers["Retry-After"]
    assert client_with(None).get("/graph/verify").status_code == 503


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ({"consistent": True, "problems": [], "dump": {"entities": []}}, 0),
        ({"consistent": False, "problems": [{"kind": "entity_orphan"}], "dump": {"entities": []}}, 3),
        ({"consistent": False, "error": "HTTP 503: storages down"}, 1),
    ],
)
async def test_verify_graph_exit_codes_and_the_dump_file(
    answer: dict[str, object], code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def through_service(_settings: Settings, dump: bool) -> dict[str, object]:
        assert dump
        return dict(answer)

    monkeypatch.setattr(commands, "_graph_through_service", through_service)
    settings = Settings.load({}, DEFAULTS, BOUNDS)
    args = parser().parse_args(["verify-graph", "--dump", str(tmp_path / "graph.json")])
    result, exit_code = await commands.run(settings, args)
    assert exit_code == code and "dump" not in result
    if code == 1:
        assert not (tmp_path / "graph.json").exists()
    else:
        assert result["dump_path"] == str(tmp_path / "graph.json")
        assert json.loads((tmp_path / "graph.json").read_text()) == {"entities": []}


def test_verify_graph_parses_without_a_dump() -> None:
    args = parser().parse_args(["verify-graph"])
    assert (args.command, args.dump) == ("verify-graph", None)
