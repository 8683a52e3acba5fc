"""A kill -9 at every step of the group commit of the file storages
(lightrag/commit/), in the real service: started with the test-only
SHIELD_TEST_COMMIT_KILL_AT=<step>, it SIGKILLs itself when its first commit
that reaches the step does; started again without it, it recovers the
workspace (the undo journal rolled back, or the links of a commit past its
commit point removed) before LightRAG opens it, and the job completes: the
whole graph is consistent (GET /graph/verify) and every chunk of the job is
found (GET /jobs/{id}/verify). What the kill left on disk is also recovered,
on a copy, by the test itself: the files are then exactly those before the
job (a commit cut short) or those the commit wrote (past its commit point).

One service and one state directory serve every step, one after the other
(the test before has left it running, idle: a kill -9 then interrupts no
commit): a warm-up job first, so every step rewrites existing files.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from shield_orchestrator.lightrag.commit.journal import recover
from shield_orchestrator.lightrag.llm.cache import CACHE_FILE

from tests.support.helpers import ingest, make_chunks, wait_job
from tests.support.service import ServiceProcess

KILL_AT = "SHIELD_TEST_COMMIT_KILL_AT"
JOURNAL = "shield-commit.journal"
CHUNKS = 6
# A job's commit writes 11 files: 6 key-value stores, 3 vector stores, the
# graph, the doc statuses last (the LLM cache is off).
STEPS = ["links", "journal", "flush:1", "flush:6", "flush:11", "fsync", "commit-point", "cleanup"]
ROLLED_BACK = {"journal", "flush:1", "flush:6", "flush:11", "fsync"}  # a journal was left: rolled back
LINKS_LEFT = {"links", "commit-point"}  # links without a journal: removed


@pytest.fixture(scope="module")
def svc(module_service_factory: Callable[..., ServiceProcess]) -> Iterator[ServiceProcess]:
    service = module_service_factory("commit-kills", batch_size=CHUNKS)
    job = wait_job(service.client(), ingest(service.client(), make_chunks(2, prefix="warm-up"))["job_id"])
    assert job["status"] == "completed", job
    yield service


def lightrag_dir(svc: ServiceProcess) -> Path:
    return Path(svc.env["ORCHESTRATOR_STATE_DIR"]) / "lightrag"


def log_since(svc: ServiceProcess, offset: int) -> str:
    return svc.log_text()[offset:]


def storage_files(folder: Path) -> dict[str, bytes]:
    """LightRAG's files under `folder`, by relative path (not the journal, the
    links, LightRAG's temporary files, the storage probe, or the LLM answer cache:
    a SQLite file written as answers arrive, outside the group commit)."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.name != JOURNAL
        and not path.name.endswith(".shield-prev")
        and ".tmp." not in path.name
        and not path.name.startswith(".shield-storage-probe")
        and not path.name.startswith(CACHE_FILE)
    }


def recovered_copy(folder: Path, copy: Path) -> dict[str, bytes]:
    """The files as recover() leaves them, run on a copy of `folder` (a link copied
    as a file of its own puts back the same bytes)."""
    shutil.copytree(folder, copy)
    recover(str(copy))
    return storage_files(copy)


@pytest.mark.parametrize("step", STEPS)
def test_a_kill_at_a_commit_step_is_recovered_and_the_job_completes_whole(
    svc: ServiceProcess, step: str, tmp_path: Path
) -> None:
    if svc.proc is not None and svc.proc.alive():
        svc.kill()
    offset = len(svc.log_text())
    svc.env[KILL_AT] = step
    svc.start()
    before = storage_files(lightrag_dir(svc))  # idle: what the last commit wrote
    index = STEPS.index(step)
    job_id = ingest(svc.client(), make_chunks(CHUNKS, offset=CHUNKS * index, prefix=f"kill-{index}"))["job_id"]
    assert svc.proc is not None
    assert svc.proc.popen.wait(60) == -9, log_since(svc, offset)[-3000:]
    assert f"{KILL_AT}={step}: the commit reached {step}" in log_since(svc, offset)
    left = sorted(path.name for path in lightrag_dir(svc).rglob("*") if path.name.endswith(".shield-prev"))
    assert (lightrag_dir(svc) / JOURNAL).exists() == (step in ROLLED_BACK)
    assert bool(left) == (step not in {"cleanup"}), left
    killed = storage_files(lightrag_dir(svc))
    recovered = recovered_copy(lightrag_dir(svc), tmp_path / "copy")
    if step in ROLLED_BACK or step == "links":
        assert recovered == before  # all old
    else:
        assert recovered == killed != before  # all new

    del svc.env[KILL_AT]
    offset = len(svc.log_text())
    svc.start()
    client = svc.client()
    job = wait_job(client, job_id, timeout=120)
    assert job["status"] == "completed" and job["chunks_processed"] == CHUNKS, job
    said = log_since(svc, offset)
    if step in ROLLED_BACK:
        assert "LightRAG storage recovery: rolled back the interrupted commit" in said
    elif step in LINKS_LEFT:
        assert "LightRAG storage recovery: removed" in said
    else:
        assert "LightRAG storage recovery" not in said
    if step != "cleanup":  # recovered before LightRAG opened its storages
        assert said.index("LightRAG storage recovery") < said.index("LightRAG storages initialised")
    assert not (lightrag_dir(svc) / JOURNAL).exists()

    graph = client.get("/graph/verify")
    assert graph.status_code == 200, graph.text
    report = graph.json()
    assert report["consistent"] is True and report["problems"] == [], json.dumps(report["problems"])[:2000]
    verified = client.get(f"/jobs/{job_id}/verify").json()
    assert verified["verified"] is True, verified
    assert verified["documents_processed"] == CHUNKS == verified["chunks_total"]
