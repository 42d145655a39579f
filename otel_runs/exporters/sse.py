"""``SSESpanProcessor``: publishes ``run:started`` / ``run:completed`` onto an event hub."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, Span

from .._attributes import RUN_TYPE
from .._model import Run
from .._open_runs import OpenRun
from .._output import add_output_sink, remove_output_sink
from .._output_lines import lines_json
from ..live import Hub
from ._run_processor import RunProcessor, run_project_root

__all__ = ["RUN_COMPLETED", "RUN_OUTPUT", "RUN_STARTED", "SSESpanProcessor"]

RUN_STARTED = "run:started"
RUN_COMPLETED = "run:completed"
#: A chunk of a running run's output: ``{"run_id": ..., "lines": [...]}``.
RUN_OUTPUT = "run:output"


class SSESpanProcessor(RunProcessor):
    """Publishes each run to ``hub`` when it starts and when it ends.

    The event data is ``Run.to_dict()`` (the API's JSON), as the text the open run
    encoded once for every consumer (the journal line holds the same text). Publishing
    never waits on clients (the hub's ``publish_json``). On the feed file, ``run:started``
    and ``run:output`` join the next append (``publish_later``, within 20 ms; the output's
    JSON is made then), and so does ``run:completed`` while no stream of this process is
    open (``publish_soon``): a short run is one append, off the request path. With
    ``project_root`` set, only runs recorded for that project are published. Chunks of a
    run's output are published as ``run:output`` while it runs.
    """

    def __init__(self, hub: Hub, project_root: str | os.PathLike[str] | None = None) -> None:
        self.hub = hub
        # On the feed file, written with the next append (one write for a short run's
        # run:started, last run:output chunk and run:completed), within 20 ms; run:completed
        # at once while a stream of this process is open. Other hubs publish at once.
        self._publish_later = getattr(hub, "publish_later", None)
        self._publish_start = self._publish_later or hub.publish_json
        self._publish_end = getattr(hub, "publish_soon", hub.publish_json)
        self.project_root = (
            None if project_root is None else str(Path(project_root).expanduser().resolve()))
        add_output_sink(self._publish_output)

    def _publish_output(self, entry: OpenRun, lines: Sequence[dict[str, Any]], durable: bool) -> None:
        if self.project_root is None or entry.root == self.project_root:
            run_id = entry.run_id  # (no character of a run id is escaped in JSON: _ids)

            def text() -> str:
                return f'{{"run_id":"{run_id}","lines":{lines_json(lines)}}}'

            if self._publish_later is None:
                self.hub.publish_json(RUN_OUTPUT, text())
            else:  # (the JSON is made when the event is written)
                self._publish_later(RUN_OUTPUT, text, getattr(lines, "size", None)
                                    or sum(len(line["text"]) + 48 for line in lines))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Write the events the hub holds for a later append (a feed file's) now."""
        flush = getattr(self.hub, "flush_held", None)
        if flush is not None:
            flush()
        return True

    def shutdown(self) -> None:
        """Stop publishing output."""
        remove_output_sink(self._publish_output)

    def accepts(self, span: ReadableSpan) -> bool:
        """Runs of ``project_root`` (all runs when it is None); never child spans."""
        attrs = span.attributes or {}
        if RUN_TYPE not in attrs:
            return False
        return self.project_root is None or run_project_root(span) == self.project_root

    def _only_root(self) -> str | None:
        return self.project_root if type(self).accepts is SSESpanProcessor.accepts else None

    def _mine(self, entry: OpenRun, span: ReadableSpan) -> bool:
        if type(self).accepts is not SSESpanProcessor.accepts:  # a subclass decides
            return self._accepts(span)
        return self.project_root is None or entry.root == self.project_root

    def _run_started(self, entry: OpenRun, span: Span) -> None:
        if not self._mine(entry, span):
            return
        try:
            text = entry.start_json()
            if text is None:
                self.hub.publish_nowait(RUN_STARTED, entry.start.to_dict())
                return
            self._publish_start(RUN_STARTED, text)  # (the journal has the start already)
        except Exception:
            self._hook_failed("on_run_start")

    def _run_ended(self, entry: OpenRun, span: ReadableSpan) -> None:
        if not self._mine(entry, span):
            return
        try:
            text = entry.end_json(span)
            if text is None:
                self.hub.publish_nowait(RUN_COMPLETED, entry.end_run(span).to_dict())
            else:
                self._publish_end(RUN_COMPLETED, text)
        except Exception:
            self._hook_failed("on_run_end")

    def on_run_start(self, run: Run) -> None:
        self.hub.publish_nowait(RUN_STARTED, run.to_dict())

    def on_run_end(self, run: Run) -> None:
        self.hub.publish_nowait(RUN_COMPLETED, run.to_dict())
