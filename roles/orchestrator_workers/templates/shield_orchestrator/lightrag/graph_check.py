"""Is the workspace's graph whole? Cross-check every storage of LightRAG against the others.

verify.py reads one job back; this reads the whole workspace: the document
statuses, the documents' text (full_docs), the chunks (text_chunks), the
entities and relations of the graph, what each PROCESSED document says it
extracted (full_entities, full_relations) and the three vector stores. Every
inconsistency is named as a problem (kind, id, a sentence), for instance: a
PROCESSED document whose chunk has no vector, an entity no PROCESSED document
accounts for, a vector whose entity is not in the graph. A graph is consistent
when there is none. The canonical dump (sorted entities and relations with
their description fragments, source chunks, weights, and the vector counts) is
the same for the same corpus however it was ingested, through whichever jobs
and hosts: two dumps compare by equality. A source chunk is named there by the
md5 of its text, not by its id (which carries the job's id).

LightRAG (1.5.7, pinned) has no call that lists the ids of a KV or vector
storage: `stored_ids` reads them where each backend keeps them (the JSON KV's
shared dict, nano-vectordb's rows, the PostgreSQL table of the workspace),
buffered writes of a vector storage included. The caller runs the check
with the feeder quiesced (nothing in flight, under the workspace lock): a
document half merged would show as inconsistencies.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from typing_extensions import TypedDict

from .boundary import DocRecord, LightRAGInstance, Row, VectorStore
from .feeder import doc_status, field_of

MAX_PROBLEMS = 1000  # listed in a report; problems_total and problems_by_kind count them all
SEP = "<SEP>"  # lightrag.constants.GRAPH_FIELD_SEP
KINDS = (
    "document_content_missing",
    "document_without_chunks",
    "chunk_missing",
    "chunk_vector_missing",
    "chunk_stray",
    "chunk_vector_stray",
    "unprocessed_document_data",
    "entity_missing",
    "relation_missing",
    "entity_orphan",
    "relation_orphan",
    "relation_endpoint_missing",
    "unknown_source_chunk",
    "entity_vector_missing",
    "relation_vector_missing",
    "entity_vector_stray",
    "relation_vector_stray",
)


class GraphProblem(TypedDict):
    """One inconsistency: its kind (docs/operations.md lists them), the id it is about, a sentence."""

    kind: str
    id: str
    detail: str


class GraphCounts(TypedDict):
    """What the storages hold: documents by status, chunks, entities, relations and each vector store's rows."""

    documents: dict[str, int]
    chunks: int
    chunk_vectors: int
    entities: int
    entity_vectors: int
    relations: int
    relation_vectors: int


class DumpEntity(TypedDict):
    """An entity in the canonical dump: sorted fragments, source chunks named by the md5 of their text."""

    name: str
    type: str
    descriptions: list[str]
    source_chunks: list[str]


class DumpRelation(TypedDict):
    """A relation in the canonical dump (endpoints sorted, as LightRAG treats edges as undirected)."""

    source: str
    target: str
    weight: float
    keywords: list[str]
    descriptions: list[str]
    source_chunks: list[str]


class GraphDump(TypedDict):
    """The canonical dump: equal for equal graphs whatever the job ids, hosts or order of ingestion."""

    documents_processed: int
    entities: list[DumpEntity]
    relations: list[DumpRelation]
    vectors: dict[str, int]


class GraphVerification(TypedDict):
    """verify-graph's answer: consistent or not, the counts, every problem (listed up to MAX_PROBLEMS)."""

    workspace: str
    consistent: bool
    counts: GraphCounts
    problems_total: int
    problems_by_kind: dict[str, int]
    problems: list[GraphProblem]
    dump: GraphDump | None


class GraphUnreadable(RuntimeError):
    """The storages could not be read (down, not initialised, a backend without a listing)."""


@runtime_checkable
class GraphVerifier(Protocol):
    """A processor that can cross-check the whole graph it writes."""

    async def verify_graph(self, dump: bool = False) -> GraphVerification: ...


Edge = tuple[str, str]


