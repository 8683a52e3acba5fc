"""What code this process runs: the package's version and a hash of its file tree.

The role records the hash of the tree it rendered beside the package
(`shield_orchestrator.sha256`); the process hashes the files it finds at start.
Both are reported (/health/detailed, the `shield_build_info` metric), so an
operator sees whether every host runs the same code and whether a host's files
still are what the role put there. The role installs each version in its own
release directory (`releases/<name>/src/shield_orchestrator`); the release's
name is reported too, so an operator sees which one a host runs after an
upgrade or a rollback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from . import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
RECORD_NAME = "shield_orchestrator.sha256"
RELEASES_DIR_NAME = "releases"
# Files of the tree: what the role renders. Caches are never part of it.
SUFFIXES = (".py", ".lua", ".html", ".js", ".css", "py.typed")
SKIPPED_DIRS = frozenset({"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"})


def tree_files(package_dir: Path) -> list[str]:
    """The tree's files as POSIX paths relative to the package directory, sorted."""
    found = []
    for path in package_dir.rglob("*"):
        relative = path.relative_to(package_dir)
        if path.is_file() and path.name.endswith(SUFFIXES) and not SKIPPED_DIRS.intersection(relative.parts):
            found.append(relative.as_posix())
    return sorted(found)


def tree_sha256(package_dir: Path) -> str:
    """SHA-256 of the lines "<sha1 of the file> <path>\\n", one per file in path order
    (the role computes the same from what it renders: vars/main.yml)."""
    lines = "".join(
        f"{hashlib.sha1((package_dir / name).read_bytes(), usedforsecurity=False).hexdigest()} {name}\n"
        for name in tree_files(package_dir)
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def release_name(package_dir: Path) -> str | None:
    """The release directory's name, for a package at `<...>/releases/<name>/src/<package>`;
    None elsewhere (a checkout, or the layout before releases)."""
    parents = package_dir.parents
    if len(parents) > 2 and parents[2].name == RELEASES_DIR_NAME:
        return parents[1].name
    return None


@dataclass(frozen=True)
class BuildInfo:
    """The version, the hash of the files found at start, the hash the role
    recorded when it rendered them (None when run from a checkout), and the
    release they were installed as (None outside a release directory)."""

    version: str
    tree_sha256: str
    recorded_sha256: str | None
    release: str | None = None

    @property
    def intact(self) -> bool | None:
        """True when the files are those the role rendered; None when nothing was recorded."""
        return None if self.recorded_sha256 is None else self.recorded_sha256 == self.tree_sha256

    def as_dict(self) -> dict[str, str | bool | None]:
        return {
            "version": self.version,
            "tree_sha256": self.tree_sha256,
            "recorded_sha256": self.recorded_sha256,
            "intact": self.intact,
            "release": self.release,
        }


def read_build_info(package_dir: Path = PACKAGE_DIR) -> BuildInfo:
    record = package_dir.parent / RECORD_NAME
    recorded = record.read_text(encoding="utf-8").strip() if record.is_file() else None
    return BuildInfo(__version__, tree_sha256(package_dir), recorded or None, release_name(package_dir))
