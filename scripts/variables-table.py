#!/usr/bin/env python3
"""The README's variables table, generated from the role's meta/argument_specs.yml.

scripts/variables-table.py            print the table
scripts/variables-table.py --write    replace the table in README.md
scripts/variables-table.py --check    exit 1 when README.md is out of step
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "roles/orchestrator_workers/meta/argument_specs.yml"
README = REPO / "README.md"
START, END = "<!-- variables:start -->", "<!-- variables:end -->"


def _cell(value: object) -> str:
    if isinstance(value, list):
        value = " ".join(str(item) for item in value)
    return str(value).replace("|", "\\|").replace("\n", " ").strip()


def table() -> str:
    options = yaml.safe_load(SPECS.read_text())["argument_specs"]["main"]["options"]
    rows = ["| Variable | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for name, spec in options.items():
        kind = spec.get("type", "str")
        if kind == "list" and "elements" in spec:
            kind = f"list of {spec['elements']}"
        if "choices" in spec:
            kind += " (" + ", ".join(str(choice) for choice in spec["choices"]) + ")"
        default = spec.get("default", "")
        if isinstance(default, list):
            default = f"{len(default)} pinned packages" if default else "[]"
        shown = f"`{default}`" if default not in ("", None) else ("*required*" if spec.get("required") else '`""`')
        rows.append(f"| `{name}` | {kind} | {_cell(shown)} | {_cell(spec.get('description', ''))} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    updated = f"{head}{START}\n{table()}\n{END}{tail}"
    if "--write" in argv:
        README.write_text(updated)
        return 0
    if "--check" in argv:
        if START not in text or updated != text:
            print("README.md variables table is out of step: run scripts/variables-table.py --write", file=sys.stderr)
            return 1
        return 0
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
