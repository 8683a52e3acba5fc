"""The undo journal of a group commit, and the recovery that reads it.

A commit rewrites several files (LightRAG's file storages: a JSON file per
key-value store, the GraphML, a JSON file per vector store). LightRAG writes
each one atomically (a temporary sibling, then `os.replace`) but never
fsyncs, and a process killed between two files leaves the workspace half old,
half new. The journal makes the whole commit atomic, without moving any file
LightRAG writes:

  (a) every file the commit may rewrite that exists is hard-linked to
      `<file>.shield-prev` (the previous version stays reachable: LightRAG
      replaces the directory entry, not the file), the directories synced;
  (b) the journal `shield-commit.journal` (the commit's number, its files,
      which of them existed) is written beside the workspace (temporary file,
      fsync, rename, directory fsync): from here a crash rolls back;
  (c) the storages write their files (LightRAG's own flushes);
  (d) every file written, and the directories, are synced;
  (e) the journal is removed and its directory synced: the COMMIT POINT;
  (f) the `.shield-prev` links are removed.

`recover(working_dir)`, run at start before LightRAG opens its storages, and
after a commit that failed in process: with a journal present, every
`.shield-prev` is put back onto its file, the files that did not exist before
are removed, the journal goes last; with none, stray `.shield-prev` links (a
commit past its commit point) are removed. Either way the files are those of
one commit: all old or all new. Recovery is idempotent: a crash during it is
recovered by running it again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger("shield_orchestrator.lightrag")

JOURNAL = "shield-commit.journal"
PREV = ".shield-prev"


class JournalError(RuntimeError):
    """The journal or a file it names is not as a commit leaves it: recovery refuses to guess."""


@dataclass(frozen=True)
class FileSpec:
    """Where a file storage class of LightRAG keeps its file, and how its flush decides to write it.

    `attribute` names the instance attribute holding the file's path;
    `flagged`: the flush writes only when `storage_updated.value` is True
    (LightRAG's JSON key-value family, where True means "dirty"), else it
    writes at every flush (there, True means "reload from disk": never set it)."""

    attribute: str
    flagged: bool


# LightRAG 1.5.7's file storages (lightrag/kg/*_impl.py); held to the pinned
# version by tests/unit/test_lightrag_contract.py.
FILE_STORAGES = {
    "JsonKVStorage": FileSpec("_file_name", flagged=True),
    "JsonDocStatusStorage": FileSpec("_file_name", flagged=True),
    "NetworkXStorage": FileSpec("_graphml_xml_file", flagged=False),
    "NanoVectorDBStorage": FileSpec("_client_file_name", flagged=False),
}


def file_spec(storage: object) -> FileSpec:
    """The storage's FileSpec, or TypeError for a storage that is not one of LightRAG's file storages."""
    spec = FILE_STORAGES.get(type(storage).__name__)
    if spec is None:
        raise TypeError(f"{type(storage).__name__} is not a LightRAG file storage the group commit knows")
    return spec


def storage_file(storage: object) -> str:
    """The path of the file the storage writes."""
    return str(getattr(storage, file_spec(storage).attribute))


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parents(paths: Iterable[str]) -> list[str]:
    return sorted({os.path.dirname(os.path.abspath(path)) for path in paths})


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def no_fault(_step: str) -> None:
    return None


class UndoJournal:
    """One commit's undo journal (steps a, b, d, e, f above; c is the caller's).

    Owns the commit's list of files, their `.shield-prev` links and the
    journal file under `working_dir`. Guarantees: after `begin` returns, a
    crash (or `recover`) rolls every file back to its state before the
    commit; once `seal` has passed the commit point, every file written is
    durable and the commit stands; `checkpoint(step)` is called at each step
    (the test-only fault, faults.py). Blocking file calls: run it off the
    event loop."""

    def __init__(self, working_dir: str, checkpoint: Callable[[str], None] = no_fault) -> None:
        self.working_dir = os.path.abspath(working_dir)
        self.path = os.path.join(self.working_dir, JOURNAL)
        self._checkpoint = checkpoint
        self._before: dict[str, tuple[int, int] | None] = {}  # file -> its identity before the commit
        self._counted: set[str] = set()

    def begin(self, number: int, files: Sequence[str]) -> None:
        """(a) the links, (b) the journal. A journal left by a commit whose
        rollback failed is rolled back first."""
        if os.path.exists(self.path):
            recover(self.working_dir)
        paths = [os.path.abspath(path) for path in files]
        self._before = {path: _identity(path) for path in paths}
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + PREV)
            if self._before[path] is not None:
                os.link(path, path + PREV)
        for folder in _parents(paths):
            fsync_dir(folder)
        self._checkpoint("links")
        entries = [
            {"path": os.path.relpath(path, self.working_dir), "existed": self._before[path] is not None}
            for path in paths
        ]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump({"commit": number, "files": entries}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.working_dir)
        self._checkpoint("journal")

    def written(self) -> list[str]:
        """The files of the commit written since `begin` (a new file, or another inode)."""
        return [path for path, before in self._before.items() if _identity(path) not in (before, None)]

    def flushed(self) -> None:
        """After a storage's flush: the `flush:<k>` checkpoint for each file it wrote."""
        for path in self.written():
            if path not in self._counted:
                self._counted.add(path)
                self._checkpoint(f"flush:{len(self._counted)}")

    def seal(self) -> None:
        """(d) sync what was written, (e) the commit point, (f) the links removed."""
        written = self.written()
        for path in written:
            fsync_file(path)
        for folder in _parents(written):
            fsync_dir(folder)
        self._checkpoint("fsync")
        os.unlink(self.path)
        fsync_dir(self.working_dir)
        self._checkpoint("commit-point")
        try:
            for path in self._before:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + PREV)
        except OSError as exc:  # the commit stands; recover() removes what is left at the next start
            log.warning("could not remove a .shield-prev link after commit: %s", exc)
        self._checkpoint("cleanup")


