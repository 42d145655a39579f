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
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ._output_flusher import OutputFlusher
from ._output_lines import (
    MAX_LINE_CHARS,
    LineJoiner,
    OutputChunk,
    clean_controls,
    clean_line,
    hide_private_keys,
    lines_json,
)
from ._output_tail import OutputTail
from .redaction._text import scrub_texts

__all__ = ["FLUSH_BYTES", "FLUSH_INTERVAL", "FLUSH_LINES", "MAX_LINE_CHARS", "OutputChunk",
           "OutputSink", "RunOutput", "add_output_sink", "clean_controls", "clean_line",
           "lines_json", "output_max_bytes", "remove_output_sink"]

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
#: The smallest cap's half and journal allowance: output within them needs no setting read.
_MIN_HALF = 2048
_MIN_JOURNALED = 4096 * JOURNAL_FACTOR
#: What a line costs against the cap beyond its text: about its output.log line's number,
#: time and stream.
_LINE_EXTRA = 24

_time_ns = time.time_ns

#: ``sink(run, lines, durable)``: ``run`` is the run's ``OpenRun``; ``durable`` is False for
#: chunks past what a run journals (live delivery only).
OutputSink = Callable[[Any, OutputChunk, bool], None]
_sinks: list[OutputSink] = []
_sinks_lock = threading.Lock()
#: ``_sinks`` as a tuple, replaced (under the lock) on every change: read without it.
_sink_tuple: tuple[OutputSink, ...] = ()

def output_max_bytes() -> int:
    """``OTEL_RUNS_OUTPUT_MAX_BYTES`` (default 1 MiB, at least 4 KiB)."""
    raw = os.environ.get("OTEL_RUNS_OUTPUT_MAX_BYTES", "")
    try:
        return max(4096, int(raw)) if raw.strip() else DEFAULT_MAX_BYTES
    except ValueError:
        return DEFAULT_MAX_BYTES


def add_output_sink(sink: OutputSink) -> None:
    """Hand every run's output chunks to ``sink`` too (a processor's hook)."""
    global _sink_tuple
    with _sinks_lock:
        if sink not in _sinks:
            _sinks.append(sink)
            _sink_tuple = tuple(_sinks)


def remove_output_sink(sink: OutputSink) -> None:
    """Stop handing output to ``sink``."""
    global _sink_tuple
    with _sinks_lock:
        if sink in _sinks:
            _sinks.remove(sink)
            _sink_tuple = tuple(_sinks)


#: A line as written: (``time.time_ns()``, stream, text, level, logger).
_Raw = tuple[int, str, str, "str | None", "str | None"]


