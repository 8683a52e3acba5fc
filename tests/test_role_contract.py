"""The role's public surface stays consistent: defaults, argument specs, README,
and templates that never carry a secret."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import render_service
import yaml

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "roles" / "orchestrator_workers"
SECRETS = {
    "orchestrator_workers_api_token",
    "orchestrator_workers_redis_password",
    "orchestrator_workers_postgres_password",
    "orchestrator_workers_llm_api_key",
    "orchestrator_workers_embedding_api_key",
}


def defaults() -> dict[str, object]:
    return yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())


def specs() -> dict[str, dict[str, object]]:
    return yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]


def test_every_default_is_declared_in_argument_specs_and_back() -> None:
    assert set(defaults()) == set(specs())


def test_every_default_is_prefixed_and_commented() -> None:
    text = (ROLE / "defaults" / "main.yml").read_text().splitlines()
    for number, line in enumerate(text):
        match = re.match(r"^(\w+):", line)
        if match:
            assert match.group(1).startswith("orchestrator_workers_"), line
            assert text[number - 1].startswith("#") or text[number - 1].startswith("orchestrator_workers_"), (
                f"{match.group(1)} has no comment above it"
            )


def test_spec_defaults_match_defaults() -> None:
    values = defaults()
    for name, spec in specs().items():
        if "default" in spec:
            assert spec["default"] == values[name], name


def test_known_good_values() -> None:
    values = defaults()
    expected = {
        "orchestrator_workers_pool_size": 4,
        "orchestrator_workers_batch_size": 10,
        "orchestrator_workers_retry_attempts": 3,
        "orchestrator_workers_task_timeout_seconds": 300,
        "orchestrator_workers_reclaim_interval_seconds": 30,
        "orchestrator_workers_recycle_after_tasks": 1000,
        "orchestrator_workers_key_prefix": "shield:",
        "orchestrator_workers_graceful_shutdown_timeout": 60,
        "orchestrator_workers_stream_name": "shield:ingestion_queue",
        "orchestrator_workers_consumer_group": "lightrag-workers",
        "orchestrator_workers_job_status_ttl": 3600,
        "orchestrator_workers_app_dir": "/opt/hx-citadel-shield/orchestrator",
        "orchestrator_workers_service_name": "shield-orchestrator",
        "orchestrator_workers_user": "orchestrator",
        "orchestrator_workers_max_chunks_per_job": 1000,
        "orchestrator_workers_max_chunk_bytes": 65536,
    }
    for name, value in expected.items():
        assert values[name] == value, name


def test_defaults_and_readme_tables_are_in_step_with_the_specs() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "role-docs.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_service_templates_never_reference_secrets() -> None:
    for template in (ROLE / "templates" / "shield_orchestrator").glob("*.j2"):
        text = template.read_text()
        for secret in SECRETS:
            assert secret not in text, f"{template.name} renders {secret}"


def test_rendered_code_holds_no_secret_value(tmp_path: Path) -> None:
    sentinel = {name: f"SENTINEL-{index}-do-not-render" for index, name in enumerate(sorted(SECRETS))}
    package = render_service.render(tmp_path, sentinel)
    for path in package.glob("*.py"):
        text = path.read_text()
        assert "SENTINEL-" not in text, path.name
        compile(text, str(path), "exec")


def test_settings_take_overrides_and_hide_secrets(tmp_path: Path) -> None:
    package = render_service.render(tmp_path)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from shield_orchestrator.settings import Settings;"
        "s = Settings.from_env({'ORCHESTRATOR_WORKER_POOL_SIZE': '2', 'ORCHESTRATOR_API_TOKEN': 'tok-123',"
        " 'ORCHESTRATOR_LLM_REQUIRED': 'false'});"
        "assert s.worker_pool_size == 2 and s.api_token == 'tok-123' and s.llm_required is False;"
        "assert 'tok-123' not in repr(s);"
        "print(s.dlq_stream, s.consumer_name(3))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(package.parent)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "shield:ingestion_queue:dlq"
    assert out.stdout.split()[1].endswith("-worker-3")
    bad = subprocess.run(
        [sys.executable, "-c", script.replace("'2'", "'two'"), str(package.parent)], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "ORCHESTRATOR_WORKER_POOL_SIZE" in bad.stderr
