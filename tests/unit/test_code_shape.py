"""The shape the service's code keeps: short functions, Jinja2 only where deploy-time values go."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.unit.conftest import RENDERED

PACKAGE = RENDERED / "shield_orchestrator"
MAX_FUNCTION_LINES = 80


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_one_template_carries_the_deploy_time_values() -> None:
    templates = Path(__file__).resolve().parents[2] / "roles/orchestrator_workers/templates/shield_orchestrator"
    assert sorted(path.name for path in templates.glob("*.j2")) == ["deployed.py.j2"]
    assert (PACKAGE / "deployed.py").exists()
