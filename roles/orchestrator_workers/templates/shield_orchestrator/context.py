"""What the API's routers need, handed to the app once and read back per request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, FastAPI, Request

from .database import JobHistory
from .dead_letters import DeadLetters
from .event_bus import EventHub, EventPublisher
from .health import HealthService
from .intake import JobIntake
from .job_tracker import JobTracker
from .liveness import Heartbeats
from .metrics import Metrics
from .settings import Settings
from .stream import IngestionStream
from .verify import JobVerifier
from .worker_pool import RateMeter


@dataclass(frozen=True)
class AppContext:
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

    def attach(self, app: FastAPI) -> None:
        app.state.context = self


def get_context(request: Request) -> AppContext:
    return cast(AppContext, request.app.state.context)


Context = Annotated[AppContext, Depends(get_context)]