@dataclass
class GraphSnapshot:
    """What the storages hold, read once; the checks are pure functions of it."""

    workspace: str = ""
    docs: dict[str, DocRecord] = field(default_factory=dict)
    content_missing: set[str] = field(default_factory=set)  # PROCESSED documents without full_docs row
    chunk_rows: set[str] = field(default_factory=set)
    nodes: dict[str, Row] = field(default_factory=dict)
    edges: dict[Edge, Row] = field(default_factory=dict)
    vectors: dict[str, set[str]] = field(default_factory=dict)  # chunks / entities / relationships -> ids
    claimed_entities: dict[str, list[str]] = field(default_factory=dict)  # PROCESSED doc -> full_entities
    claimed_relations: dict[str, list[Edge]] = field(default_factory=dict)  # PROCESSED doc -> full_relations
    vector_labels: dict[str, str] = field(default_factory=dict)  # a stray vector's id -> what it names
    chunk_keys: dict[str, str] = field(default_factory=dict)  # for the dump: source chunk id -> text-<md5>

    def processed(self) -> list[str]:
        return sorted(doc_id for doc_id, doc in self.docs.items() if doc_status(doc) == "processed")

    def chunks_of(self, doc_id: str) -> list[str]:
        chunks = field_of(self.docs[doc_id], "chunks_list")
        return [str(chunk) for chunk in chunks] if isinstance(chunks, list | tuple) else []


def edge_key(source: str, target: str) -> Edge:
    """An undirected edge, as LightRAG's storages treat them."""
    first, second = sorted((source, target))
    return first, second


def sources(props: Mapping[str, object]) -> list[str]:
    return [part for part in str(props.get("source_id") or "").split(SEP) if part]


def entity_vector_id(name: str) -> str:
    from lightrag.utils import compute_mdhash_id

    return str(compute_mdhash_id(name, prefix="ent-"))


def relation_vector_ids(edge: Edge) -> list[str]:
    """The ids LightRAG may store an edge's vector under (normalised order first)."""
    from lightrag.utils import make_relation_vdb_ids

    return [str(vector_id) for vector_id in make_relation_vdb_ids(*edge)]


async def stored_ids(storage: Any) -> set[str]:  # Any: each backend's internals, by class name
    """Every id a KV or vector storage holds; GraphUnreadable for a backend it cannot list."""
    for cls in type(storage).__mro__:
        if cls.__name__ == "JsonKVStorage":
            async with storage._storage_lock:
                return {str(key) for key in storage._data}
        if cls.__name__ == "NanoVectorDBStorage":
            rows = (await storage.client_storage)["data"]
            candidates = [str(row["__id__"]) for row in rows]
            candidates += [*storage._pending_upserts, *storage._unsaved_upserts]
            return await present(storage, candidates)
        if cls.__name__ == "PGVectorStorage":
            found = await _pg_ids(storage, storage.table_name)
            return (found - set(storage._pending_vector_deletes)) | set(storage._pending_vector_docs)
        if cls.__name__ == "PGKVStorage":
            from lightrag.kg.postgres_impl import namespace_to_table_name

            return await _pg_ids(storage, namespace_to_table_name(storage.namespace))
    raise GraphUnreadable(f"{type(storage).__name__}: no way to list what it holds")


async def _pg_ids(storage: Any, table: str) -> set[str]:
    sql = f"SELECT id FROM {table} WHERE workspace=$1"  # noqa: S608 - the table is LightRAG's own name
    rows = await storage.db.query(sql, [storage.workspace], multirows=True)
    return {str(row["id"]) for row in rows or []}


async def present(storage: VectorStore, ids: Iterable[str]) -> set[str]:
    """Those of `ids` a vector storage answers for (its own reads: buffered writes count)."""
    wanted = sorted(set(ids))
    found = await storage.get_by_ids(wanted) if wanted else []
    return {vector_id for vector_id, record in zip(wanted, found, strict=True) if record}


async def read_graph(rag: LightRAGInstance, dump: bool = False) -> GraphSnapshot:
    """Read every storage of an initialised LightRAG once (with `dump`, the source
    chunks' texts as well); GraphUnreadable when one fails."""
    from lightrag.base import DocStatus

    snap = GraphSnapshot(workspace=str(getattr(rag, "workspace", "") or ""))
    try:
        snap.docs = dict(await rag.doc_status.get_docs_by_statuses(list(DocStatus), strict=True))
        processed = snap.processed()
        snap.content_missing = set(await rag.full_docs.filter_keys(set(processed)))
        snap.chunk_rows = await stored_ids(rag.text_chunks)
        graph = rag.chunk_entity_relation_graph
        snap.nodes = {str(node["id"]): node for node in await graph.get_all_nodes()}
        snap.edges = {edge_key(str(e["source"]), str(e["target"])): e for e in await graph.get_all_edges()}
        snap.vectors = {
            "chunks": await stored_ids(rag.chunks_vdb),
            "entities": await stored_ids(rag.entities_vdb),
            "relationships": await stored_ids(rag.relationships_vdb),
        }
        for doc_id, record in zip(processed, await rag.full_entities.get_by_ids(processed), strict=True):
            if record:
                snap.claimed_entities[doc_id] = [str(name) for name in _listed(record.get("entity_names"))]
        for doc_id, record in zip(processed, await rag.full_relations.get_by_ids(processed), strict=True):
            if record:
                pairs = [_listed(pair)[:2] for pair in _listed(record.get("relation_pairs"))]
                edges = [edge_key(str(pair[0]), str(pair[1])) for pair in pairs if len(pair) == 2]
                snap.claimed_relations[doc_id] = edges
        snap.vector_labels = await _stray_labels(rag, snap)
        if dump:
            snap.chunk_keys = await _chunk_keys(rag, snap)
    except GraphUnreadable:
        raise
    except Exception as exc:  # whatever a storage raises: the graph could not be read
        raise GraphUnreadable(f"{type(exc).__name__}: {exc}"[:500]) from exc
    return snap


