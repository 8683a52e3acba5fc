"""LightRAG is pinned in one place (boundary.LIGHTRAG_VERSION) and checked
everywhere: the role installs that version, the tests run on it, and the
service refuses to start on any other, naming both."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from shield_orchestrator import cli
from shield_orchestrator.lightrag import boundary
from shield_orchestrator.lightrag.boundary import (
    LIGHTRAG_DISTRIBUTION,
    LIGHTRAG_VERSION,
    LightRAGVersionError,
    check_lightrag_version,
    installed_lightrag_version,
)

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "orchestrator_workers"
PIN = re.compile(rf"^{re.escape(LIGHTRAG_DISTRIBUTION)}(?:\[[^\]]*\])?==(\S+)$")


def pins(lines: list[str]) -> list[str]:
    return [match.group(1) for line in lines if (match := PIN.match(line.strip()))]


def test_the_role_installs_the_pinned_version() -> None:
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    constraints = (ROLE / "files" / "constraints.txt").read_text().splitlines()
    assert pins(options["orchestrator_workers_pip_requirements"]["default"]) == [LIGHTRAG_VERSION]
    assert pins(defaults["orchestrator_workers_pip_requirements"]) == [LIGHTRAG_VERSION]
    assert pins(constraints) == [LIGHTRAG_VERSION]


def test_the_bench_compares_against_the_same_lightrag() -> None:
    """The bench's LightRAG server is the service's LightRAG, with its API extra."""
    lines = (REPO / "bench" / "requirements-lightrag-server.txt").read_text().splitlines()
    assert pins(lines) == [LIGHTRAG_VERSION]


def test_the_tests_run_on_the_pinned_version() -> None:
    assert installed_lightrag_version() == LIGHTRAG_VERSION


@pytest.mark.parametrize("installed", ["1.5.8", "1.6.0", None])
def test_another_version_is_refused_naming_both(installed: str | None) -> None:
    with pytest.raises(LightRAGVersionError) as raised:
        check_lightrag_version(installed)
    message = str(raised.value)
    assert f"{LIGHTRAG_DISTRIBUTION} {LIGHTRAG_VERSION}" in message
    assert f"{LIGHTRAG_DISTRIBUTION} {installed} is installed" in message if installed else "not installed" in message
    assert raised.value.installed == installed


def test_serve_refuses_to_start_on_another_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line on stderr (the journal), exit 2, and nothing started."""

    def serve(*_args: object) -> int:
        raise AssertionError("the service started on another LightRAG")

    monkeypatch.setattr(boundary, "installed_lightrag_version", lambda: "1.6.0")
    monkeypatch.setattr(cli, "serve", serve)
    monkeypatch.setattr(cli, "configure_logging", lambda _level: None)
    assert cli.main(["serve"]) == cli.EXIT_CONFIG
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("installation error: lightrag-hku 1.6.0 is installed")
    assert f"lightrag-hku {LIGHTRAG_VERSION}" in line
