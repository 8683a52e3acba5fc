#!/usr/bin/env python3
"""Render the orchestrator service from the role's sources and defaults.

The tests and the benchmark harness run what this produces, so what they test
is what the role deploys: the same files of
roles/orchestrator_workers/templates/shield_orchestrator/, recursively
(each rendered through Jinja2 and written without ".j2"), the same
defaults/main.yml. Ansible's filters used by the templates (to_json, bool)
are provided with Ansible's semantics.

The tree also imports as it is (lint, mypy and the unit tests use it so): its
deployed.py is deployed.py.j2 rendered with the defaults, kept in step by
--check-deployed (make lint) and rewritten by --write-deployed.

    scripts/render_service.py OUTPUT_DIR [-e name=value ...]
    scripts/render_service.py --check-deployed | --write-deployed
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
DEPLOYED = "deployed.py"
# What a file of the package may be; the role renders the same set (vars/main.yml).
SUFFIXES = (".py", ".py.j2", ".lua", ".html", ".js", ".css", "py.typed")
SKIPPED_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


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
    """Render the package tree into output_dir/shield_orchestrator; return that directory."""
    variables = role_variables(overrides)
    env = environment()
    package = output_dir / PACKAGE
    for source, dest in sources():
        target = package / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.from_string(source.read_text()).render(**variables))
    return package


def sources() -> list[tuple[Path, str]]:
    """What the role renders, as (source, path in the package): every file of the
    template tree (plain modules, the module with deploy-time values, Redis scripts,
    the console's static files, py.typed), recursively, sorted by destination.
    Caches are left out, and so is deployed.py: the repository's copy of
    deployed.py.j2 rendered with the defaults (so the tree imports as it is),
    which the role replaces by the template's rendering."""
    found = []
    for path in TEMPLATES.rglob("*"):
        relative = path.relative_to(TEMPLATES).as_posix()
        if not path.is_file() or _skipped(relative):
            continue
        found.append((path, relative.removesuffix(".j2")))
    return sorted(found, key=lambda item: item[1])


def _skipped(relative: str) -> bool:
    parts = relative.split("/")
    return any(part in SKIPPED_DIRS for part in parts) or not relative.endswith(SUFFIXES) or relative == DEPLOYED


def deployed_text() -> str:
    """deployed.py.j2 rendered with the role's defaults: the repository's deployed.py."""
    return environment().from_string((TEMPLATES / (DEPLOYED + ".j2")).read_text()).render(**role_variables())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, nargs="?")
    parser.add_argument("-e", "--extra", action="append", default=[], help="name=value (YAML value)")
    parser.add_argument("--check-deployed", action="store_true", help="exit 1 when deployed.py is out of step")
    parser.add_argument("--write-deployed", action="store_true", help="rewrite deployed.py from the defaults")
    args = parser.parse_args()
    if args.check_deployed or args.write_deployed:
        path = TEMPLATES / DEPLOYED
        if args.write_deployed:
            path.write_text(deployed_text())
        elif not path.exists() or path.read_text() != deployed_text():
            print(f"{path} is out of step with deployed.py.j2 and the defaults: run {sys.argv[0]} --write-deployed")
            return 1
        return 0
    if args.output_dir is None:
        parser.error("output_dir is required")
    overrides = {}
    for item in args.extra:
        name, _, value = item.partition("=")
        overrides[name] = yaml.safe_load(value)
    print(render(args.output_dir, overrides))
    return 0


if __name__ == "__main__":
    sys.exit(main())
