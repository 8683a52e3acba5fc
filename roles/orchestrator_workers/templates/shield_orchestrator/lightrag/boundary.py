"""LightRAG at the service's edge: the one version it runs on.

The service patches LightRAG's internals as lightrag-hku 1.5.7 has them: the
round commit swaps each storage's `index_done_callback` (commit.py), the group
flush replaces `_insert_done` (group_flush.py), the feeder resets documents with
`_build_pending_reset_update` (feeder.py), the file vector storages are saved
through a patched `NanoVectorDB.save` (vector_save.py), and PostgreSQL's retry
hook `_before_sleep` is patched against a deadlock (processor.py). Another
version may move any of these, and a patch that no longer bites loses its
guarantee silently; so LIGHTRAG_VERSION is the one version the service starts
on (`require_pinned_lightrag`, before LightRAG is built and patched), and the
role pins the same (a unit test compares them).
"""

from __future__ import annotations

from importlib import metadata

LIGHTRAG_DISTRIBUTION = "lightrag-hku"
LIGHTRAG_VERSION = "1.5.7"


class LightRAGVersionError(RuntimeError):
    """The installed LightRAG is not the version the service is pinned to."""

    def __init__(self, installed: str | None) -> None:
        found = f"{LIGHTRAG_DISTRIBUTION} {installed} is installed" if installed else "LightRAG is not installed"
        super().__init__(
            f"{found}, but this service runs only on {LIGHTRAG_DISTRIBUTION} {LIGHTRAG_VERSION}: it patches "
            f"LightRAG's internals as {LIGHTRAG_VERSION} has them. Install {LIGHTRAG_DISTRIBUTION}=={LIGHTRAG_VERSION} "
            "(the role's orchestrator_workers_pip_requirements and files/constraints.txt pin it)."
        )
        self.installed = installed


def installed_lightrag_version() -> str | None:
    """The installed distribution's version, from its metadata (LightRAG is not imported)."""
    try:
        return metadata.version(LIGHTRAG_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def check_lightrag_version(installed: str | None) -> None:
    """Raise LightRAGVersionError, naming both versions, unless `installed` is the pinned one."""
    if installed != LIGHTRAG_VERSION:
        raise LightRAGVersionError(installed)


def require_pinned_lightrag() -> None:
    """Refuse to go on with any LightRAG but the pinned one (LightRAGVersionError)."""
    check_lightrag_version(installed_lightrag_version())
