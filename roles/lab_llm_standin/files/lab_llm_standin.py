#!/usr/bin/env python3
"""LAB/TEST STAND-IN for an OpenAI-compatible LLM and embedding endpoint.

THIS IS NOT A LANGUAGE MODEL. It is a small deterministic server used only in
lab and test environments, where no real LLM is reachable, so that the
ingestion service's real client code (LightRAG's OpenAI binding and the
``openai`` SDK) runs unchanged against something that speaks the same HTTP
protocol. Never point a production deployment at it.

Routes (OpenAI-compatible subset):

* ``GET  /v1/models``            chat and embedding model names (any name works)
* ``POST /v1/chat/completions``  deterministic answers, optionally streamed (SSE)
* ``POST /v1/embeddings``        feature-hashing embeddings, float or base64
* ``GET  /health``               liveness, labelled as a lab stand-in
* ``GET  /stats``                call counts per route and per prompt kind

Chat answers recognise the prompts of LightRAG 1.5.7 (``lightrag/prompt.py``):

* entity/relation extraction (text mode: rows split by ``<|#|>`` and ended by
  ``<|COMPLETE|>``; JSON mode: ``{"entities": [...], "relationships": [...]}``).
  Only the fenced ``---Input Text---`` section of the *user* prompt is read, never
  the system prompt's format templates. Entities are sequences of capitalised
  words (sentence-initial stopwords dropped), typed by a small suffix rule;
  relations join entities that share a sentence;
* the "continue extraction" (gleaning) prompt: nothing was missed, so only the
  completion marker (or an empty JSON object) is returned;
* keyword extraction: JSON with ``high_level_keywords`` and ``low_level_keywords``;
* description summaries, RAG answers and anything else: a short deterministic
  text built from the input.

Every chat and embedding call can be slowed down by ``--delay-ms`` (used by
benchmarks); ``--embedding-delay-ms`` gives embedding calls a latency of their
own (by default they wait ``--delay-ms`` too). Failures can be injected for
error-path tests: a chat request whose last user message contains
``LAB_STANDIN_FAIL_ALWAYS`` gets HTTP 400 every time. ``LAB_STANDIN_FAIL_ONCE``
is a failure that the first retry clears, deterministically: it fails the first
call that carries a given *marked passage* and no later one. The marked passage
is the marker and what follows it on its line, 40 characters at most, read in
the extraction prompt's ``---Input Text---`` section when there is one (the
chunk's own text, whatever the template around it), else in the whole message;
the key is a SHA-256 of it. LightRAG's description-summary prompts never fail on
the marker: they quote the descriptions of chunks already extracted (cut short
at times, which would make a new passage), and their failure would land on
whichever chunk's merge asked for it. Gleaning prompts carry the chunk only in
the history, which is not read. So a marked chunk fails its first extraction
call once and its first retry succeeds, however many prompts quote it later.
``LAB_STANDIN_EMBED_FAIL_ALWAYS`` and ``LAB_STANDIN_EMBED_FAIL_ONCE`` do the
same for embedding inputs (each input text read whole).
``--no-failure-injection`` turns the markers off. ``POST /admin/outage``
(``{"status": 503, "seconds": 30, "retry_after": 2}``) makes every ``/v1/``
route answer that status for a while, as an endpoint that is down or
rate-limiting would (429 with ``Retry-After``).

Settings come from the command line or from ``LAB_LLM_STANDIN_*`` environment
variables.
"""

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import logging
import math
import os
import re
import struct
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

STANDIN_LABEL = "lab/test stand-in (deterministic, not a language model)"
DEFAULT_CHAT_MODEL = "lab-standin-chat"
DEFAULT_EMBEDDING_MODEL = "lab-standin-embedding"
ENV_PREFIX = "LAB_LLM_STANDIN_"
# Failure injection for tests of the caller's error handling (route -> markers
# for "fail every time" and "fail the first call carrying this marked passage").
FAILURE_MARKERS = {
    "chat": ("LAB_STANDIN_FAIL_ALWAYS", "LAB_STANDIN_FAIL_ONCE"),
    "embeddings": ("LAB_STANDIN_EMBED_FAIL_ALWAYS", "LAB_STANDIN_EMBED_FAIL_ONCE"),
}

