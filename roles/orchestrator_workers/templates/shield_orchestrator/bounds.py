"""What every store downstream accepts: the bounds an ingest request is held to.

A chunk's text, source_uri and metadata go to Redis (the stream entry, as
UTF-8), to LightRAG (its PostgreSQL tables: TEXT and JSONB) and, for the job's
metadata, to PostgreSQL's job_status (JSONB; job_type VARCHAR(64)). None of
them stores a NUL, a lone surrogate (not UTF-8), NaN or Infinity (not JSON);
JSONB and the API's own answers choke on very deep nesting. Each check raises
ValueError with a message the API turns into a 422 naming the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# job_status.job_type is VARCHAR(64) and holds "ingest:<source_type>".
JOB_TYPE_COLUMN = 64
SOURCE_TYPE_MAX_CHARS = JOB_TYPE_COLUMN - len("ingest:")
SOURCE_URI_MAX_CHARS = 2048
# Nesting levels of a metadata object (the object itself is level 1).
METADATA_MAX_DEPTH = 8
# Compact UTF-8 JSON of a metadata object (the job's, each chunk's). JSON Schema
# cannot state a size in bytes: the OpenAPI description says it.
METADATA_MAX_BYTES = 65536

# The patterns the OpenAPI schema declares; the service checks with the same ones.
NO_NUL_PATTERN = r"^[^\x00]*$"
# A job id as the API hands them out (8-4-4-4-12), and a Redis stream entry id
# (<ms>-<seq>, 19 digits each at most: always below 2^64).
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
STREAM_ID_PATTERN = r"^[0-9]{1,19}-[0-9]{1,19}$"
SOURCE_TYPE_PATTERN = r"^[^\x00-\x1f\x7f]+$"
# A LightRAG document id a delete job names (the service's are chunk-<job id>-<index>):
# visible ASCII, as LightRAG's own ids (doc-<md5>) are.
DOC_ID_PATTERN = r"^[!-~]+$"
DOC_ID_MAX_CHARS = 255
# What LightRAG takes out of a document before storing it (lightrag.utils.
# sanitize_text_for_encoding: strip, html.unescape, control characters, U+FFFE/FFFF):
# a text made only of these is stored as an empty document. Spelled out, as
# Python's \s and JavaScript's (what OpenAPI tools use) differ.
VANISHING = r"\x00-\x20\x7f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\ufffe\uffff"
# Non-blank: something left once those and HTML entities (&nbsp; &#160; &nbsp) are taken out.
TEXT_PATTERN = rf"^(?!(?:[{VANISHING}]|&#?[A-Za-z0-9]+;?)*$)[^\x00]*$"
_TEXT = re.compile(TEXT_PATTERN)
_SOURCE_TYPE = re.compile(SOURCE_TYPE_PATTERN)
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_encodable(value: str) -> str:
    """No NUL (PostgreSQL refuses it), no lone surrogate (not UTF-8: Redis, PostgreSQL)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000)")
    found = _SURROGATE.search(value)
    if found:
        raise ValueError(f"lone surrogate \\u{ord(found.group()):04x} at character {found.start()}: not UTF-8")
    return value


def check_text(value: str) -> str:
    check_encodable(value)
    if not _TEXT.match(value):
        raise ValueError("must contain text: only whitespace, control characters and HTML entities found")
    return value


def check_source_type(value: str) -> str:
    check_encodable(value)
    if not _SOURCE_TYPE.match(value):
        raise ValueError("must be 1 or more characters, without control characters")
    return value


def check_metadata(value: dict[str, Any], max_bytes: int) -> dict[str, Any]:
    """Depth, every key and string encodable, numbers finite, then the size as stored."""
    _check_json(value, "", 1)
    size = len(json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode())
    if size > max_bytes:
        raise ValueError(f"{size} bytes of JSON exceed {max_bytes}")
    return value


def _check_json(value: object, where: str, depth: int) -> None:
    if isinstance(value, dict | list) and depth > METADATA_MAX_DEPTH:
        raise ValueError(f"nested deeper than {METADATA_MAX_DEPTH} levels (at {where or 'the top'})")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_string(str(key), f"{where} key {str(key)[:32]!r}")
            _check_json(item, f"{where}.{str(key)[:32]}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value} at {where or 'the top'} is not a JSON number")


def _check_string(value: str, where: str) -> None:
    try:
        check_encodable(value)
    except ValueError as exc:
        raise ValueError(f"{where.strip() or 'the top'}: {exc}") from None


def metadata_schemas(prefix: str = "MetadataValue") -> dict[str, dict[str, Any]]:
    """JSON Schema of metadata bounded to METADATA_MAX_DEPTH: one named schema per
    level (JSON Schema cannot count depth, a chain of levels can). "<prefix>0" is
    a scalar; "<prefix>N" a scalar or an array/object of "<prefix>N-1" values."""
    scalar = [
        {"type": "string", "pattern": NO_NUL_PATTERN},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
    ]
    schemas: dict[str, dict[str, Any]] = {f"{prefix}0": {"anyOf": scalar}}
    for level in range(1, METADATA_MAX_DEPTH):
        inner = {"$ref": f"#/components/schemas/{prefix}{level - 1}"}
        schemas[f"{prefix}{level}"] = {
            "anyOf": [
                *scalar,
                {"type": "array", "items": inner},
                {"type": "object", "propertyNames": {"pattern": NO_NUL_PATTERN}, "additionalProperties": inner},
            ]
        }
    return schemas


def metadata_schema(max_bytes: int, prefix: str = "MetadataValue") -> dict[str, Any]:
    """The schema of a metadata field (an object: level 1 of METADATA_MAX_DEPTH)."""
    return {
        "type": "object",
        "propertyNames": {"pattern": NO_NUL_PATTERN},
        "additionalProperties": {"$ref": f"#/components/schemas/{prefix}{METADATA_MAX_DEPTH - 1}"},
        "description": f"Free-form JSON: at most {METADATA_MAX_DEPTH} levels deep, {max_bytes} bytes as "
        "compact UTF-8 JSON; no NUL, lone surrogate, NaN or Infinity anywhere.",
    }
