"""Every processor the project plugs into the worker pool speaks the pool's
ChunkProcessor interface as it is now (the tests and the bench are not
type-checked: a method left with an old signature would only fail at run time)."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

import pytest
from shield_orchestrator.lightrag.processor import LightRAGProcessor
from shield_orchestrator.workers.processor import ChunkProcessor

from tests.support.inprocess import ScriptedProcessor

REPO = Path(__file__).resolve().parents[2]


def _noop_processor() -> type:
    spec = importlib.util.spec_from_file_location("bench_noop_service", REPO / "bench" / "noop_service.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    noop: type = module.NoopProcessor
    return noop


def _parameters(method: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(method).parameters.values()]


PROCESSORS = [LightRAGProcessor, ScriptedProcessor, _noop_processor()]


@pytest.mark.parametrize("processor", PROCESSORS, ids=lambda p: p.__name__)
def test_the_processor_has_every_method_of_the_interface_with_its_parameters(processor: type) -> None:
    for name in ("start", "stop", "process_batch", "check"):
        assert inspect.iscoroutinefunction(getattr(processor, name)), (processor.__name__, name)
        assert _parameters(getattr(processor, name)) == _parameters(getattr(ChunkProcessor, name)), (
            processor.__name__,
            name,
        )
