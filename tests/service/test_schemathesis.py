"""Schemathesis, every check, against the service the tests start: the OpenAPI
document says what the service does. /events/stream is left out (a stream that
does not end is not a response Schemathesis can check)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.service import API_TOKEN, ServiceProcess

MAX_EXAMPLES = 25
SEED = 12
# Every check with its default statuses: a field over its limit (maxItems,
# maxLength) is a 422 like any invalid field; 413 is the body limit's alone.
CONFIG = ""  # a file of its own, empty: no schemathesis.toml found elsewhere is read


@pytest.fixture(scope="module")
def contract_service(module_service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    # The role's default limits: the bodies a valid request may send stay under them.
    return module_service_factory("contract")


def test_schemathesis_finds_nothing(contract_service: ServiceProcess, tmp_path: Path) -> None:
    spec = httpx.get(
        f"{contract_service.url}/openapi.json", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10
    )
    assert spec.status_code == 200
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    report = tmp_path / "report.json"
    st = Path(sys.executable).with_name("st")
    run = subprocess.run(
        [
            str(st),
            "--config-file",
            str(config),
            "run",
            f"{contract_service.url}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {API_TOKEN}",
            "--exclude-path",
            "/events/stream",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--report",
            "json",
            "--report-json-path",
            str(report),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # its own cache directory (.schemathesis/) goes there
        timeout=600,
        check=False,
    )
    summary = run.stdout[-6000:]
    print(summary)
    assert run.returncode == 0, summary + run.stderr[-2000:]
    result = json.loads(report.read_text())
    print(f"schemathesis: {result['test_cases']} on {result['operations']['tested']} operations")
    assert result["complete"] and result["failures"] == [] and result["errors"] == []
    operations = sum(len(methods) for path, methods in spec.json()["paths"].items() if path != "/events/stream")
    assert operations >= 13 and result["operations"]["tested"] == operations  # every one but /events/stream
    assert result["test_cases"]["generated"] > 1000 and result["test_cases"]["with_failures"] == 0
