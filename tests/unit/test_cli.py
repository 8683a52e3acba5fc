"""The CLI reads the unit's environment file itself: no secret on a command line."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import shield_orchestrator
from shield_orchestrator import cli
from shield_orchestrator.cli import read_env_file


def test_reads_what_the_role_renders() -> None:
    text = (
        "# Secrets of shield-orchestrator\n"
        'ORCHESTRATOR_API_TOKEN="a\\"b\\\\c\\$d\\`e"\n'
        'ORCHESTRATOR_REDIS_PASSWORD=""\n'
        "\n"
        "ORCHESTRATOR_POSTGRES_PASSWORD='single $quoted'\n"
        'ORCHESTRATOR_LLM_API_KEY="line1\\nline2"\n'
        "PLAIN=value with spaces\n"
    )
    assert read_env_file(text) == {
        "ORCHESTRATOR_API_TOKEN": 'a"b\\c$d`e',
        "ORCHESTRATOR_REDIS_PASSWORD": "",
        "ORCHESTRATOR_POSTGRES_PASSWORD": "single $quoted",
        "ORCHESTRATOR_LLM_API_KEY": "line1\nline2",
        "PLAIN": "value with spaces",
    }


@pytest.mark.parametrize("line", ["no equals sign", "1BAD=x", "=x"])
def test_refuses_other_lines_naming_the_line(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        read_env_file(f"# ok\n{line}\n")


def test_the_console_script_is_the_cli_and_reports_the_package_version() -> None:
    """pyproject.toml's entry point (installed into the service venv) runs cli.main."""
    (script,) = entry_points(group="console_scripts", name="shield-orchestrator")
    assert script.load() is cli.main
    binary = Path(sys.executable).parent / "shield-orchestrator"
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"shield_orchestrator {shield_orchestrator.__version__}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counted_logger(clock: Clock, every: float = 60) -> tuple[logging.Logger, list[str], cli.CountedSuppression]:
    """A logger of its own with the filter, as configure_logging puts it on LightRAG's, and what it lets through."""
    logger = logging.getLogger(f"test.counted.{id(clock)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    counted = cli.CountedSuppression(cli.LIGHTRAG_STATUS_WARNING, every=every, clock=clock)
    logger.addFilter(counted)
    return logger, seen, counted


def test_lightrag_status_warnings_pass_once_then_are_counted_once_per_minute() -> None:
    clock = Clock()
    logger, seen, counted = counted_logger(clock)

    def warn(ids: list[str]) -> None:
        """As LightRAG 1.5.7 logs it (an f-string, no args)."""
        logger.warning(f"Document statuses not found for the following IDs: {ids}")

    warn(["doc-1"])
    assert seen == [
        "Document statuses not found for the following IDs: ['doc-1'] "
        "(the next ones are counted and reported once per 60 s at most)"
    ]
    for second in range(59):
        clock.now += 1
        warn([f"doc-{second}"])
    logger.warning("Document statuses: the real one %s", "stays")
    logger.warning("LLM call failed: 500")
    assert seen[1:] == ["Document statuses: the real one stays", "LLM call failed: 500"], "other warnings pass"
    clock.now += 1.5  # 60.5 s after the first
    warn(["doc-60"])
    assert seen[3:] == [f"suppressed 60 '{cli.LIGHTRAG_STATUS_WARNING}' warnings in the last 60 s"]
    assert counted.pending == 0 and counted.total == 60
    clock.now += 10
    warn(["doc-61"])
    clock.now += 200  # a quiet spell: the next one reports what came since the last report
    warn(["doc-62"])
    assert seen[4:] == [f"suppressed 2 '{cli.LIGHTRAG_STATUS_WARNING}' warnings in the last 210 s"]
    assert counted.total == 62


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """configure_logging changes the process's loggers: put them back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    others = {name: logging.getLogger(name) for name in (*cli.NOISY_LOGGERS, "lightrag")}
    saved = {name: (logger.level, logger.filters[:]) for name, logger in others.items()}
    yield
    root.handlers[:], root.level = handlers, level
    for name, logger in others.items():
        logger.level, logger.filters[:] = saved[name]


@pytest.mark.usefixtures("restored_logging")
def test_configure_logging_puts_the_count_on_lightrags_logger_once() -> None:
    lightrag_log = logging.getLogger("lightrag")
    lightrag_log.filters[:] = [f for f in lightrag_log.filters if not isinstance(f, cli.CountedSuppression)]
    cli.configure_logging("INFO")
    cli.configure_logging("WARNING")
    [counted] = [f for f in lightrag_log.filters if isinstance(f, cli.CountedSuppression)]
    assert counted.prefix == cli.LIGHTRAG_STATUS_WARNING and counted.every == cli.SUPPRESSED_REPORT_SECONDS
