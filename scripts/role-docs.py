#!/usr/bin/env python3
"""Each role's meta/argument_specs.yml is the one description of its variables.

From it this script generates, for every role under roles/:
  - defaults/main.yml: every variable that has a default, with its description
    as the comment above it, grouped under the spec's section comments
    ("# --- Title ---" lines among the options);
  - the variables table of the role's README (between the markers
    <!-- variables:start --> and <!-- variables:end -->), for the roles listed
    in READMES.

    scripts/role-docs.py --check    exit 1 and name the files that are out of step
    scripts/role-docs.py --write    rewrite them
    scripts/role-docs.py --table ROLE   print ROLE's variables table

Needs PyYAML (Debian's python3-yaml, or any of the project's virtualenvs).
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
ROLES = REPO / "roles"
# Role -> README that carries its variables table.
READMES = {
    "orchestrator_workers": REPO / "README.md",
    "lab_llm_standin": ROLES / "lab_llm_standin" / "README.md",
    "python_service": ROLES / "python_service" / "README.md",
}
START, END = "<!-- variables:start -->", "<!-- variables:end -->"
WIDTH = 100
# Ansible documentation markup: O(option), V(value), C(code), I(italic), B(bold), E(env var).
MARKUP = re.compile(r"\b[OVCIBE]\(([^()]*)\)")
SECTION = re.compile(r"^ {6}# --- (.+?)\s*-*\s*$")
ENTRY_POINT = re.compile(r"^ {2}([a-z_][a-z0-9_]*):\s*$")
OPTION = re.compile(r"^ {6}([a-z_][a-z0-9_]*):\s*$")


class Option:
    def __init__(self, name: str, spec: dict[str, Any], section: str, entry_points: list[str]) -> None:
        self.name = name
        self.spec = spec
        self.section = section
        self.entry_points = entry_points

    @property
    def paragraphs(self) -> list[str]:
        description = self.spec.get("description", [])
        if isinstance(description, str):
            description = [description]
        return [" ".join(str(part).split()) for part in description]

    @property
    def has_default(self) -> bool:
        return "default" in self.spec


def options(role: Path) -> list[Option]:
    """The options of every entry point, in the spec's order, each with its section."""
    path = role / "meta" / "argument_specs.yml"
    specs = yaml.safe_load(path.read_text())["argument_specs"]
    # Section comments are not YAML data: read them from the text.
    sections: dict[str, str] = {}
    section = ""
    for line in path.read_text().splitlines():
        if ENTRY_POINT.match(line):
            section = ""
        elif match := SECTION.match(line):
            section = match.group(1)
        elif (match := OPTION.match(line)) and match.group(1) not in sections:
            sections[match.group(1)] = section
    found: dict[str, Option] = {}
    for entry_point, entry in specs.items():
        for name, spec in (entry.get("options") or {}).items():
            if name in found:
                found[name].entry_points.append(entry_point)
            else:
                found[name] = Option(name, spec, sections.get(name, ""), [entry_point])
    return list(found.values())


def plain(text: str) -> str:
    return MARKUP.sub(r"\1", text)


def markdown(text: str) -> str:
    return MARKUP.sub(r"`\1`", text)


# --- defaults/main.yml ---------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block sequences indented under their key, as yamllint's default asks."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _quoted_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Strings that need quotes get double quotes, like the rest of the project's YAML."""
    style = '"' if "{{" in value or yaml.safe_dump(value).startswith(("'", '"')) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _quoted_str)


def dump(name: str, value: Any) -> str:
    return yaml.dump({name: value}, Dumper=_Dumper, default_flow_style=False, sort_keys=False, width=2**16)