async def _stray_labels(rag: LightRAGInstance, snap: GraphSnapshot) -> dict[str, str]:
    """What the stray entity and relation vectors name (the first MAX_PROBLEMS of each)."""
    labels: dict[str, str] = {}
    entity_strays, relation_strays = stray_vectors(snap)
    for storage, strays in ((rag.entities_vdb, entity_strays), (rag.relationships_vdb, relation_strays)):
        wanted = sorted(strays)[:MAX_PROBLEMS]
        for vector_id, record in zip(wanted, await storage.get_by_ids(wanted) if wanted else [], strict=True):
            labels[vector_id] = _label(record or {})
    return labels


async def _chunk_keys(rag: LightRAGInstance, snap: GraphSnapshot) -> dict[str, str]:
    """A source chunk's name in the dump: the md5 of its text, whichever job brought it."""
    from lightrag.utils import compute_mdhash_id

    ids = sorted({chunk for props in [*snap.nodes.values(), *snap.edges.values()] for chunk in sources(props)})
    keys: dict[str, str] = {}
    for chunk, row in zip(ids, await rag.text_chunks.get_by_ids(ids) if ids else [], strict=True):
        if row and row.get("content") is not None:
            keys[chunk] = str(compute_mdhash_id(str(row["content"]), prefix="text-"))
    return keys


def _listed(value: object) -> list[object]:
    """A list field of a stored record (a JSON list), or nothing."""
    return list(value) if isinstance(value, list | tuple) else []


def _label(record: Mapping[str, object]) -> str:
    if record.get("entity_name"):
        return f"entity {record['entity_name']!r}"
    if "src_id" in record:  # nano-vectordb's relation rows (source_id: the chunks there)
        return f"relation {record['src_id']!r} - {record.get('tgt_id')!r}"
    if "target_id" in record:  # PostgreSQL's relation table (source_id: the entity there)
        return f"relation {record.get('source_id')!r} - {record['target_id']!r}"
    return "no name"


def stray_vectors(snap: GraphSnapshot) -> tuple[set[str], set[str]]:
    """(entity vectors, relation vectors) that no entity or edge of the graph has."""
    entities = snap.vectors.get("entities", set()) - {entity_vector_id(name) for name in snap.nodes}
    expected = {vector_id for edge in snap.edges for vector_id in relation_vector_ids(edge)}
    return entities, snap.vectors.get("relationships", set()) - expected


def _problem(kind: str, item_id: str, detail: str) -> GraphProblem:
    return {"kind": kind, "id": item_id, "detail": detail}


def document_problems(snap: GraphSnapshot) -> list[GraphProblem]:
    """Each PROCESSED document has its text, its chunks with their vectors, and the
    entities and relations it says it extracted."""
    problems: list[GraphProblem] = []
    chunk_vectors = snap.vectors.get("chunks", set())
    for doc_id in snap.processed():
        chunks = snap.chunks_of(doc_id)
        if doc_id in snap.content_missing:
            problems.append(_problem("document_content_missing", doc_id, f"PROCESSED document {doc_id} has no text"))
        if not chunks:
            problems.append(_problem("document_without_chunks", doc_id, f"PROCESSED document {doc_id} lists no chunk"))
        for chunk in chunks:
            if chunk not in snap.chunk_rows:
                problems.append(_problem("chunk_missing", chunk, f"chunk {chunk} of document {doc_id} is not stored"))
            if chunk not in chunk_vectors:
                problems.append(
                    _problem("chunk_vector_missing", chunk, f"chunk {chunk} of document {doc_id} has no vector")
                )
        for name in sorted(set(snap.claimed_entities.get(doc_id, []))):
            if name not in snap.nodes:
                detail = f"entity {name!r}, extracted from document {doc_id}, is not in the graph"
                problems.append(_problem("entity_missing", name, detail))
        for edge in sorted(set(snap.claimed_relations.get(doc_id, []))):
            if edge not in snap.edges:
                detail = f"relation {edge[0]!r} - {edge[1]!r}, extracted from document {doc_id}, is not in the graph"
                problems.append(_problem("relation_missing", relation_id(edge), detail))
    return problems


