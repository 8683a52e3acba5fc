"""Fault injection into the group commit: TEST-ONLY.

The kill tests (tests/service/test_commit_kills.py) start the service with
`SHIELD_TEST_COMMIT_KILL_AT=<step>`; the processor hands the value to the
group commit, which SIGKILLs its own process when its commit reaches that
step, after logging one line. The test then starts the service again without
the variable and checks that recovery left a consistent graph. Nothing else
sets the variable: a deployment never has it (the role does not know it).

The steps, in the order a commit passes them (journal.py):
`links` (every file to rewrite hard-linked to `<file>.shield-prev`),
`journal` (the undo journal written), `flush:<k>` (the k-th storage file
written, 1-based), `fsync` (the written files synced), `commit-point` (the
journal removed: the commit is done), `cleanup` (the links removed). The
fault fires once, the first time a commit reaches its step (a `flush:<k>`
whose commit writes fewer than k files waits for a commit that writes k).
"""

from __future__ import annotations

import logging
import os
import re
import signal

log = logging.getLogger("shield_orchestrator.lightrag")

KILL_AT_ENV = "SHIELD_TEST_COMMIT_KILL_AT"
STEPS = ("links", "journal", "fsync", "commit-point", "cleanup")
FLUSH_STEP = re.compile(r"flush:[1-9][0-9]*")


def check_step(step: str) -> str:
    """The step, or ValueError naming the steps there are."""
    if step in STEPS or FLUSH_STEP.fullmatch(step):
        return step
    raise ValueError(f"{KILL_AT_ENV}={step!r}: not a commit step (one of {', '.join(STEPS)}, flush:<k>)")


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class CommitFault:
    """The step a commit's process dies at (TEST-ONLY; None: never).

    Owns the step and what it does there (`action`: SIGKILL of the process; a
    unit test puts a raise in its place). Guarantees: `reached(step)` runs the
    action once, the first time the step named is reached, after one log line;
    any other step, or no step named, does nothing."""

    def __init__(self, at: str | None) -> None:
        self.at = check_step(at) if at else None
        self.action = kill_self

    def reached(self, step: str) -> None:
        if self.at is None or step != self.at:
            return
        self.at = None
        log.warning("%s=%s: the commit reached %s, killing the process (a test's fault)", KILL_AT_ENV, step, step)
        self.action()
