#!/usr/bin/env python3
"""Each role's meta/ is the one description of the role: its variables, its
platforms, its purpose.

From meta/argument_specs.yml, meta/main.yml and tasks/ this script generates,
for every role under roles/:
  - defaults/main.yml: every variable that has a default, with its description
    as the comment above it, grouped under the spec's section comments
    ("# --- Title ---" lines among the options);
  - README.md, whole but for one hand-written part: the description (the spec's
    short_description and description), the requirements (meta/main.yml's
    Ansible version and platforms, the collections and roles the tasks use),
    the entry points, the phases and their tags (tasks/main.yml), the
    variables table, the license and the way back to the project's README.
    The part between <!-- hand-written:start --> and <!-- hand-written:end -->
    is kept as it is; it must hold an example as a ```yaml block, which must
    parse and may name only the role's declared variables and its tags.

    scripts/role-docs.py --check    exit 1 and name the files that are out of step
    scripts/role-docs.py --write    rewrite them (a missing README gets a stub to fill)
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
PLAYBOOKS = REPO / "playbooks"
START, END = "<!-- variables:start -->", "<!-- variables:end -->"
HAND_START, HAND_END = "<!-- hand-written:start -->", "<!-- hand-written:end -->"
DEBIAN = {"bullseye": 11, "bookworm": 12, "trixie": 13, "forky": 14}
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
        return f"{len(value)} item{'s' if len(value) > 1 else ''}: {items}"
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


# --- README -------------------------------------------------------------------------


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.exists() else None


def _specs(role: Path) -> dict[str, Any]:
    return yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]


def _list(value: Any) -> list[Any]:
    """A YAML value that may be one item or a list of them, as a list."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _paragraphs(value: Any) -> list[str]:
    return [" ".join(str(item).split()) for item in _list(value)]


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(markdown(text), 80, break_long_words=False, break_on_hyphens=False)


def _tasks(role: Path) -> list[dict[str, Any]]:
    """Every task of the role's tasks/ and handlers/, blocks opened."""
    found: list[dict[str, Any]] = []

    def walk(items: Any) -> None:
        for item in items or []:
            if isinstance(item, dict):
                found.append(item)
                for key in ("block", "rescue", "always"):
                    walk(item.get(key))

    for path in sorted([*role.glob("tasks/*.yml"), *role.glob("handlers/*.yml")]):
        walk(_load(path))
    return found


def _collections(role: Path) -> list[str]:
    """Collections of the modules the role's tasks call (ansible.builtin aside)."""
    names = set()
    for task in _tasks(role):
        for key in task:
            parts = str(key).split(".")
            if len(parts) == 3 and ".".join(parts[:2]) not in ("ansible.builtin", "ansible.legacy"):
                names.add(".".join(parts[:2]))
    return sorted(names)


def _imported_roles(role: Path) -> dict[str, list[str]]:
    """Roles the tasks import or include -> their tasks_from (if any)."""
    found: dict[str, list[str]] = {}
    for task in _tasks(role):
        for key in ("import_role", "include_role"):
            args = task.get(f"ansible.builtin.{key}") or task.get(key)
            if isinstance(args, dict) and "name" in args:
                entries = found.setdefault(str(args["name"]), [])
                if args.get("tasks_from") and args["tasks_from"] not in entries:
                    entries.append(str(args["tasks_from"]))
    return found


def _users(role: Path) -> list[str]:
    """Where the project uses the role: other roles' imports, the playbooks."""
    users = [
        f"the role [`{other.name}`](../{other.name}/README.md) (import_role)"
        for other in sorted(path for path in ROLES.iterdir() if path.is_dir() and path != role)
        if role.name in _imported_roles(other)
    ]
    for playbook in sorted(PLAYBOOKS.glob("*.yml")):
        for play in _load(playbook) or []:
            named = [item["role"] if isinstance(item, dict) else item for item in play.get("roles") or []]
            if role.name in named:
                link = f"[playbooks/{playbook.name}](../../playbooks/{playbook.name})"
                users.append(f'{link} (play "{play.get("name", "")}")')
    return users