TUPLE_DELIMITER = "<|#|>"
COMPLETION_DELIMITER = "<|COMPLETE|>"

logger = logging.getLogger("lab_llm_standin")

# --------------------------------------------------------------------------
# Text helpers
# --------------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    """A word set written as one whitespace-separated string."""
    return frozenset(text.split())


STOPWORDS = _words(
    """
    a about above after again against all also am an and any are as at be
    because been before being below between both but by can could did do does
    doing down during each few for from further had has have having he her here
    hers herself him himself his how however i if in into is it its itself just
    let me meanwhile more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that
    the their theirs them themselves then there these they this those through
    thus to too under until up very was we were what when where which while who
    whom why will with would yet you your yours yourself yourselves today
    yesterday tomorrow later last next after finally first second third many
    several every each one two three according please tell describe explain who
    what list give show mr mrs ms dr prof sir
    """
)

# A capitalised token: "Alice", "ACME", "O'Neil", "Jean-Luc", "R2D2".
_CAP_WORD = r"[A-Z][A-Za-z0-9]*(?:['\-][A-Za-z0-9]+)*\b"
# Sequences of capitalised tokens on one line; "of" and "&" may join two of
# them ("Bank of America", "Johnson & Johnson"). "and" does not: it separates
# names ("Alice Johnson and Bob Smith").
_NAME_RE = re.compile(rf"\b{_CAP_WORD}(?:(?:[ \t]+(?:of|&)[ \t]+|[ \t]+){_CAP_WORD})*")
# Candidate sentence ends: terminal punctuation before whitespace, or a newline.
_SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s|$)|\n")
_ABBREVIATIONS = _words(
    """
    mr mrs ms dr prof st jr sr inc corp ltd co vs etc no fig approx dept univ
    """
)
_WORD_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_JOINERS = frozenset({"of", "&"})

_ORG_WORDS = _words(
    """
    corporation corp inc ltd llc gmbh company co group bank university college
    institute agency foundation association council ministry department labs
    laboratory laboratories lab industries systems technologies partners
    committee organization organisation society school hospital airlines
    """
)
_LOCATION_WORDS = _words(
    """
    city river mountain mountains street avenue road park county state lake
    island islands valley bay ocean sea coast region province district village
    town harbor harbour station airport bridge desert forest kingdom republic
    """
)
_EVENT_WORDS = _words(
    """
    conference summit festival war battle meeting olympics championship election
    ceremony expo forum congress workshop symposium launch
    """
)
_ARTIFACT_WORDS = _words(
    """
    software platform engine tool device system app application server database
    protocol api library framework
    """
)
# Words after which "of" continues a name ("University of Oslo").
_OF_HEADS = (
    _ORG_WORDS
    | _LOCATION_WORDS
    | _EVENT_WORDS
    | _words("house museum church office court board king queen prince duke lord")
)
_PLACE_PREPOSITIONS = frozenset({"in", "at", "from", "near", "to", "into", "across"})


def _clean_inline(text: str) -> str:
    """One line, no LightRAG delimiters, no stray whitespace."""
    text = text.replace("<|", "<").replace("|>", ">")
    return " ".join(text.split())


def _shorten(text: str, limit: int) -> str:
    text = _clean_inline(text)
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return f"{cut}..."


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def split_sentences(text: str) -> list[tuple[int, str]]:
    """Sentences with their start offsets (newlines also end a sentence).

    A period after a known abbreviation ("Dr.", "Inc.") or an initial ("J.")
    does not end a sentence.
    """
    sentences: list[tuple[int, str]] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        if match.group(0).startswith("."):
            words = text[start : match.start()].split()
            last = words[-1].lower() if words else ""
            if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
                continue
        end = match.end()
        if text[start:end].strip():
            sentences.append((start, text[start:end]))
        start = end
    if text[start:].strip():
        sentences.append((start, text[start:]))
    return sentences


def content_words(text: str) -> list[str]:
    """Lowercase words that are not stopwords, in order, duplicates kept."""
    return [w.lower() for w in _WORD_RE.findall(text) if w.lower() not in STOPWORDS and not w.isdigit() and len(w) > 1]