def relation_id(edge: Edge) -> str:
    return f"{edge[0]}{SEP}{edge[1]}"


def chunk_problems(snap: GraphSnapshot) -> list[GraphProblem]:
    """Chunks and chunk vectors that no document lists; a document not PROCESSED
    whose chunks are stored, have vectors, or are the source of entities/relations."""
    owner = {chunk: doc_id for doc_id in snap.docs for chunk in snap.chunks_of(doc_id)}
    problems: list[GraphProblem] = []
    for chunk in sorted(snap.chunk_rows - owner.keys()):
        problems.append(_problem("chunk_stray", chunk, f"chunk {chunk} is stored but no document lists it"))
    for chunk in sorted(snap.vectors.get("chunks", set()) - owner.keys()):
        problems.append(_problem("chunk_vector_stray", chunk, f"chunk vector {chunk}: no document lists its chunk"))
    named: Counter[str] = Counter()
    for props in [*snap.nodes.values(), *snap.edges.values()]:
        named.update(sources(props))
    for doc_id in sorted(snap.docs):
        state = doc_status(snap.docs[doc_id])
        chunks = snap.chunks_of(doc_id)
        if state == "processed" or not chunks:
            continue
        rows = sum(1 for chunk in chunks if chunk in snap.chunk_rows)
        vectors = sum(1 for chunk in chunks if chunk in snap.vectors.get("chunks", set()))
        sourced = sum(named[chunk] for chunk in chunks)
        if rows or vectors or sourced:
            detail = (
                f"document {doc_id} is {state.upper()} but its chunks have {rows} stored rows, {vectors} vectors "
                f"and are the source of {sourced} entities/relations"
            )
            problems.append(_problem("unprocessed_document_data", doc_id, detail))
    return problems


def graph_problems(snap: GraphSnapshot) -> list[GraphProblem]:
    """Every entity and relation is accounted for by a PROCESSED document (one of
    its source chunks is such a document's, or the document names it) and has its
    vector; every source chunk is some document's; an edge's ends are entities."""
    processed = snap.processed()
    processed_chunks = {chunk for doc_id in processed for chunk in snap.chunks_of(doc_id)}
    known_chunks = {chunk for doc_id in snap.docs for chunk in snap.chunks_of(doc_id)}
    claimed_entities = {name for names in snap.claimed_entities.values() for name in names}
    claimed_edges = {edge for edges in snap.claimed_relations.values() for edge in edges}
    entity_vectors = snap.vectors.get("entities", set())
    relation_vectors = snap.vectors.get("relationships", set())
    problems: list[GraphProblem] = []
    unknown: Counter[str] = Counter()
    for name in sorted(snap.nodes):
        chunks = sources(snap.nodes[name])
        unknown.update(chunk for chunk in chunks if chunk not in known_chunks)
        if name not in claimed_entities and not processed_chunks.intersection(chunks):
            detail = f"entity {name!r} comes from no PROCESSED document (source chunks: {', '.join(chunks) or 'none'})"
            problems.append(_problem("entity_orphan", name, detail))
        if entity_vector_id(name) not in entity_vectors:
            problems.append(_problem("entity_vector_missing", name, f"entity {name!r} has no vector"))
    for edge in sorted(snap.edges):
        chunks = sources(snap.edges[edge])
        unknown.update(chunk for chunk in chunks if chunk not in known_chunks)
        label = f"relation {edge[0]!r} - {edge[1]!r}"
        if edge not in claimed_edges and not processed_chunks.intersection(chunks):
            detail = f"{label} comes from no PROCESSED document (source chunks: {', '.join(chunks) or 'none'})"
            problems.append(_problem("relation_orphan", relation_id(edge), detail))
        for end in edge:
            if end not in snap.nodes:
                detail = f"{label}: its end {end!r} is not an entity of the graph"
                problems.append(_problem("relation_endpoint_missing", relation_id(edge), detail))
        if not relation_vectors.intersection(relation_vector_ids(edge)):
            problems.append(_problem("relation_vector_missing", relation_id(edge), f"{label} has no vector"))
    for chunk, count in sorted(unknown.items()):
        detail = f"{count} entities/relations name chunk {chunk} as their source, which no document lists"
        problems.append(_problem("unknown_source_chunk", chunk, detail))
    return problems


