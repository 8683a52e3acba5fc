"""What the API's routers need, handed to the app once and read back per request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, FastAPI, Request

from ..events.bus import EventHub, EventPublisher
from ..health import HealthService
from ..jobs.dead_letters import DeadLetters
from ..jobs.history import JobHistory
from ..jobs.intake import JobIntake
from ..jobs.tracker import JobTracker
from ..lightrag.llm.slots import LLMSlots
from ..lightrag.verify import JobVerifier
from ..metrics import Metrics, RateMeter
from ..queue.liveness import Heartbeats
from ..queue.stream import IngestionStream
from ..settings import Settings


@dataclass(frozen=True)
class AppContext:
    """Everything the routers use, built once by Service.build and attached to the
    app (routes read it back through `Context`). Frozen: no request swaps a component;
    `verifier` is None when the processor cannot read the graph back; `llm` holds the
    chat calls' slots (the processor's, whichever it is)."""

    settings: Settings
    intake: JobIntake
    tracker: JobTracker
    history: JobHistory
    stream: IngestionStream
    hub: EventHub
    health: HealthService
    metrics: Metrics
    rate: RateMeter
    verifier: JobVerifier | None
    publisher: EventPublisher
    dead_letters: DeadLetters
    heartbeats: Heartbeats
    on_job_change: Callable[[], None]
    llm: LLMSlots

    def attach(self, app: FastAPI) -> None:
        app.state.context = self


def get_context(request: Request) -> AppContext:
    return cast(AppContext, request.app.state.context)


Context = Annotated[AppContext, Depends(get_context)]