def defaults_text(role: Path) -> str:
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    if "main" in spec:
        summary = spec["main"].get("short_description", "")
    else:
        summary = "entry points " + ", ".join(spec) + " (import_role tasks_from)."
    lines = [
        "---",
        f"# {role.name}: {plain(summary)}",
        "# Generated from meta/argument_specs.yml by scripts/role-docs.py --write. That",
        "# file is the one description of each variable (and of its type): edit it,",
        "# not this one.",
    ]
    section = None
    for option in options(role):
        if not option.has_default:
            continue
        if option.section != section:
            section = option.section
            lines.append("")
            if section:
                lines.append(f"# --- {section} " + "-" * max(3, 76 - len(section)))
        for paragraph in option.paragraphs:
            lines += textwrap.wrap(plain(paragraph), WIDTH - 2, initial_indent="# ", subsequent_indent="# ")
        lines.append(dump(option.name, option.spec["default"]).rstrip("\n"))
    return "\n".join(lines) + "\n"


# --- README table ----------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _default(option: Option) -> str:
    if not option.has_default:
        return "*required*" if option.spec.get("required") else "*none*"
    value = option.spec["default"]
    if isinstance(value, list) and value:
        items = ", ".join(f"`{item}`" for item in value)
        return f"{len(value)} items: {items}"
    if isinstance(value, str) and value == "":
        return '`""`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, dict)):
        return "`" + yaml.safe_dump(value, default_flow_style=True, width=2**16).strip() + "`"
    return f"`{value}`"


def _type(option: Option) -> str:
    kind = option.spec.get("type", "str")
    if kind == "list" and "elements" in option.spec:
        kind = f"list of {option.spec['elements']}"
    if "choices" in option.spec:
        kind += " (" + ", ".join(str(choice) for choice in option.spec["choices"]) + ")"
    return kind


def table(role: Path) -> str:
    found = options(role)
    several = len({entry for option in found for entry in option.entry_points}) > 1
    head = ["Variable", "Type", "Default", "Description"] + (["Entry points"] if several else [])
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for option in found:
        cells = [
            f"`{option.name}`",
            _type(option),
            _default(option),
            markdown(" ".join(option.paragraphs)),
        ] + ([", ".join(option.entry_points)] if several else [])
        rows.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(rows)


def readme_text(role: Path, readme: Path) -> str:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme.relative_to(REPO)} lacks the markers {START} ... {END}")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table(role)}\n{END}{tail}"


# --- main --------------------------------------------------------------------------------


def problems(role: Path) -> list[str]:
    """Spec errors that would make the generated files wrong."""
    found = []
    for option in options(role):
        if not option.has_default and not option.spec.get("required"):
            found.append(f"{role.name}: {option.name} has neither a default nor required: true")
        if not option.paragraphs:
            found.append(f"{role.name}: {option.name} has no description")
        if not option.name.startswith(role.name + "_"):
            found.append(f"{role.name}: {option.name} does not start with {role.name}_")
    return found


def generated() -> dict[Path, str]:
    """Every generated file and the text it must hold."""
    files: dict[Path, str] = {}
    for role in sorted(path.parent.parent for path in ROLES.glob("*/meta/argument_specs.yml")):
        files[role / "defaults" / "main.yml"] = defaults_text(role)
        if role.name in READMES:
            files[READMES[role.name]] = readme_text(role, READMES[role.name])
    return files


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when a generated file is out of step")
    mode.add_argument("--write", action="store_true", help="rewrite the generated files")
    mode.add_argument("--table", metavar="ROLE", help="print the variables table of ROLE")
    args = parser.parse_args(argv)
    if args.table:
        print(table(ROLES / args.table))
        return 0
    roles = sorted(path.parent.parent for path in ROLES.glob("*/meta/argument_specs.yml"))
    errors = [error for role in roles for error in problems(role)]
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    files = generated()
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if args.write:
        for path in stale:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(files[path])
            print(f"wrote {path.relative_to(REPO)}")
        return 0
    if stale:
        names = ", ".join(str(path.relative_to(REPO)) for path in stale)
        print(f"out of step with meta/argument_specs.yml: {names}; run scripts/role-docs.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
