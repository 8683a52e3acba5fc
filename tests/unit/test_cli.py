"""The CLI reads the unit's environment file itself: no secret on a command line."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import shield_orchestrator
from shield_orchestrator import cli
from shield_orchestrator.cli import read_env_file


def test_reads_what_the_role_renders() -> None:
    text = (
        "# Secrets of shield-orchestrator\n"
        'ORCHESTRATOR_API_TOKEN="a\\"b\\\\c\\$d\\`e"\n'
        'ORCHESTRATOR_REDIS_PASSWORD=""\n'
        "\n"
        "ORCHESTRATOR_POSTGRES_PASSWORD='single $quoted'\n"
        'ORCHESTRATOR_LLM_API_KEY="line1\\nline2"\n'
        "PLAIN=value with spaces\n"
    )
    assert read_env_file(text) == {
        "ORCHESTRATOR_API_TOKEN": 'a"b\\c$d`e',
        "ORCHESTRATOR_REDIS_PASSWORD": "",
        "ORCHESTRATOR_POSTGRES_PASSWORD": "single $quoted",
        "ORCHESTRATOR_LLM_API_KEY": "line1\nline2",
        "PLAIN": "value with spaces",
    }


@pytest.mark.parametrize("line", ["no equals sign", "1BAD=x", "=x"])
def test_refuses_other_lines_naming_the_line(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        read_env_file(f"# ok\n{line}\n")


def test_the_console_script_is_the_cli_and_reports_the_package_version() -> None:
    """pyproject.toml's entry point (installed into the service venv) runs cli.main."""
    (script,) = entry_points(group="console_scripts", name="shield-orchestrator")
    assert script.load() is cli.main
    binary = Path(sys.executable).parent / "shield-orchestrator"
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"shield_orchestrator {shield_orchestrator.__version__}"
