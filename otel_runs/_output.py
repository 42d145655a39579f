"""Run output: the lines a run printed or logged, captured, bounded, scrubbed and handed on.

A :class:`RunOutput` belongs to one open run (``run.log``, ``run.output``, the logging
handler and ``run_command`` write to it). Each line gets a number ``n`` (0, 1, ... in the
order written), its time since the run started ``t`` (seconds), its ``stream`` (``out``,
``err``, ``log`` or ``meta``) and, for log records, ``level`` and ``logger``. Lines are
scrubbed like metadata (known secret values and credential patterns), ANSI colour codes
(SGR) are kept and every other control sequence is dropped, so that showing a line never
makes a terminal or a page do anything.

Bounds: a line is at most :data:`MAX_LINE_CHARS`; a run keeps at most ``max_bytes``
(``OTEL_RUNS_OUTPUT_MAX_BYTES``, 1 MiB): the first half and the last half, with one
``meta`` line where the middle was dropped saying how much.

Lines are handed to the sinks (the journal, the live feed, OTLP logs: registered by the
processors with :func:`add_output_sink`) in chunks: at most every :data:`FLUSH_INTERVAL`
seconds, sooner when :data:`FLUSH_LINES` lines or :data:`FLUSH_BYTES` bytes are waiting,
and when the run ends; never one call per line at high rates. Part of the core: it
imports no processor.
"""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from .redaction import scrub_text

__all__ = ["FLUSH_BYTES", "FLUSH_INTERVAL", "FLUSH_LINES", "MAX_LINE_CHARS", "OutputSink",
           "RunOutput", "add_output_sink", "clean_line", "output_max_bytes", "remove_output_sink"]

#: Longest line kept (characters); the rest is cut with a marker.
MAX_LINE_CHARS = 16_384
#: Lines waiting before a chunk goes to the sinks at once.
FLUSH_LINES = 512
#: Bytes waiting before a chunk goes to the sinks at once.
FLUSH_BYTES = 64 * 1024
#: Most time (s) a line waits before it is handed to the sinks.
FLUSH_INTERVAL = 0.1
#: Default of ``OTEL_RUNS_OUTPUT_MAX_BYTES``.
DEFAULT_MAX_BYTES = 1 << 20
#: Lines past this many bytes per run (4 x the cap) go to the live sinks only.
JOURNAL_FACTOR = 4

#: ``sink(run, lines, durable)``: ``run`` is the run's ``OpenRun``; ``durable`` is False for
#: chunks past what a run journals (live delivery only).
OutputSink = Callable[[Any, list[dict[str, Any]], bool], None]
_sinks: list[OutputSink] = []
_sinks_lock = threading.Lock()

# SGR (colour) sequences are kept; any other escape sequence and control character goes.
_ESCAPES = re.compile(r"\x1b\[[0-9;]*m|(\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
                      r"|\x1b[@-Z\\-_]?|[\x00-\x08\x0b-\x1f\x7f\x9b])|([\ud800-\udfff])")


def _drop_controls(match: re.Match[str]) -> str:
    if match.group(2) is not None:  # a lone surrogate (not UTF-8): the replacement character
        return "\ufffd"
    return "" if match.group(1) is not None else match.group(0)


def clean_line(text: str) -> str:
    """One line as it is kept: what a terminal shows after the last carriage return, SGR
    colours kept, other control sequences dropped, secrets scrubbed, length bounded."""
    if "\r" in text:
        text = text.rstrip("\r").rsplit("\r", 1)[-1]
    if len(text) > MAX_LINE_CHARS:
        text = text[:MAX_LINE_CHARS] + f"... [{len(text) - MAX_LINE_CHARS} more characters]"
    if not text.isprintable():
        text = _ESCAPES.sub(_drop_controls, text)
    return scrub_text(text)


def output_max_bytes() -> int:
    """``OTEL_RUNS_OUTPUT_MAX_BYTES`` (default 1 MiB, at least 4 KiB)."""
    raw = os.environ.get("OTEL_RUNS_OUTPUT_MAX_BYTES", "")
    try:
        return max(4096, int(raw)) if raw.strip() else DEFAULT_MAX_BYTES
    except ValueError:
        return DEFAULT_MAX_BYTES


def add_output_sink(sink: OutputSink) -> None:
    """Hand every run's output chunks to ``sink`` too (a processor's hook)."""
    with _sinks_lock:
        if sink not in _sinks:
            _sinks.append(sink)


def remove_output_sink(sink: OutputSink) -> None:
    """Stop handing output to ``sink``."""
    with _sinks_lock:
        if sink in _sinks:
            _sinks.remove(sink)