def vector_problems(snap: GraphSnapshot) -> list[GraphProblem]:
    """Entity and relation vectors of nothing in the graph."""
    entity_strays, relation_strays = stray_vectors(snap)
    problems: list[GraphProblem] = []
    for kind, strays, what in (
        ("entity_vector_stray", entity_strays, "entity"),
        ("relation_vector_stray", relation_strays, "relation"),
    ):
        for vector_id in sorted(strays):
            label = snap.vector_labels.get(vector_id, "no name")
            detail = f"{what} vector {vector_id} ({label}) has no {what} in the graph"
            problems.append(_problem(kind, vector_id, detail))
    return problems


def find_problems(snap: GraphSnapshot) -> list[GraphProblem]:
    return [*document_problems(snap), *chunk_problems(snap), *graph_problems(snap), *vector_problems(snap)]


def counts(snap: GraphSnapshot) -> GraphCounts:
    return {
        "documents": dict(sorted(Counter(doc_status(doc) or "unknown" for doc in snap.docs.values()).items())),
        "chunks": len(snap.chunk_rows),
        "chunk_vectors": len(snap.vectors.get("chunks", set())),
        "entities": len(snap.nodes),
        "entity_vectors": len(snap.vectors.get("entities", set())),
        "relations": len(snap.edges),
        "relation_vectors": len(snap.vectors.get("relationships", set())),
    }


def _fragments(value: Any, *separators: str) -> list[str]:
    parts = [str(value or "")]
    for separator in separators:
        parts = [piece for part in parts for piece in part.split(separator)]
    return sorted(part.strip() for part in parts if part.strip())


def canonical_dump(snap: GraphSnapshot) -> GraphDump:
    """The graph in an order of its own: no time stamps, no file paths, no job ids
    (a source chunk by the md5 of its text; by its id when its text is not
    stored), every list sorted, so that the same corpus gives the same dump
    however it was ingested."""

    def chunks_of(props: Mapping[str, object]) -> list[str]:
        return sorted(snap.chunk_keys.get(chunk, chunk) for chunk in sources(props))

    entities: list[DumpEntity] = [
        {
            "name": name,
            "type": str(props.get("entity_type") or ""),
            "descriptions": _fragments(props.get("description"), SEP),
            "source_chunks": chunks_of(props),
        }
        for name, props in sorted(snap.nodes.items())
    ]
    relations: list[DumpRelation] = [
        {
            "source": edge[0],
            "target": edge[1],
            "weight": float(str(props.get("weight") or 0.0)),
            "keywords": sorted(set(_fragments(props.get("keywords"), SEP, ","))),
            "descriptions": _fragments(props.get("description"), SEP),
            "source_chunks": chunks_of(props),
        }
        for edge, props in sorted(snap.edges.items())
    ]
    vectors = {name: len(ids) for name, ids in sorted(snap.vectors.items())}
    return {
        "documents_processed": len(snap.processed()),
        "entities": entities,
        "relations": relations,
        "vectors": vectors,
    }


def dump_json(dump: Mapping[str, Any]) -> str:
    """The dump as a file: byte for byte the same for equal graphs."""
    return json.dumps(dump, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def write_dump(path: str, dump: Mapping[str, Any]) -> None:
    """Write the dump to `path` whole or not at all."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(dump_json(dump))
    os.replace(tmp, path)


def report(snap: GraphSnapshot, dump: bool = False) -> GraphVerification:
    problems = find_problems(snap)
    by_kind: dict[str, int] = defaultdict(int)
    for problem in problems:
        by_kind[problem["kind"]] += 1
    return {
        "workspace": snap.workspace,
        "consistent": not problems,
        "counts": counts(snap),
        "problems_total": len(problems),
        "problems_by_kind": dict(sorted(by_kind.items())),
        "problems": problems[:MAX_PROBLEMS],
        "dump": canonical_dump(snap) if dump else None,
    }


async def check_graph(rag: LightRAGInstance, dump: bool = False) -> GraphVerification:
    """Cross-check the storages of an initialised LightRAG; GraphUnreadable when they cannot be read."""
    return report(await read_graph(rag, dump), dump)