def _stray_links(working_dir: str) -> list[str]:
    return sorted(
        os.path.join(folder, name)
        for folder, _dirs, names in os.walk(working_dir)
        for name in names
        if name.endswith(PREV)
    )


def _read_journal(path: str) -> tuple[int, list[tuple[str, bool]]]:
    try:
        with open(path, encoding="utf-8") as source:
            content = json.load(source)
        files = [(str(entry["path"]), bool(entry["existed"])) for entry in content["files"]]
        return int(content["commit"]), files
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JournalError(f"{path} cannot be read ({exc}); the workspace is left as it is") from exc


def _roll_back(working_dir: str, files: list[tuple[str, bool]]) -> tuple[int, int]:
    """Each file back to its state before the commit: (files restored or removed, files unchanged)."""
    changed = unchanged = 0
    paths = []
    for relative, existed in files:
        path = os.path.join(working_dir, relative)
        prev = path + PREV
        paths.append(path)
        if not existed:
            if os.path.exists(path):
                os.unlink(path)
                changed += 1
        elif os.path.exists(prev):
            if os.path.exists(path) and os.path.samefile(prev, path):
                os.unlink(prev)  # never rewritten (rename() between two links of a file does nothing)
                unchanged += 1
            else:
                os.replace(prev, path)
                changed += 1
        elif not os.path.exists(path):
            raise JournalError(f"{path}: neither the file nor its {PREV} link exists")
        else:
            unchanged += 1  # restored by an earlier, interrupted recovery
    for folder in _parents(paths):
        fsync_dir(folder)
    return changed, unchanged


def recover(working_dir: str) -> str | None:
    """Roll back an interrupted commit, or remove what a finished one left.
    A line saying what was done (logged), None when there was nothing to do.
    JournalError when the journal cannot be read or names a file that is gone."""
    if not os.path.isdir(working_dir):
        return None
    working_dir = os.path.abspath(working_dir)
    journal = os.path.join(working_dir, JOURNAL)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal + ".tmp")  # a journal never written whole: its commit had not begun to write
    message = None
    if os.path.exists(journal):
        number, files = _read_journal(journal)
        changed, unchanged = _roll_back(working_dir, files)
        os.unlink(journal)
        fsync_dir(working_dir)
        message = (
            f"rolled back the interrupted commit {number} in {working_dir}: "
            f"{changed} files put back as they were before it, {unchanged} unchanged"
        )
    strays = _stray_links(working_dir)
    for path in strays:
        os.unlink(path)
    if strays and message is None:
        message = (
            f"removed {len(strays)} {PREV} links left without a journal in {working_dir} "
            "(by a commit that had not begun to write, or had passed its commit point)"
        )
    if message is not None:
        log.warning("LightRAG storage recovery: %s", message)
    return message
