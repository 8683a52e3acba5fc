"""The roles' public surface stays consistent: argument specs, the defaults and
README tables generated from them, the bounds table, and service sources that
never carry a secret nor stray Jinja syntax. No containers, no network."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.service import render_service

REPO = Path(__file__).resolve().parents[2]
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
    """The options of every entry point (main, backup, restore); one spec per name."""
    merged: dict[str, dict[str, object]] = {}
    for entry in yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())["argument_specs"].values():
        for name, spec in entry["options"].items():
            assert merged.setdefault(name, spec).get("default") == spec.get("default"), name
    return merged


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
        "orchestrator_workers_batch_size": 50,
        "orchestrator_workers_retry_attempts": 3,
        "orchestrator_workers_task_timeout_seconds": 300,
        "orchestrator_workers_reclaim_interval_seconds": 2,
        "orchestrator_workers_heartbeat_ttl_seconds": 6,
        "orchestrator_workers_max_deliveries": 10,
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


def test_service_sources_never_reference_secrets() -> None:
    sources = render_service.sources()
    assert sources
    for source, dest in sources:
        text = source.read_text()
        for secret in SECRETS:
            assert secret not in text, f"{dest} renders {secret}"


def test_rendered_code_holds_no_secret_value(tmp_path: Path) -> None:
    sentinel = {name: f"SENTINEL-{index}-do-not-render" for index, name in enumerate(sorted(SECRETS))}
    package = render_service.render(tmp_path, sentinel)
    for path in package.rglob("*.py"):
        text = path.read_text()
        assert "SENTINEL-" not in text, path.name
        compile(text, str(path), "exec")


# Jinja2's delimiters. Only a file named *.j2 may carry them: every other file
# under templates/ is rendered as it is (plain *.py and *.lua of the service
# package go through ansible.builtin.template too), and files/ are copied.
JINJA = re.compile(r"\{\{|\{%|\{#")


def test_no_jinja_syntax_outside_j2_files() -> None:
    offenders = []
    for path in sorted(REPO.glob("roles/*/templates/**/*")) + sorted(REPO.glob("roles/*/files/**/*")):
        if not path.is_file() or path.name.endswith(".j2"):
            continue
        if any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts):
            continue  # made by importing the tree or installing it, not sources
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if JINJA.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "Jinja2 syntax in a file not named .j2:\n" + "\n".join(offenders)


def bounds() -> dict[str, dict[str, float]]:
    return yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["orchestrator_workers__bounds"]


# Numbers of the role that the service does not use.
ROLE_ONLY_NUMBERS = {
    "orchestrator_workers_network_retries",
    "orchestrator_workers_health_wait_seconds",
    "orchestrator_workers_releases_keep",  # the role's releases (asserted by its preflight), not a setting
}


def test_bounds_cover_every_number_the_service_uses() -> None:
    numeric = {
        name.removeprefix("orchestrator_workers_")
        for name, spec in specs().items()
        if spec.get("type") in ("int", "float") and name not in ROLE_ONLY_NUMBERS
    }
    assert set(bounds()) == numeric


def test_bounds_are_plain_data_and_hold_the_defaults() -> None:
    values = defaults()
    for name, bound in bounds().items():
        assert set(bound) in ({"min"}, {"min", "max"}), name
        assert all(isinstance(limit, int | float) and not isinstance(limit, bool) for limit in bound.values()), name
        assert bound["min"] <= bound.get("max", bound["min"]), name
        value = values[f"orchestrator_workers_{name}"]
        assert bound["min"] <= value <= bound.get("max", value), f"default {name}={value} outside {bound}"


def test_renamed_variables_are_gone_and_their_successors_declared() -> None:
    renamed = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["orchestrator_workers__renamed_variables"]
    assert renamed
    for old, new in renamed.items():
        assert old not in specs(), old
        assert new in specs(), new
        for path in [*REPO.glob("group_vars/*.yml"), *REPO.glob("molecule/*/inventory/group_vars/*.yml")]:
            assert old not in path.read_text(), f"{path.relative_to(REPO)} still sets {old}"