class RunOutput:
    """The output of one open run (thread-safe). ``run`` is its ``OpenRun``."""

    def __init__(self, run: Any, start_ns: int, max_bytes: int | None = None) -> None:
        self.run = run
        self._start = start_ns / 1e9
        self.max_bytes = output_max_bytes() if max_bytes is None else max_bytes
        self._lock = threading.Lock()
        # Chunks reach the sinks in order; re-entrant: a sink that logs inside the run may
        # make this thread flush again.
        self._send_lock = threading.RLock()
        self._n = 0
        self._head: list[dict[str, Any]] = []
        self._head_bytes = 0
        self._tail: deque[dict[str, Any]] = deque()
        self._tail_bytes = 0
        self._dropped = 0
        self._dropped_bytes = 0
        self._first_dropped = -1
        self._unsent: list[dict[str, Any]] = []
        self._unsent_bytes = 0
        self._journaled = 0
        self._partial: dict[str, str] = {}
        self._dirty = False  # handed to the flusher, not flushed since
        self.closed = False

    @property
    def lines_written(self) -> int:
        """How many lines the run wrote (dropped ones included)."""
        return self._n

    def write(self, stream: str, text: str, *, level: str | None = None,
              logger: str | None = None, partial: bool = False) -> None:
        """Add the lines of ``text``. With ``partial``, a last line without a newline waits
        for the rest (a file's ``write``); otherwise it is a line of its own."""
        if self.closed:
            return
        t = round(time.time() - self._start, 3)
        if partial:
            with self._lock:
                text = self._partial.pop(stream, "") + text
                if not text.endswith("\n"):
                    text, _, rest = text.rpartition("\n")
                    if rest:
                        self._partial[stream] = rest
                    if not text:
                        return
        if text.endswith("\n"):
            text = text[:-1]
        # Cleaned (scrubbed) before the lock: other threads of the run do not wait for it.
        cleaned = [clean_line(raw) for raw in (text.split("\n") if "\n" in text else (text,))]
        with self._lock:
            unsent = self._unsent
            added = 0
            n = self._n
            for clean in cleaned:
                line: dict[str, Any] = {"n": n, "t": t, "stream": stream, "text": clean}
                if level is not None:
                    line["level"] = level
                    line["logger"] = logger or ""
                n += 1
                size = len(clean) + 24
                self._keep(line, size)
                unsent.append(line)
                added += size
            self._n = n
            self._unsent_bytes += added
            flush = len(unsent) >= FLUSH_LINES or self._unsent_bytes >= FLUSH_BYTES
            wake = not self._dirty and not flush
            self._dirty = True
        if flush:
            self.flush()
        elif wake:
            _flusher.dirty(self)

    def _keep(self, line: dict[str, Any], size: int) -> None:
        half = self.max_bytes >> 1
        if not self._tail and self._head_bytes + size <= half:
            self._head.append(line)
            self._head_bytes += size
            return
        tail = self._tail
        tail.append(line)
        self._tail_bytes += size
        while self._tail_bytes > half and len(tail) > 1:
            gone = tail.popleft()
            gone_size = len(gone["text"]) + 24
            self._tail_bytes -= gone_size
            if self._first_dropped < 0:
                self._first_dropped = gone["n"]
            self._dropped += 1
            self._dropped_bytes += gone_size

    def flush(self) -> None:
        """Hand the waiting lines to the sinks now."""
        with self._send_lock:
            with self._lock:
                chunk, self._unsent, self._unsent_bytes = self._unsent, [], 0
                self._dirty = False
            if not chunk:
                return
            size = sum(len(line["text"]) + 24 for line in chunk)
            durable = self._journaled + size <= self.max_bytes * JOURNAL_FACTOR
            if durable:
                self._journaled += size
            with _sinks_lock:
                sinks = list(_sinks)
            for sink in sinks:
                try:
                    sink(self.run, chunk, durable)
                except Exception:  # noqa: BLE001 - a sink never breaks the run
                    pass

    def close(self) -> list[dict[str, Any]]:
        """The run ended: send what waits (a last partial line too) and return the lines
        kept (head, the ``meta`` marker if any were dropped, tail)."""
        with self._lock:
            rest = [(s, p) for s, p in self._partial.items() if p]
            self._partial.clear()
        for stream, text in rest:
            self.write(stream, text)
        self.closed = True
        self.flush()
        return self.kept()

    def kept(self) -> list[dict[str, Any]]:
        """The lines kept so far, with the marker where lines were dropped."""
        with self._lock:
            lines = list(self._head)
            if self._dropped:
                lines.append({"n": self._first_dropped, "t": lines[-1]["t"] if lines else 0.0,
                              "stream": "meta",
                              "text": f"[otel-runs: {self._dropped} lines ({self._dropped_bytes} "
                                      f"bytes) dropped here: a run keeps its first and last "
                                      f"{self.max_bytes // 2} bytes of output]"})
            lines.extend(self._tail)
        return lines

    @property
    def dropped(self) -> int:
        """Lines dropped from the middle so far."""
        return self._dropped


class _Flusher:
    """One thread per process flushing outputs with waiting lines every FLUSH_INTERVAL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirty: weakref.WeakSet[RunOutput] = weakref.WeakSet()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def dirty(self, output: RunOutput) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: a thread of its own
                self._pid, self._thread = os.getpid(), None
            self._dirty.add(output)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="otel-runs-output")
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(FLUSH_INTERVAL)
            with self._lock:
                self._wake.clear()
                todo = list(self._dirty)
                self._dirty = weakref.WeakSet()
            for output in todo:
                output.flush()


_flusher = _Flusher()
