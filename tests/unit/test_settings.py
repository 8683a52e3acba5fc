"""Settings: deployed defaults, environment overrides, validation naming the variable."""

from __future__ import annotations

import dataclasses

import pytest
from shield_orchestrator.deployed import BOUNDS, DEFAULTS
from shield_orchestrator.settings import SECRET_FIELDS, Settings, SettingsError, parse_value


def load(**env: str) -> Settings:
    return Settings.load({f"ORCHESTRATOR_{key.upper()}": value for key, value in env.items()}, DEFAULTS, BOUNDS)


def problems(**env: str) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load(**env)
    return caught.value.problems


def test_role_defaults_load_and_validate() -> None:
    settings = load()
    assert settings.pool_size == 4
    assert settings.stream_name == "shield:ingestion_queue"
    assert settings.key_prefix == "shield:"
    assert settings.api_token == ""


def test_every_setting_is_deployed_or_a_secret() -> None:
    names = {item.name for item in dataclasses.fields(Settings)}
    assert set(DEFAULTS) == names - SECRET_FIELDS - {"hostname"}
    assert set(BOUNDS) <= names
    assert not set(DEFAULTS) & SECRET_FIELDS


def test_environment_overrides_are_parsed_by_type() -> None:
    settings = load(pool_size="2", retry_backoff_seconds="0.5", llm_required="off", api_token="tok-123")
    assert settings.pool_size == 2
    assert settings.retry_backoff_seconds == 0.5
    assert settings.llm_required is False
    assert settings.api_token == "tok-123"


def test_secrets_stay_out_of_repr() -> None:
    settings = load(api_token="tok-123", redis_password="pw-456", postgres_password="pw-789")
    text = repr(settings)
    assert "tok-123" not in text and "pw-456" not in text and "pw-789" not in text


@pytest.mark.parametrize(("raw", "kind", "expected"), [("7", int, 7), ("1.5", float, 1.5), ("YES", bool, True)])
def test_parse_value(raw: str, kind: type, expected: object) -> None:
    assert parse_value(raw, kind) == expected


@pytest.mark.parametrize(("raw", "kind"), [("two", int), ("1,5", float), ("maybe", bool)])
def test_parse_value_refuses(raw: str, kind: type) -> None:
    with pytest.raises(ValueError, match=raw):
        parse_value(raw, kind)


def test_unreadable_value_names_the_environment_and_role_variable() -> None:
    [problem] = problems(pool_size="two")
    assert problem.startswith("ORCHESTRATOR_POOL_SIZE (role variable orchestrator_workers_pool_size)")
    assert "'two'" in problem and "int" in problem


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"pool_size": "0"},
            "ORCHESTRATOR_POOL_SIZE (role variable orchestrator_workers_pool_size) must be >= 1, got 0",
        ),
        ({"listen_port": "70000"}, "orchestrator_workers_listen_port) must be <= 65535, got 70000"),
        ({"retry_attempts": "0"}, "orchestrator_workers_retry_attempts) must be >= 1"),
        ({"pg_sync_interval": "0"}, "orchestrator_workers_pg_sync_interval) must be >= 0.1"),
        ({"llm_cluster_max_async": "-1"}, "orchestrator_workers_llm_cluster_max_async) must be >= 0, got -1"),
        ({"log_level": "LOUD"}, "orchestrator_workers_log_level) must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"postgres_sslmode": "prefer"}, "must be one of disable, require, verify-ca, verify-full"),
        ({"lightrag_storage": "mongo"}, "orchestrator_workers_lightrag_storage) must be one of local, postgres"),
        ({"postgres_sslmode": "verify-full"}, "orchestrator_workers_postgres_sslrootcert) is required with sslmode"),
        ({"postgres_sslcert": "/etc/c.crt"}, "go together"),
        ({"events_stream": "shield:ingestion_queue"}, "must differ from the stream"),
        ({"events_stream": "shield:ingestion_queue:dlq"}, "must differ from the stream"),
        ({"key_prefix": " "}, "orchestrator_workers_key_prefix) must not be empty"),
        ({"llm_base_url": "ftp://x"}, "orchestrator_workers_llm_base_url) must be an http:// or https:// URL"),
        ({"state_dir": "relative/dir"}, "orchestrator_workers_state_dir) must be an absolute path"),
    ],
)
def test_invalid_values_stop_the_start_naming_the_variable(env: dict[str, str], expected: str) -> None:
    found = problems(**env)
    assert any(expected in problem for problem in found), found


def test_every_problem_is_reported_at_once() -> None:
    found = problems(pool_size="0", batch_size="0", llm_base_url="nope")
    assert len(found) == 3


def test_bounds_are_checked_for_every_bounded_setting() -> None:
    for name, bound in BOUNDS.items():
        if "min" in bound:
            below = bound["min"] - 1
            value = str(int(below)) if float(below).is_integer() and name != "pg_sync_interval" else str(below)
            assert any(f"orchestrator_workers_{name})" in problem for problem in problems(**{name: value})), name


def test_consumer_names_are_per_host_and_number() -> None:
    assert load(hostname="h1").consumer_name(3) == "h1-worker-3"
