"""``SSESpanProcessor``: publishes ``run:started`` / ``run:completed`` onto an event hub."""

from __future__ import annotations

import os
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan

from .._attributes import RUN_TYPE
from .._model import Run
from ..live import Hub
from ._run_processor import RunProcessor, run_project_root

__all__ = ["RUN_COMPLETED", "RUN_STARTED", "SSESpanProcessor"]

RUN_STARTED = "run:started"
RUN_COMPLETED = "run:completed"


class SSESpanProcessor(RunProcessor):
    """Publishes each run to ``hub`` when it starts and when it ends.

    The event data is ``Run.to_dict()`` (the API's JSON). Publishing uses the
    hub's ``publish_nowait``: no I/O and no waiting on clients for the in-process
    hub, a bounded background queue for the Redis one. With ``project_root``
    set, only runs recorded for that project are published.
    """

    def __init__(self, hub: Hub, project_root: str | os.PathLike[str] | None = None) -> None:
        self.hub = hub
        self.project_root = (
            None if project_root is None else str(Path(project_root).expanduser().resolve()))

    def accepts(self, span: ReadableSpan) -> bool:
        """Runs of ``project_root`` (all runs when it is None); never child spans."""
        attrs = span.attributes or {}
        if RUN_TYPE not in attrs:
            return False
        return self.project_root is None or run_project_root(span) == self.project_root

    def on_run_start(self, run: Run) -> None:
        self.hub.publish_nowait(RUN_STARTED, run.to_dict())

    def on_run_end(self, run: Run) -> None:
        self.hub.publish_nowait(RUN_COMPLETED, run.to_dict())