def _strip_name(tokens: list[str]) -> list[str]:
    """Drop leading stopwords/joiners and trailing joiners from a name."""
    while tokens and (tokens[0].lower() in STOPWORDS or tokens[0] in _JOINERS):
        tokens = tokens[1:]
    while tokens and tokens[-1] in _JOINERS:
        tokens = tokens[:-1]
    return tokens


@dataclass
class Mention:
    name: str
    sentence_index: int
    start: int
    end: int


@dataclass
class Entity:
    name: str
    entity_type: str
    description: str
    first_sentence: int


@dataclass
class Relation:
    source: str
    target: str
    keywords: str
    description: str


@dataclass
class Extraction:
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)


def _name_segments(tokens: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Split a capitalised run at "of" unless "of" continues a name.

    "Bank of America" stays one name, "Alice Johnson of Acme Corporation"
    becomes "Alice Johnson" and "Acme Corporation".
    """
    segments: list[list[tuple[str, int]]] = [[]]
    for word, pos in tokens:
        current = segments[-1]
        if word == "of" and current and current[-1][0].lower() not in _OF_HEADS:
            segments.append([])
            continue
        current.append((word, pos))
    cleaned: list[list[tuple[str, int]]] = []
    for segment in segments:
        while segment and (segment[0][0].lower() in STOPWORDS or segment[0][0] in _JOINERS):
            segment = segment[1:]
        while segment and segment[-1][0] in _JOINERS:
            segment = segment[:-1]
        if segment:
            cleaned.append(segment)
    return cleaned


def find_mentions(text: str) -> list[Mention]:
    """Capitalised (multi-word) names, sentence by sentence.

    Leading stopwords are dropped ("The Acme Corporation" -> "Acme
    Corporation"), and a lone sentence-initial word that also occurs in lower
    case in the text ("Researchers ... researchers") is not taken as a name.
    """
    lowercase_words = set(re.findall(r"\b[a-z][a-z'\-]*\b", text))
    mentions: list[Mention] = []
    for index, (offset, sentence) in enumerate(split_sentences(text)):
        first_word = re.search(r"\S", sentence)
        sentence_start = first_word.start() if first_word else 0
        for match in _NAME_RE.finditer(sentence):
            tokens = [(m.group(0), match.start() + m.start()) for m in re.finditer(r"\S+", match.group(0))]
            for segment in _name_segments(tokens):
                name = " ".join(token for token, _ in segment)
                start = segment[0][1]
                end = segment[-1][1] + len(segment[-1][0])
                if len(name) < 2 or name.isdigit():
                    continue
                if len(segment) == 1 and start == sentence_start and name.lower() in lowercase_words:
                    continue
                mentions.append(
                    Mention(
                        name=name,
                        sentence_index=index,
                        start=offset + start,
                        end=offset + end,
                    )
                )
    return mentions


def classify(name: str, text: str, mention: Mention) -> str:
    """A tiny deterministic typing rule (LightRAG's default type names)."""
    words = name.split()
    last = words[-1].lower()
    if last in _ORG_WORDS or (len(words) > 1 and words[0].lower() in _ORG_WORDS):
        return "Organization"
    if last in _LOCATION_WORDS:
        return "Location"
    if last in _EVENT_WORDS:
        return "Event"
    if last in _ARTIFACT_WORDS:
        return "Artifact"
    before = text[max(0, mention.start - 12) : mention.start].split()
    preposition = before[-1].lower() if before else ""
    if preposition in _PLACE_PREPOSITIONS:
        return "Location"
    if "&" in name or (name.isupper() and len(name) <= 6):
        return "Organization"
    if 2 <= len(words) <= 3 and all(w[:1].isupper() and w.isalpha() for w in words):
        return "Person"
    return "Concept"


def extract(text: str, max_entities: int, max_total: int) -> Extraction:
    """Entities and co-occurrence relations found in ``text``."""
    sentences = split_sentences(text)
    mentions = find_mentions(text)
    result = Extraction()
    seen: dict[str, Entity] = {}
    for mention in mentions:
        key = mention.name.lower()
        if key in seen or len(seen) >= max_entities:
            continue
        sentence = sentences[mention.sentence_index][1]
        entity_type = classify(mention.name, text, mention)
        entity = Entity(
            name=mention.name,
            entity_type=entity_type,
            description=(
                f"{mention.name} is {_article(entity_type)} {entity_type.lower()} "
                f"mentioned in the text: "
                f"{_shorten(sentence, 220)}"
            ),
            first_sentence=mention.sentence_index,
        )
        seen[key] = entity
        result.entities.append(entity)

    def _without_names(source: str, start: int, end: int) -> str:
        """``source[start:end]`` with every name mention blanked out."""
        chars = list(source[start:end])
        for other in mentions:
            lo, hi = max(other.start, start), min(other.end, end)
            for k in range(lo, hi):
                chars[k - start] = " "
        return "".join(chars)

    budget = max(0, max_total - len(result.entities))
    pairs: set[tuple[str, str]] = set()
    by_sentence: dict[int, list[Mention]] = {}
    for mention in mentions:
        if mention.name.lower() in seen:
            by_sentence.setdefault(mention.sentence_index, []).append(mention)
    for index in sorted(by_sentence):
        members = by_sentence[index]
        sentence = sentences[index][1]
        for i, left in enumerate(members):
            for right in members[i + 1 :]:
                if len(result.relations) >= budget:
                    return result
                source = seen[left.name.lower()].name
                target = seen[right.name.lower()].name
                if source.lower() == target.lower():
                    continue
                pair = tuple(sorted((source.lower(), target.lower())))
                if pair in pairs:
                    continue
                pairs.add(pair)  # type: ignore[arg-type]
                between = content_words(_without_names(text, left.end, right.start))
                keywords = ", ".join(dict.fromkeys(between[:3])) or "related"
                result.relations.append(
                    Relation(
                        source=source,
                        target=target,
                        keywords=keywords,
                        description=(f"{source} and {target} appear together in the text: {_shorten(sentence, 220)}"),
                    )
                )
    return result


def render_extraction_text(extraction: Extraction) -> str:
    """LightRAG 1.5.7 text-mode rows: entity rows, relation rows, marker."""
    d = TUPLE_DELIMITER
    lines = [f"entity{d}{e.name}{d}{e.entity_type}{d}{e.description}" for e in extraction.entities]
    lines += [f"relation{d}{r.source}{d}{r.target}{d}{r.keywords}{d}{r.description}" for r in extraction.relations]
    lines.append(COMPLETION_DELIMITER)
    return "\n".join(lines)


def render_extraction_json(extraction: Extraction) -> str:
    """LightRAG 1.5.7 JSON-mode object (entity_extraction_use_json=True)."""
    return json.dumps(
        {
            "entities": [
                {"name": e.name, "type": e.entity_type, "description": e.description} for e in extraction.entities
            ],
            "relationships": [
                {
                    "source": r.source,
                    "target": r.target,
                    "keywords": r.keywords,
                    "description": r.description,
                }
                for r in extraction.relations
            ],
        },
        ensure_ascii=False,
    )


def keywords_for(query: str) -> dict[str, list[str]]:
    """High-level (themes) and low-level (names, specific terms) keywords."""
    names = list(dict.fromkeys(m.name for m in find_mentions(query)))
    name_words = {w.lower() for name in names for w in name.split()}
    words = [w for w in content_words(query) if w not in name_words]
    low = names + [w for w in dict.fromkeys(words) if len(w) > 6][:3]
    high = list(dict.fromkeys(words))[:5]
    if not high and names:
        high = [names[0]]
    return {"high_level_keywords": high, "low_level_keywords": low}


def summarize(text: str, limit: int = 600) -> str:
    """A short deterministic summary: leading sentences plus top terms."""
    sentences = [s.strip() for _, s in split_sentences(text) if s.strip()]
    picked: list[str] = []
    total = 0
    for sentence in sentences:
        if total + len(sentence) > limit and picked:
            break
        picked.append(sentence)
        total += len(sentence) + 1
    body = _shorten(" ".join(picked), limit) if picked else ""
    top = [w for w, _ in Counter(content_words(text)).most_common(5)]
    if top:
        body = f"{body} Key terms: {', '.join(top)}.".strip()
    return body or "No content."


# --------------------------------------------------------------------------
# Prompt recognition (LightRAG 1.5.7 templates, lightrag/prompt.py)
# --------------------------------------------------------------------------

_INPUT_OPEN = "---Input Text---\n```\n"
_INPUT_CLOSE = "\n```\n\n---Output---"
_LIMITS_RE = re.compile(r"at most (\d+) total (?:rows|records) and at most (\d+) entity (?:rows|objects)")
_QUERY_RE = re.compile(r"---Real Data---\s*\nUser Query:(.*?)\n\s*---Output---", re.DOTALL)
_SUMMARY_NAME_RE = re.compile(r"---Input---\n(.*?) Name: (.*?)\n")
_CONTEXT_CONTENT_RE = re.compile(r'"content":\s*"((?:[^"\\]|\\.)*)"')


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def input_text_section(prompt: str) -> str | None:
    """The fenced ``---Input Text---`` section of an extraction user prompt."""
    start = prompt.find(_INPUT_OPEN)
    if start < 0:
        return None
    start += len(_INPUT_OPEN)
    end = prompt.rfind(_INPUT_CLOSE)
    if end < start:
        return None
    return prompt[start:end]


def _limits(prompt: str) -> tuple[int, int]:
    match = _LIMITS_RE.search(prompt)
    if not match:
        return 100, 40
    return int(match.group(1)), int(match.group(2))


def answer_chat(messages: list[dict[str, Any]], wants_json: bool) -> tuple[str, str]:
    """Return (prompt kind, answer text) for an OpenAI ``messages`` list."""
    system = "\n".join(message_text(m) for m in messages if m.get("role") in ("system", "developer"))
    users = [message_text(m) for m in messages if m.get("role") == "user"]
    last_user = users[-1] if users else ""
    json_mode = wants_json or "valid JSON object with `entities`" in last_user

    if "Based on the last extraction task" in last_user:
        # Gleaning: everything was already extracted deterministically.
        if json_mode or '"entities"' in last_user:
            return "gleaning", json.dumps({"entities": [], "relationships": []})
        return "gleaning", COMPLETION_DELIMITER

    section = input_text_section(last_user)
    if section is not None and "Extract entities and relationships" in last_user:
        max_total, max_entities = _limits(last_user)
        extraction = extract(section, max_entities, max_total)
        if json_mode:
            return "extraction", render_extraction_json(extraction)
        return "extraction", render_extraction_text(extraction)

    if "high_level_keywords" in last_user and "User Query:" in last_user:
        match = _QUERY_RE.search(last_user)
        query = match.group(1).strip() if match else last_user
        return "keywords", json.dumps(keywords_for(query), ensure_ascii=False)

    if "Description List:" in last_user:
        name_match = _SUMMARY_NAME_RE.search(last_user)
        name = name_match.group(2).strip() if name_match else "The item"
        fence = last_user.split("Description List:", 1)[1]
        descriptions: list[str] = []
        for line in fence.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    descriptions.append(str(json.loads(line).get("Description", "")))
                except (json.JSONDecodeError, AttributeError):
                    continue
        unique = list(dict.fromkeys(d for d in descriptions if d))
        return "summary", _shorten(f"{name}: " + " ".join(unique), 1200)

    if "---Context---" in system:
        chunks = [json.loads(f'"{raw}"') for raw in _CONTEXT_CONTENT_RE.findall(system)]
        context = " ".join(chunks[:3])
        query = _shorten(last_user, 200)
        if not context.strip():
            return "query", f"[lab stand-in] No context was retrieved for: {query}"
        return "query", (f"[lab stand-in] Answer to: {query}\n\n{summarize(context, 500)}")

    return "other", f"[lab stand-in] {summarize(last_user or system, 400)}"


# --------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def _bucket(feature: str, dim: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dim, (1.0 if (value >> 63) & 1 else -1.0)


def hash_embedding(text: str, dim: int) -> list[float]:
    """Feature hashing of lowercase tokens (+ bigrams at half weight), L2-normed."""
    vector = [0.0] * dim
    tokens = _TOKEN_RE.findall(text.lower())
    features: list[tuple[str, float]] = [(t, 1.0) for t in tokens]
    features += [(f"{a} {b}", 0.5) for a, b in itertools.pairwise(tokens)]
    if not features:
        features = [("<empty>", 1.0)]
    for feature, weight in features:
        index, sign = _bucket(feature, dim)
        vector[index] += sign * weight
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        index, sign = _bucket("<empty>", dim)
        vector[index] = sign
        norm = 1.0
    return [v / norm for v in vector]


def embedding_inputs(raw: Any) -> list[str] | None:
    """Normalise the ``input`` field: str, [str], [int] or [[int]]."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        if not raw:
            return None
        if all(isinstance(x, int) for x in raw):
            return [" ".join(f"t{x}" for x in raw)]
        out: list[str] = []
        for item in raw:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, list) and all(isinstance(x, int) for x in item):
                out.append(" ".join(f"t{x}" for x in item))
            else:
                return None
        return out
    return None


def encode_base64(vector: Iterable[float]) -> str:
    values = list(vector)
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


# --------------------------------------------------------------------------
# HTTP application
# --------------------------------------------------------------------------


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 18080
    embedding_dim: int = 768
    delay_ms: float = 0.0
    embedding_delay_ms: float | None = None  # None: delay_ms
    chat_model: str = DEFAULT_CHAT_MODEL
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    log_level: str = "info"
    access_log: bool = False
    failure_injection: bool = True


FAIL_ONCE_PASSAGE_CHARS = 40


def fail_once_keys(route: str, text: str) -> list[str]:
    """The keys of the fail-once passages ``text`` carries (see the module docstring):
    each marker with the rest of its line, 40 characters at most, read in the
    extraction prompt's input section when there is one; none in a description
    summary prompt."""
    once = FAILURE_MARKERS[route][1]
    if once not in text:
        return []
    if route == "chat":
        if "Description List:" in text:
            return []
        text = input_text_section(text) or text
    keys = []
    for match in re.finditer(re.escape(once), text):
        rest = text[match.end() : match.end() + FAIL_ONCE_PASSAGE_CHARS].split("\n", 1)[0]
        keys.append(hashlib.sha256(f"{route}\0{once}{rest}".encode()).hexdigest())
    return keys


def _error(status: int, message: str, code: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": code, "param": None, "code": None}},
    )


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def create_app(settings: Settings) -> FastAPI:
    """Build the FastAPI application of the lab stand-in."""
    app = FastAPI(
        title="lab-llm-standin",
        description=f"OpenAI-compatible {STANDIN_LABEL}.",
        version="1.0.0",
    )
    stats: Counter[str] = Counter()
    chat_models: dict[str, None] = {settings.chat_model: None}
    embedding_models: dict[str, None] = {settings.embedding_model: None}
    started = time.time()
    failed_once: set[str] = set()

    def _injected_failure(route: str, texts: list[str]) -> JSONResponse | None:
        """HTTP 400 when a text carries a failure marker (see module docstring)."""
        if not settings.failure_injection:
            return None
        always = FAILURE_MARKERS[route][0]
        for text in texts:
            if always in text:
                stats["injected_failures"] += 1
                return _error(400, "lab stand-in: injected failure (fail-always)")
            new = [key for key in fail_once_keys(route, text) if key not in failed_once]
            if new:
                failed_once.update(new)
                stats["injected_failures"] += 1
                return _error(400, "lab stand-in: injected failure (fail-once)")
        return None

    embedding_delay_ms = settings.delay_ms if settings.embedding_delay_ms is None else settings.embedding_delay_ms

    async def _delay(milliseconds: float) -> None:
        if milliseconds > 0:
            await asyncio.sleep(milliseconds / 1000.0)

    async def _json_body(request: Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    # An outage on demand, for tests of the caller's fault handling: every /v1/
    # route answers `status` (429 or 5xx, with Retry-After when given) until it ends.
    outage: dict[str, float] = {"until": 0.0, "status": 503, "retry_after": 0.0}

    @app.middleware("http")
    async def injected_outage(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v1/") and time.monotonic() < outage["until"]:
            stats["injected_outage"] += 1
            response = _error(int(outage["status"]), "lab stand-in: injected outage", "server_error")
            if outage["retry_after"]:
                response.headers["Retry-After"] = str(int(outage["retry_after"]))
            return response
        return await call_next(request)

    @app.post("/admin/outage")
    async def start_outage(request: Request) -> JSONResponse:
        """{"status": 503|429|502|504, "seconds": N, "retry_after": S}: answer that on /v1/ for N seconds."""
        body = await _json_body(request) or {}
        try:
            status, seconds = int(body.get("status", 503)), float(body.get("seconds", 0))
            retry_after = float(body.get("retry_after", 0))
        except (TypeError, ValueError):
            return _error(400, "status, seconds and retry_after must be numbers")
        if status not in (429, 500, 502, 503, 504) or not 0 <= seconds <= 3600:
            return _error(400, "status must be 429 or 5xx and seconds within 0-3600")
        outage.update(until=time.monotonic() + seconds, status=status, retry_after=retry_after)
        logger.warning("LAB/TEST STAND-IN: injected outage %d for %.0fs", status, seconds)
        return JSONResponse({"status": status, "seconds": seconds, "retry_after": retry_after})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        stats["GET /health"] += 1
        return {
            "status": "healthy",
            "service": "lab-llm-standin",
            "kind": STANDIN_LABEL,
            "embedding_dim": settings.embedding_dim,
            "delay_ms": settings.delay_ms,
            "embedding_delay_ms": embedding_delay_ms,
            "uptime_seconds": round(time.time() - started, 3),
        }

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return {"kind": STANDIN_LABEL, "calls": dict(sorted(stats.items()))}

    def _model_card(name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": int(started),
            "owned_by": "lab-llm-standin",
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        stats["GET /v1/models"] += 1
        names = list(dict.fromkeys([*chat_models, *embedding_models]))
        return {"object": "list", "data": [_model_card(n) for n in names]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict[str, Any]:
        stats["GET /v1/models/{model}"] += 1
        return _model_card(model)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
        stats["POST /v1/chat/completions"] += 1
        body = await _json_body(request)
        if body is None:
            return _error(400, "Request body must be a JSON object.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return _error(400, "'messages' must be a list of message objects.")
        model = str(body.get("model") or settings.chat_model)
        chat_models.setdefault(model, None)
        response_format = body.get("response_format") or {}
        wants_json = isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")
        await _delay(settings.delay_ms)
        users = [message_text(m) for m in messages if m.get("role") == "user"]
        failure = _injected_failure("chat", users[-1:])
        if failure is not None:
            return failure
        kind, text = answer_chat(messages, wants_json)
        stats[f"chat:{kind}"] += 1
        logger.debug("lab stand-in chat answer kind=%s chars=%d", kind, len(text))
        prompt_tokens = sum(_approx_tokens(message_text(m)) for m in messages)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": _approx_tokens(text),
            "total_tokens": prompt_tokens + _approx_tokens(text),
        }
        completion_id = f"chatcmpl-labstandin-{uuid.uuid4().hex[:16]}"
        created = int(time.time())

        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return StreamingResponse(
                _sse(completion_id, created, model, text, usage, include_usage),
                media_type="text/event-stream",
            )

        return JSONResponse(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": "lab-standin",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> JSONResponse:
        stats["POST /v1/embeddings"] += 1
        body = await _json_body(request)
        if body is None:
            return _error(400, "Request body must be a JSON object.")
        texts = embedding_inputs(body.get("input"))
        if texts is None:
            return _error(400, "'input' must be a string or a non-empty list.")
        encoding_format = body.get("encoding_format") or "float"
        if encoding_format not in ("float", "base64"):
            return _error(400, "'encoding_format' must be 'float' or 'base64'.")
        dim = body.get("dimensions") or settings.embedding_dim
        if not isinstance(dim, int) or dim <= 0 or dim > 65536:
            return _error(400, "'dimensions' must be a positive integer.")
        model = str(body.get("model") or settings.embedding_model)
        embedding_models.setdefault(model, None)
        await _delay(embedding_delay_ms)
        failure = _injected_failure("embeddings", texts)
        if failure is not None:
            return failure
        stats["embedding:texts"] += len(texts)
        data = []
        for index, text in enumerate(texts):
            vector = hash_embedding(text, dim)
            payload: list[float] | str = encode_base64(vector) if encoding_format == "base64" else vector
            data.append({"object": "embedding", "index": index, "embedding": payload})
        tokens = sum(_approx_tokens(t) for t in texts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    return app


async def _sse(
    completion_id: str,
    created: int,
    model: str,
    text: str,
    usage: dict[str, int],
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI ``chat.completion.chunk`` events, then ``[DONE]``."""

    def event(delta: dict[str, Any], finish: str | None) -> str:
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": ""}, None)
    pieces = re.findall(r"\S+\s*|\s+", text) or [""]
    step = 8
    for i in range(0, len(pieces), step):
        yield event({"content": "".join(pieces[i : i + step])}, None)
        await asyncio.sleep(0)
    yield event({}, "stop")
    if include_usage:
        final = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(final)}\n\n"
    yield "data: [DONE]\n\n"


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _env(name: str, default: str) -> str:
    return os.environ.get(f"{ENV_PREFIX}{name}", default)


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="lab_llm_standin",
        description=(
            f"OpenAI-compatible {STANDIN_LABEL} for lab and test environments. "
            f"Every option can also be set as an environment variable "
            f"{ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}PORT)."
        ),
    )
    parser.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(_env("PORT", "18080")))
    parser.add_argument("--embedding-dim", type=int, default=int(_env("EMBEDDING_DIM", "768")))
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=float(_env("DELAY_MS", "0")),
        help="latency added to every chat and embedding call (milliseconds)",
    )
    parser.add_argument(
        "--embedding-delay-ms",
        type=float,
        default=float(_env("EMBEDDING_DELAY_MS", "")) if _env("EMBEDDING_DELAY_MS", "") else None,
        help="latency of every embedding call (milliseconds); default: --delay-ms",
    )
    parser.add_argument("--chat-model", default=_env("CHAT_MODEL", DEFAULT_CHAT_MODEL))
    parser.add_argument("--embedding-model", default=_env("EMBEDDING_MODEL", DEFAULT_EMBEDDING_MODEL))
    parser.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info").lower(),
        choices=["critical", "error", "warning", "info", "debug"],
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=_env("ACCESS_LOG", "false").lower() in ("1", "true", "yes"),
        help="log every request (off by default to keep benchmarks cheap)",
    )
    parser.add_argument(
        "--failure-injection",
        action=argparse.BooleanOptionalAction,
        default=_env("FAILURE_INJECTION", "true").lower() in ("1", "true", "yes"),
        help="answer HTTP 400 to inputs carrying a LAB_STANDIN_*FAIL_* marker",
    )
    args = parser.parse_args(argv)
    if args.embedding_dim <= 0:
        parser.error("--embedding-dim must be positive")
    if args.delay_ms < 0:
        parser.error("--delay-ms must not be negative")
    if args.embedding_delay_ms is not None and args.embedding_delay_ms < 0:
        parser.error("--embedding-delay-ms must not be negative")
    return Settings(
        host=args.host,
        port=args.port,
        embedding_dim=args.embedding_dim,
        delay_ms=args.delay_ms,
        embedding_delay_ms=args.embedding_delay_ms,
        chat_model=args.chat_model,
        embedding_model=args.embedding_model,
        log_level=args.log_level,
        access_log=args.access_log,
        failure_injection=args.failure_injection,
    )


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logger.warning(
        "LAB/TEST STAND-IN starting: deterministic OpenAI-compatible fake, NOT a "
        "language model; do not use in production (listen=%s:%d embedding_dim=%d "
        "delay_ms=%s embedding_delay_ms=%s)",
        settings.host,
        settings.port,
        settings.embedding_dim,
        settings.delay_ms,
        settings.delay_ms if settings.embedding_delay_ms is None else settings.embedding_delay_ms,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
    )


if __name__ == "__main__":
    main()