class RunOutput:
    """The output of one open run (thread-safe). ``run`` is its ``OpenRun``.

    Writing only queues the raw line (with its time); cleaning, scrubbing, numbering and
    the head/tail bound happen for a whole chunk at once when it is handed to the sinks
    (at most every :data:`FLUSH_INTERVAL` s, sooner when :data:`FLUSH_LINES` lines or
    :data:`FLUSH_BYTES` characters wait), so a line never reaches a sink, the journal or
    :meth:`kept` before it is scrubbed."""

    __slots__ = ("_half", "_head", "_head_bytes", "_in_key", "_journaled", "_kept_at_close",
                 "_lock", "_max_bytes", "_n", "_partial", "_queued", "_raw", "_raw_chars",
                 "_send_lock", "_start_ns", "_tail", "_dirty", "__weakref__", "closed", "run")

    def __init__(self, run: Any, start_ns: int, max_bytes: int | None = None) -> None:
        self.run = run
        self._start_ns = start_ns
        # (the setting is read when the output outgrows the smallest cap: most runs never do)
        self._max_bytes = max_bytes
        self._half = _MIN_HALF if max_bytes is None else max_bytes >> 1
        self._lock = threading.Lock()  # partial lines
        # The chunks (and everything below) in order; re-entrant: a sink that logs inside
        # the run may make this thread flush again.
        self._send_lock = threading.RLock()
        # Lines written, not yet flushed: writers append without a lock (a deque's append
        # and popleft are atomic); a flush takes the lines it counted, oldest first.
        self._raw: deque[_Raw] = deque()
        self._raw_chars = 0  # (about: writers add to it without a lock)
        self._partial: dict[str, LineJoiner] = {}
        self._dirty = False  # handed to the flusher, not flushed since
        self._queued = False  # handed to the flusher at least once
        self.closed = False
        # Under the send lock:
        self._n = 0
        # The head: whole chunks, then the lines of the chunk that filled it.
        self._head: list[Sequence[dict[str, Any]]] = []
        self._head_bytes = 0
        self._tail = OutputTail()  # (the lines dropped from the middle counted there)
        self._journaled = 0
        self._in_key: set[str] = set()  # streams inside a private key block
        self._kept_at_close: Sequence[dict[str, Any]] | None = None

    @property
    def max_bytes(self) -> int:
        """The most output bytes the run keeps (``OTEL_RUNS_OUTPUT_MAX_BYTES``)."""
        if self._max_bytes is None:
            self._max_bytes = output_max_bytes()
            self._half = self._max_bytes >> 1
        return self._max_bytes

    @property
    def lines_written(self) -> int:
        """How many lines the run wrote (dropped ones included)."""
        return self._n + len(self._raw)

    def write(self, stream: str, text: str, *, level: str | None = None,
              logger: str | None = None, partial: bool = False) -> None:
        """Add the lines of ``text``. With ``partial``, a last line without a newline waits
        for the rest (a file's ``write``); otherwise it is a line of its own."""
        if partial or "\n" in text or self.closed:
            self._write_lines(stream, text, level, logger, partial)
            return
        raw = self._raw  # (one line: the common case, kept short)
        raw.append((_time_ns(), stream, text, level, logger))
        chars = self._raw_chars = self._raw_chars + len(text)
        if len(raw) >= FLUSH_LINES or chars >= FLUSH_BYTES:
            self.flush()
        elif not self._dirty:  # (read after the append: see flush)
            self._dirty = self._queued = True
            _flusher.dirty(self)

    def log(self, text: str, stream: str = "out") -> None:
        """``run.log``: :meth:`write` of ``text`` (not str: its ``str()``) to ``stream``,
        ``out`` or ``err`` (a run's handle calls this directly once its output exists)."""
        if type(text) is not str:
            text = str(text)
        if stream != "out" and stream != "err":
            raise ValueError(f"stream must be 'out' or 'err', got {stream!r}")
        if "\n" in text or self.closed:
            self._write_lines(stream, text, None, None, False)
            return
        raw = self._raw  # (write's one-line case again: a call less per line)
        raw.append((_time_ns(), stream, text, None, None))
        chars = self._raw_chars = self._raw_chars + len(text)
        if len(raw) >= FLUSH_LINES or chars >= FLUSH_BYTES:
            self.flush()
        elif not self._dirty:  # (read after the append: see flush)
            self._dirty = self._queued = True
            _flusher.dirty(self)

    def _write_lines(self, stream: str, text: str, level: str | None, logger: str | None,
                     partial: bool) -> None:
        if self.closed:
            return
        t = _time_ns()
        if partial:
            with self._lock:
                joiner = self._partial.get(stream)
                if joiner is None:
                    joiner = self._partial[stream] = LineJoiner()
                parts = joiner.feed(text)
                if not parts:
                    return
                # (queued under the lock: one stream's lines in order; flushed outside it)
                self._raw.extend([(t, stream, part, level, logger) for part in parts])
            self._added(parts)
            return
        self._add(t, stream, (text[:-1] if text.endswith("\n") else text).split("\n"), level,
                  logger)

    def write_lines(self, stream: str, lines: list[str]) -> None:
        """Add ``lines`` (whole lines, without their newlines) to ``stream``."""
        if lines and not self.closed:
            self._add(_time_ns(), stream, lines, None, None)

    def _add(self, t: int, stream: str, parts: list[str], level: str | None,
             logger: str | None) -> None:
        self._raw.extend([(t, stream, part, level, logger) for part in parts])
        self._added(parts)

    def _added(self, parts: list[str]) -> None:
        chars = self._raw_chars = self._raw_chars + sum(map(len, parts))
        if len(self._raw) >= FLUSH_LINES or chars >= FLUSH_BYTES:
            self.flush()
        elif not self._dirty:
            self._dirty = self._queued = True
            _flusher.dirty(self)

    def flush(self) -> None:
        """Hand the waiting lines to the sinks now."""
        with self._send_lock:
            # Cleared before the lines are counted: a writer whose line is not among them
            # sees it cleared after its append and hands this output to the flusher again.
            self._dirty = False
            queue = self._raw
            count = len(queue)
            if not count:
                return
            self._raw_chars = 0
            take = queue.popleft
            raw = [take() for _ in range(count)]
            chunk, size = self._lines(raw)
            journaled = self._journaled + size
            durable = journaled <= _MIN_JOURNALED or journaled <= self.max_bytes * JOURNAL_FACTOR
            if durable:
                self._journaled += size
            for sink in _sink_tuple:
                try:
                    sink(self.run, chunk, durable)
                except Exception:  # noqa: BLE001 - a sink never breaks the run
                    pass

    def _lines(self, raw: list[_Raw]) -> tuple[OutputChunk, int]:
        """The raw lines cleaned, scrubbed, numbered and kept (head/tail): one chunk."""
        times, streams, written, levels, loggers = zip(*raw)  # noqa: B905 - five fields each
        texts = list(written)
        joined = " ".join(texts)
        as_written = True
        if not joined.isprintable() or (len(joined) > MAX_LINE_CHARS
                                        and max(map(len, texts)) > MAX_LINE_CHARS):
            texts = [clean_controls(text) for text in texts]
            as_written = False
        if self._in_key or "-----BEGIN" in joined:
            hide_private_keys(streams, texts, self._in_key)
            as_written = False
        scrubbed = scrub_texts(texts)
        # (the texts as written, the usual case: their lengths are the joined text's)
        chars = len(joined) - len(texts) + 1 if as_written and scrubbed is texts \
            else sum(map(len, scrubbed))
        texts = scrubbed
        first = self._n
        count = len(texts)
        numbers = range(first, first + count)
        self._n = first + count
        # (seconds since the start, to the millisecond, rounded half up; the lines of a
        # chunk mostly share their millisecond)
        base = 500_000 - self._start_ns
        stamp = (min(times) + base) // 1_000_000
        if (max(times) + base) // 1_000_000 == stamp:
            stamps = [stamp / 1000] * count
        else:
            stamps = [(t + base) // 1_000_000 / 1000 for t in times]
        if any(levels):  # log records among them: a level and a logger
            lines: list[dict[str, Any]] = []
            for n, t, stream, text, level, logger in zip(numbers, stamps, streams, texts,
                                                         levels, loggers, strict=True):
                line: dict[str, Any] = {"n": n, "t": t, "stream": stream, "text": text}
                if level is not None:
                    line["level"] = level
                    line["logger"] = logger or ""
                lines.append(line)
            chunk = OutputChunk(lines)
        else:  # (the dicts are made when a sink asks for them; its JSON from these)
            chunk = OutputChunk(columns=(first, stamps, streams, texts))
        size = chunk.size = chars + _LINE_EXTRA * count
        # (past the smallest cap's half the setting is read: _keep then has the real half)
        if not self._tail and (self._head_bytes + size <= self._half or (
                self._max_bytes is None and self._head_bytes + size <= self.max_bytes >> 1)):
            self._head.append(chunk)  # (all of it in the head)
            self._head_bytes += size
        else:
            self._keep(chunk, texts)
        return chunk, size

    def _keep(self, chunk: OutputChunk, texts: list[str]) -> None:
        """Keep the first half of the cap's bytes (head) and the last half (tail)."""
        columns = chunk.columns
        lines: list[Any]
        if columns is not None:  # (tuples, not dicts: most of them are dropped again)
            first = columns[0]
            lines = list(zip(range(first, first + len(texts)), columns[1], columns[2], texts,
                             strict=True))
        else:
            lines = chunk.lines
        sizes = list(map(_LINE_EXTRA.__add__, map(len, texts)))
        half, i, count = self._half, 0, len(lines)
        if not self._tail:
            room = half - self._head_bytes
            while i < count and sizes[i] <= room:
                room -= sizes[i]
                i += 1
            if i:
                head = lines[:i] if i < count else lines
                self._head.append(head if columns is None else [
                    {"n": n, "t": t, "stream": stream, "text": text}
                    for n, t, stream, text in head])
                self._head_bytes = half - room
            if i == count:
                return
        self._tail.add(lines[i:] if i else lines, sizes[i:] if i else sizes, half)

    def close(self) -> Sequence[dict[str, Any]]:
        """The run ended: send what waits (a last partial line too) and return the lines
        kept (head, the ``meta`` marker if any were dropped, tail)."""
        if self._partial:
            with self._lock:
                rest = [(s, j.finish()) for s, j in self._partial.items()]
                self._partial.clear()
            for stream, text in rest:
                if text is not None:
                    self.write(stream, text)
        self.closed = True
        kept = self.kept()  # (which sends what waits)
        self._kept_at_close = kept  # (nothing is added once closed: the end record asks again)
        if self._queued:  # the flusher may hold it: it need not, until its next tick
            _flusher.forget(self)
        return kept

    def kept(self) -> Sequence[dict[str, Any]]:
        """The lines kept so far (waiting ones are sent first), with the marker where
        lines were dropped; the chunk itself when the run's output went in one chunk."""
        if self._kept_at_close is not None:
            return self._kept_at_close
        with self._send_lock:
            self.flush()
            head = self._head
            tail = self._tail
            if len(head) == 1 and not tail and isinstance(head[0], OutputChunk):
                return head[0]
            kept: list[dict[str, Any]] = []
            for part in head:
                kept.extend(part)
            if tail.dropped:  # (what the dropped lines printed, newlines included)
                chars = tail.dropped_bytes - tail.dropped * (_LINE_EXTRA - 1)
                kept.append({"n": tail.first_dropped, "t": kept[-1]["t"] if kept else 0.0,
                             "stream": "meta",
                             "text": f"[otel-runs: {tail.dropped} lines ({chars} characters) "
                                     f"dropped here: a run keeps its first and last "
                                     f"{self.max_bytes // 2} bytes of output]"})
            kept.extend(tail.lines())
        return OutputChunk(kept)

    @property
    def dropped(self) -> int:
        """Lines dropped from the middle so far."""
        return self._tail.dropped


_flusher = OutputFlusher(FLUSH_INTERVAL)
os.register_at_fork(after_in_child=_flusher.after_fork_in_child)
