"""Calls to the external endpoints (the LLM, the embeddings) that take too long.

A real LLM answers in seconds; a call that hangs (an overloaded endpoint, a
dropped connection the client waits out, the SDK's retries) can wait up to its
timeout several times over. The watch keeps every call in flight with its start:
one that has waited longer than the stall threshold is logged once (the
endpoint, its address, the wait), counted, and shown in /health/detailed and in
the gauges until it returns, so a stall is never silent for minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..metrics import Metrics

log = logging.getLogger("shield_orchestrator.endpoints")


@dataclass
class _Call:
    endpoint: str
    started: float
    number: int
    stalled: bool = False


@dataclass
class _Endpoint:
    address: str
    calls: dict[int, _Call] = field(default_factory=dict)
    stalled_total: int = 0


class CallWatch:
    """Owns the record of every call in flight to each endpoint. Guarantees that a
    call waiting past `threshold` seconds is logged exactly once, counted in
    shield_endpoint_stalled_calls_total, and held in the stalled gauge and the
    report until it returns (answered, failed or cancelled)."""

    def __init__(self, threshold: float, addresses: dict[str, str], metrics: Metrics | None = None) -> None:
        self.threshold = threshold
        self._endpoints = {name: _Endpoint(address) for name, address in addresses.items()}
        self._metrics = metrics
        self._numbers = itertools.count(1)
        for name in self._endpoints:
            if metrics is not None:
                metrics.endpoint_calls_in_flight.labels(name).set(0)
                metrics.endpoint_calls_stalled.labels(name).set(0)
                metrics.endpoint_stalled_calls.labels(name)

    @contextmanager
    def track(self, endpoint: str) -> Iterator[None]:
        """Hold one call to `endpoint` (a name given at construction) while the block runs."""
        state = self._endpoints[endpoint]
        call = _Call(endpoint, time.monotonic(), next(self._numbers))
        state.calls[call.number] = call
        self._gauge("endpoint_calls_in_flight", endpoint, +1)
        timer = asyncio.get_running_loop().call_later(self.threshold, self._stalled, call)
        try:
            yield
        finally:
            timer.cancel()
            del state.calls[call.number]
            self._gauge("endpoint_calls_in_flight", endpoint, -1)
            if call.stalled:
                self._gauge("endpoint_calls_stalled", endpoint, -1)
                log.info(
                    "%s call returned after %.1fs (it had stalled) endpoint=%s",
                    endpoint,
                    time.monotonic() - call.started,
                    state.address,
                )

    def _stalled(self, call: _Call) -> None:
        state = self._endpoints[call.endpoint]
        if call.number not in state.calls:
            return
        call.stalled = True
        state.stalled_total += 1
        self._gauge("endpoint_calls_stalled", call.endpoint, +1)
        if self._metrics is not None:
            self._metrics.endpoint_stalled_calls.labels(call.endpoint).inc()
        log.warning(
            "%s call has waited %.0fs, over the %gs stall threshold, and is still waiting endpoint=%s "
            "in_flight=%d (orchestrator_workers_llm_stall_seconds)",
            call.endpoint,
            time.monotonic() - call.started,
            self.threshold,
            state.address,
            len(state.calls),
        )

    def _gauge(self, name: str, endpoint: str, delta: int) -> None:
        if self._metrics is not None:
            getattr(self._metrics, name).labels(endpoint).inc(delta)

    def report(self) -> dict[str, Any]:
        """Per endpoint: calls in flight, how many of them stalled, the oldest's wait,
        stalls since start; and the threshold."""
        now = time.monotonic()
        endpoints: dict[str, Any] = {}
        for name, state in self._endpoints.items():
            calls = list(state.calls.values())
            endpoints[name] = {
                "address": state.address,
                "in_flight": len(calls),
                "stalled_now": sum(1 for call in calls if call.stalled),
                "oldest_wait_seconds": round(max((now - call.started for call in calls), default=0.0), 1),
                "stalled_total": state.stalled_total,
            }
        return {"stall_threshold_seconds": self.threshold, "endpoints": endpoints}
