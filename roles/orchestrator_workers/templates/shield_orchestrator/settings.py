"""Settings: the deploy-time values (deployed.py), overridden by the environment, validated.

A setting's name is the role variable's name without `orchestrator_workers_`;
the environment overrides it as ORCHESTRATOR_<NAME> (the secrets only ever
come that way, from the environment file). A bad value stops the service at
start with both names in the message.
"""

from __future__ import annotations

import dataclasses
import socket
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "ORCHESTRATOR_"
ROLE_PREFIX = "orchestrator_workers_"
SECRET_FIELDS = frozenset({"api_token", "redis_password", "postgres_password", "llm_api_key", "embedding_api_key"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SSL_MODES = ("disable", "require", "verify-ca", "verify-full")
LIGHTRAG_STORAGES = ("local", "postgres")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class SettingsError(ValueError):
    """One or more settings are invalid; the message names every one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def describe(name: str) -> str:
    """How an operator finds a setting: its environment variable and its role variable."""
    if name == "hostname":
        return f"{ENV_PREFIX}HOSTNAME"
    return f"{ENV_PREFIX}{name.upper()} (role variable {ROLE_PREFIX}{name})"


@dataclass(frozen=True)
class Settings:
    """Every setting of the service, frozen: the deployed defaults (deployed.py)
    overridden by ORCHESTRATOR_* variables. load() refuses values out of bounds, out of
    their choices or inconsistent with each other, naming every one."""

    service_name: str
    state_dir: str
    log_level: str
    # HTTP API
    listen_host: str
    listen_port: int
    max_chunks_per_job: int
    max_chunk_bytes: int
    max_queue_depth: int
    sse_max_clients: int
    api_docs_public: bool
    sse_keepalive_seconds: float
    sse_replay_events: int
    events_stream_maxlen: int
    # worker pool
    pool_size: int
    batch_size: int
    block_ms: int
    task_timeout_seconds: float
    retry_attempts: int
    retry_backoff_seconds: float
    recycle_after_tasks: int
    max_deliveries: int
    heartbeat_ttl_seconds: float
    graceful_shutdown_timeout: float
    reclaim_interval_seconds: float
    # Redis names
    stream_name: str
    consumer_group: str
    events_stream: str
    key_prefix: str
    # job tracking
    job_status_ttl: int
    pg_sync_interval: float
    # Redis
    redis_host: str
    redis_port: int
    redis_db: int
    redis_sentinels: str
    redis_sentinel_master: str
    redis_username: str
    # PostgreSQL
    postgres_host: str
    postgres_port: int
    postgres_db: str
    postgres_user: str
    postgres_sslmode: str
    postgres_sslrootcert: str
    postgres_sslcert: str
    postgres_sslkey: str
    # LightRAG
    lightrag_storage: str
    lightrag_workspace: str
    lightrag_lock_ttl_seconds: float
    lightrag_llm_cache: bool
    # LLM and embeddings
    llm_base_url: str
    llm_model: str
    llm_timeout_seconds: float
    llm_max_async: int
    llm_cluster_max_async: int
    llm_required: bool
    embedding_base_url: str
    embedding_model: str
    embedding_dim: int
    embedding_timeout_seconds: float
    embedding_max_async: int
    llm_stall_seconds: float
    # not deploy-time values
    hostname: str = field(default_factory=socket.gethostname)
    api_token: str = field(default="", repr=False)
    redis_password: str = field(default="", repr=False)
    postgres_password: str = field(default="", repr=False)
    llm_api_key: str = field(default="", repr=False)
    embedding_api_key: str = field(default="", repr=False)

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """redis_sentinels ("host:port,host:port") as (host, port) pairs."""
        pairs = []
        for item in filter(None, (part.strip() for part in self.redis_sentinels.split(","))):
            host, _, port = item.rpartition(":")
            pairs.append((host.strip("[]"), int(port)))
        return pairs

    @property
    def lightrag_working_dir(self) -> str:
        return f"{self.state_dir}/lightrag"

    def consumer_name(self, index: int) -> str:
        return f"{self.hostname}-worker-{index}"

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str],
        defaults: Mapping[str, str | int | float | bool],
        bounds: Mapping[str, Mapping[str, float]],
    ) -> Settings:
        """The deployed defaults, overridden by ORCHESTRATOR_* variables, validated."""
        kinds = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        problems: list[str] = []
        for item in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + item.name.upper())
            if raw is not None:
                try:
                    values[item.name] = parse_value(raw, kinds[item.name])
                except ValueError:
                    problems.append(f"{describe(item.name)}: cannot read {raw!r} as {kinds[item.name].__name__}")
            elif item.name in defaults:
                values[item.name] = defaults[item.name]
            elif _required(item):
                problems.append(f"{describe(item.name)}: no value deployed")
        if problems:
            raise SettingsError(problems)
        settings = cls(**values)
        settings.validate(bounds)
        return settings

    def validate(self, bounds: Mapping[str, Mapping[str, float]]) -> None:
        """Raise SettingsError naming every setting whose value cannot work."""
        problems = [*check_bounds(self, bounds), *check_choices(self), *check_consistency(self)]
        if problems:
            raise SettingsError(problems)


def _required(item: dataclasses.Field[Any]) -> bool:
    return item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING


def parse_value(raw: str, kind: type) -> str | int | float | bool:
    """An environment string as the setting's type; ValueError when it is not one."""
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(raw)
    if kind is int:
        return int(raw)
    if kind is float:
        return float(raw)
    return raw


def check_bounds(settings: Settings, bounds: Mapping[str, Mapping[str, float]]) -> list[str]:
    problems = []
    for name, bound in bounds.items():
        value = getattr(settings, name)
        if "min" in bound and value < bound["min"]:
            problems.append(f"{describe(name)} must be >= {_number(bound['min'])}, got {value}")
        if "max" in bound and value > bound["max"]:
            problems.append(f"{describe(name)} must be <= {_number(bound['max'])}, got {value}")
    return problems


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def check_choices(settings: Settings) -> list[str]:
    problems = []
    for name, choices in (
        ("log_level", LOG_LEVELS),
        ("postgres_sslmode", SSL_MODES),
        ("lightrag_storage", LIGHTRAG_STORAGES),
    ):
        value = getattr(settings, name)
        if value not in choices:
            problems.append(f"{describe(name)} must be one of {', '.join(choices)}, got {value!r}")
    return problems


def check_consistency(settings: Settings) -> list[str]:
    """Rules between settings, and shapes a type cannot express."""
    s = settings
    problems = []
    if s.postgres_sslmode in ("verify-ca", "verify-full") and not s.postgres_sslrootcert:
        problems.append(f"{describe('postgres_sslrootcert')} is required with sslmode {s.postgres_sslmode}")
    if bool(s.postgres_sslcert) != bool(s.postgres_sslkey):
        problems.append(f"{describe('postgres_sslcert')} and {describe('postgres_sslkey')} go together")
    names = {"stream_name": s.stream_name, "events_stream": s.events_stream, "dead letters": f"{s.stream_name}:dlq"}
    if len(set(names.values())) < len(names):
        problems.append(f"{describe('events_stream')} must differ from the stream and its dead-letter stream")
    for name in ("stream_name", "consumer_group", "events_stream", "key_prefix", "hostname"):
        if not getattr(s, name).strip():
            problems.append(f"{describe(name)} must not be empty")
    for name in ("llm_base_url", "embedding_base_url"):
        if not getattr(s, name).startswith(("http://", "https://")):
            problems.append(f"{describe(name)} must be an http:// or https:// URL, got {getattr(s, name)!r}")
    problems += check_sentinels(s)
    if not s.state_dir.startswith("/"):
        problems.append(f"{describe('state_dir')} must be an absolute path, got {s.state_dir!r}")
    return problems


def check_sentinels(s: Settings) -> list[str]:
    if bool(s.redis_sentinels.strip()) != bool(s.redis_sentinel_master.strip()):
        return [f"{describe('redis_sentinels')} and {describe('redis_sentinel_master')} go together"]
    try:
        pairs = s.sentinels
    except ValueError:
        pairs = []
    if s.redis_sentinels.strip() and (not pairs or any(not host or not 0 < port < 65536 for host, port in pairs)):
        return [f"{describe('redis_sentinels')} must be host:port items, got {s.redis_sentinels!r}"]
    return []
