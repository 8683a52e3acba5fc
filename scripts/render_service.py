#!/usr/bin/env python3
"""Render the orchestrator service from the role's templates and defaults.

The tests and the benchmark harness run what this produces, so what they test
is what the role deploys: same templates, same defaults/main.yml. Ansible's
filters used by the templates (to_json, bool) are provided with Ansible's
semantics.

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
PATTERNS = ("*.py", "*.py.j2", "*.lua")


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


# Internal role variables (vars/main.yml) the package's templates use: plain data.
INTERNAL = ("orchestrator_workers__bounds",)


def role_variables(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """defaults/main.yml with overrides, string values templated like Ansible does,
    plus the internal data the templates read from vars/main.yml."""
    variables = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    internal = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    variables.update({name: internal[name] for name in INTERNAL})
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
    # Like the role: every file goes through the template engine (a plain .py
    # or .lua file comes out unchanged; a test keeps Jinja2 out of them).
    for source in sorted(path for pattern in PATTERNS for path in TEMPLATES.glob(pattern)):
        text = env.from_string(source.read_text()).render(**variables)
        (package / source.name.removesuffix(".j2")).write_text(text)
    return package


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
