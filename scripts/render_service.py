#!/usr/bin/env python3
"""Render the orchestrator service from the role's sources and defaults.

The tests and the benchmark harness run what this produces, so what they test
is what the role deploys: the same files of
roles/orchestrator_workers/templates/shield_orchestrator/ (*.py, *.py.j2,
*.lua, each rendered through Jinja2 and written without ".j2"), the same
defaults/main.yml. Ansible's filters used by the templates (to_json, bool)
are provided with Ansible's semantics.

    scripts/render_service.py OUTPUT_DIR [-e name=value ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jinja2
import yaml

ROLE = Path(__file__).resolve().parent.parent / "roles" / "orchestrator_workers"
TEMPLATES = ROLE / "templates" / "shield_orchestrator"
PACKAGE = "shield_orchestrator"


def ansible_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on", "y", "t"}


def environment() -> jinja2.Environment:
    # Renders Python source, not HTML: escaping would corrupt it.
    # trim_blocks as Ansible's template module sets it.
    env = jinja2.Environment(  # noqa: S701
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True
    )
    env.filters["to_json"] = json.dumps
    env.filters["bool"] = ansible_bool
    return env


def _plain(value: Any) -> bool:
    """True for data without any Jinja expression in it."""
    if isinstance(value, str):
        return "{{" not in value and "{%" not in value
    if isinstance(value, dict):
        return all(_plain(key) and _plain(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return True


def role_variables(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """defaults/main.yml, the plain-data values of vars/main.yml (such as
    orchestrator_workers__bounds) and the overrides, string values templated
    like Ansible does. The other values of vars/main.yml need Ansible (lookups,
    role_path) and are the role's business, not the service's."""
    variables = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    role_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    variables.update({name: value for name, value in role_vars.items() if _plain(value)})
    variables.update(overrides or {})
    env = environment()
    for _ in range(5):
        changed = False
        for key, value in variables.items():
            if isinstance(value, str) and "{{" in value:
                rendered = env.from_string(value).render(**variables)
                changed |= rendered != value
                variables[key] = rendered
        if not changed:
            break
    return variables


def render(output_dir: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Render the package into output_dir/shield_orchestrator; return that directory."""
    variables = role_variables(overrides)
    env = environment()
    package = output_dir / PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    for source in sources():
        text = env.from_string(source.read_text()).render(**variables)
        (package / source.name.removesuffix(".j2")).write_text(text)
    return package


def sources() -> list[Path]:
    """What the role renders: plain modules, modules with deploy-time values, Redis
    scripts, the console's static page."""
    patterns = ("*.py", "*.py.j2", "*.lua", "*.html", "*.js", "*.css")
    return sorted(path for pattern in patterns for path in TEMPLATES.glob(pattern))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("-e", "--extra", action="append", default=[], help="name=value (YAML value)")
    args = parser.parse_args()
    overrides = {}
    for item in args.extra:
        name, _, value = item.partition("=")
        overrides[name] = yaml.safe_load(value)
    print(render(args.output_dir, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