PHASE_KEYS = ("ansible.builtin.import_tasks", "ansible.builtin.include_tasks")


def _phases(role: Path) -> list[dict[str, Any]]:
    """The imports of tasks/main.yml, in order: the role's phases."""
    tasks = _load(role / "tasks" / "main.yml") or []
    return [task for task in tasks if isinstance(task, dict) and any(key in task for key in PHASE_KEYS)]


def _tags(role: Path) -> set[str]:
    return {tag for task in _phases(role) for tag in _list(task.get("tags"))}


def _description(role: Path, info: dict[str, Any], specs: dict[str, Any]) -> list[str]:
    if "main" in specs:
        main = specs["main"]
        paragraphs = _paragraphs(main.get("short_description")) + _paragraphs(main.get("description"))
    else:
        paragraphs = _paragraphs(info.get("description"))
    lines: list[str] = []
    for paragraph in paragraphs:
        if paragraph:
            lines += [*_wrap(paragraph), ""]
    users = _users(role)
    if users:
        lines += [*_wrap("Used in this project by " + ", ".join(users) + "."), ""]
    return lines


def _requirements(role: Path, info: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = ["## Requirements", ""]
    lines.append(f"- Ansible (ansible-core) {info['min_ansible_version']} or later.")
    for platform in info.get("platforms") or []:
        versions = [
            f"{DEBIAN[v]} ({v})" if platform["name"] == "Debian" and v in DEBIAN else str(v)
            for v in platform.get("versions") or []
        ]
        if versions:
            lines.append(f"- {platform['name']} " + " or ".join(versions) + ", the platforms meta/main.yml lists.")
    collections = _collections(role)
    if collections:
        names = ", ".join(f"`{name}`" for name in collections)
        lines.append(f"- Collections: {names} (all in the project's [requirements.yml](../../requirements.yml)).")
    else:
        lines.append("- No collection beyond ansible-core's `ansible.builtin`.")
    imported = _imported_roles(role)
    for name, entries in sorted(imported.items()):
        how = f" (tasks_from {', '.join(f'`{e}`' for e in entries)})" if entries else ""
        lines.append(f"- Imports the role [`{name}`](../{name}/README.md){how}, in this repository.")
    dependencies = meta.get("dependencies") or []
    if dependencies:
        lines.append("- Role dependencies (meta/main.yml): " + ", ".join(f"`{d}`" for d in dependencies) + ".")
    elif not imported:
        lines.append("- No other role.")
    return [*lines, ""]


def _entry_points(specs: dict[str, Any]) -> list[str]:
    if list(specs) == ["main"]:
        return []
    lines = [
        "## Entry points",
        "",
        "| Entry point (`tasks_from`) | What it does |",
        "| --- | --- |",
    ]
    for name, entry in specs.items():
        text = " ".join([entry.get("short_description", ""), *_paragraphs(entry.get("description"))]).strip()
        lines.append(f"| `{name}` | {_cell(markdown(text))} |")
    return [*lines, ""]


def _phases_table(role: Path) -> list[str]:
    phases = _phases(role)
    if not phases:
        return []
    lines = ["## Phases and tags", "", "| Phase | Tasks | Tags |", "| --- | --- | --- |"]
    for task in phases:
        path = next(task[key] for key in PHASE_KEYS if key in task)
        name = str(task.get("name", path))
        if task.get("when"):
            name += " (when `" + " and ".join(_list(task["when"])) + "`)"
        tags = ", ".join(f"`{tag}`" for tag in _list(task.get("tags")))
        lines.append(f"| {_cell(name)} | [tasks/{path}](tasks/{path}) | {tags} |")
    return [*lines, ""]


def _variables(role: Path, specs: dict[str, Any]) -> list[str]:
    several = list(specs) != ["main"]
    what = "parameter, per entry point" if several else "variable"
    checked = "when the role is imported" if several else "before the role changes anything"
    intro = (
        f"Every {what}, with its type, default and description, is declared in "
        "[meta/argument_specs.yml](meta/argument_specs.yml), and Ansible checks the types "
        f"{checked}. [defaults/main.yml](defaults/main.yml) and this table are generated from it "
        "(`scripts/role-docs.py --write`); `scripts/role-docs.py --check` (run by `make lint` and "
        "by tests/role) fails when they are out of step."
    )
    return ["## Role variables", "", *_wrap(intro), "", START, table(role), END, ""]


def _footer(info: dict[str, Any]) -> list[str]:
    license_ = ", ".join(str(part) for part in [info.get("license"), info.get("author")] if part)
    return [
        "## License",
        "",
        f"{license_} ([meta/main.yml](meta/main.yml)).",
        "",
        "---",
        "",
        "Back to [shield-orchestrator's README](../../README.md): what the project is,",
        "the two commands, the architecture, and where to read on.",
    ]


def _stub(role: Path) -> str:
    """The hand-written part of a README that does not exist yet."""
    return "\n".join(
        [
            "## Example playbook",
            "",
            "```yaml",
            f"- name: Apply {role.name}",
            "  hosts: all",
            "  become: true",
            "  roles:",
            f"    - role: {role.name}",
            "```",
        ]
    )


def hand_written(role: Path) -> str:
    """The hand-written part of the role's README (a stub when there is none yet)."""
    readme = role / "README.md"
    if not readme.exists():
        return _stub(role)
    text = readme.read_text()
    if text.count(HAND_START) != 1 or text.count(HAND_END) != 1 or text.index(HAND_START) > text.index(HAND_END):
        raise SystemExit(f"{readme.relative_to(REPO)} needs one {HAND_START} ... {HAND_END} part")
    return text.split(HAND_START, 1)[1].split(HAND_END, 1)[0].strip("\n")


def readme_text(role: Path) -> str:
    meta = _load(role / "meta" / "main.yml") or {}
    info = meta.get("galaxy_info") or {}
    specs = _specs(role)
    comment = (
        "<!-- Generated by scripts/role-docs.py --write from meta/argument_specs.yml, meta/main.yml "
        "and tasks/, but for the hand-written part below: edit those files or that part. -->"
    )
    lines = [f"# {role.name}", "", comment, ""]
    lines += _description(role, info, specs)
    lines += _requirements(role, info, meta)
    lines += _entry_points(specs)
    lines += _phases_table(role)
    lines += [HAND_START, hand_written(role), HAND_END, ""]
    lines += _variables(role, specs)
    lines += _footer(info)
    return "\n".join(lines) + "\n"


YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_problems(role: Path) -> list[str]:
    """The hand-written part: a YAML example that parses and names only what the role declares."""
    readme = role / "README.md"
    if not readme.exists():
        return []
    where = f"{readme.relative_to(REPO)}"
    blocks = YAML_BLOCK.findall(hand_written(role))
    if not blocks:
        return [f"{where}: the hand-written part has no ```yaml example"]
    found = []
    declared = {option.name for option in options(role)} | _tags(role)
    name = re.compile(rf"\b{re.escape(role.name)}_[a-z0-9][a-z0-9_]*\b")
    for block in blocks:
        try:
            yaml.safe_load(block)
        except yaml.YAMLError as error:
            found.append(f"{where}: a ```yaml example does not parse: {error}")
        for unknown in sorted(set(name.findall(block)) - declared):
            found.append(f"{where}: the example names {unknown}, which meta/argument_specs.yml does not declare")
    for collection in _collections(role):
        if collection not in (REPO / "requirements.yml").read_text():
            found.append(f"{role.name}: its tasks use {collection}, which requirements.yml does not list")
    return found


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
    return found + readme_problems(role)


def generated() -> dict[Path, str]:
    """Every generated file and the text it must hold."""
    files: dict[Path, str] = {}
    for role in sorted(path.parent.parent for path in ROLES.glob("*/meta/argument_specs.yml")):
        files[role / "defaults" / "main.yml"] = defaults_text(role)
        files[role / "README.md"] = readme_text(role)
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
        hint = "run scripts/role-docs.py --write"
        print(f"out of step with the roles' meta/ and tasks/: {names}; {hint}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
