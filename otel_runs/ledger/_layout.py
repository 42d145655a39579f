"""Where a run lives on the ledger branch, and the one-line index of it in a commit message.

Layout (see docs/ledger-storage.md)::

    ledger/runs/<YYYY>/<MM>/<DD>/<a>/<b>/<c>/<d>/<run_id>/run.json
                                                  .../spans.jsonl   (only when the run has child spans)
                                                  .../output.log    (only when it printed anything)

``YYYY/MM/DD`` is the run's start day (UTC, from the id); ``a/b/c/d`` are the first four hex
digits of ``sha1(run_id)``: 65,536 buckets per day, so a day with 100k runs keeps every tree
small (16 entries above the bucket, ~1.5 runs in it) and a commit rewrites only the trees on the
paths of the runs it adds, whatever the size of the ledger.

Each ledger commit lists the runs it added, one line each, after a title line::

    <run_id> TAB <status> TAB <type> TAB <subtype> TAB <summary (first 200 chars, one line)>

Readers walk the branch history newest first and read these lines (no tree walk) to list runs.
"""

from __future__ import annotations

import hashlib
import re
from calendar import timegm
from typing import Any, NamedTuple

from .._ids import RUN_ID_PATTERN

__all__ = [
    "LEDGER_ROOT",
    "RUN_FILE",
    "OUTPUT_FILE",
    "SPANS_FILE",
    "IndexLine",
    "format_index_line",
    "format_output",
    "parse_index_lines",
    "parse_output",
    "run_dir",
    "run_epoch",
]

LEDGER_ROOT = ("ledger", "runs")
RUN_FILE = "run.json"
SPANS_FILE = "spans.jsonl"
#: The run's output, one line per line: ``<n> TAB <t> TAB <stream> TAB <text>`` (see
#: :func:`format_output` / :func:`parse_output`; only when the run printed anything).
OUTPUT_FILE = "output.log"
#: Hex digits of sha1(run_id) used as bucket directories (one level each).
BUCKET_DIGITS = 4
INDEX_SUMMARY_CHARS = 200

_LINE_RE = re.compile(rf"^({RUN_ID_PATTERN})\t([^\t]*)\t([^\t]*)\t([^\t]*)\t?(.*)$")
_SPACE_RE = re.compile(r"[\s\x00-\x1f\x7f]+")


def run_dir(run_id: str) -> tuple[str, ...]:
    """Path components of the directory holding a (validated) run id."""
    digest = hashlib.sha1(run_id.encode("ascii")).hexdigest()
    return (
        *LEDGER_ROOT,
        run_id[0:4],
        run_id[4:6],
        run_id[6:8],
        *digest[:BUCKET_DIGITS],
        run_id,
    )


def run_path(run_id: str, name: str = RUN_FILE) -> str:
    """``ledger/runs/.../<run_id>/<name>`` as a string."""
    return "/".join((*run_dir(run_id), name))


def run_epoch(run_id: str) -> float:
    """Start time (epoch seconds) encoded in a well-formed run id, without validation."""
    secs = timegm(
        (
            int(run_id[0:4]),
            int(run_id[4:6]),
            int(run_id[6:8]),
            int(run_id[9:11]),
            int(run_id[11:13]),
            int(run_id[13:15]),
            0,
            0,
            0,
        )
    )
    return secs + int(run_id[15:18]) / 1000


def _one_line(value: Any, limit: int) -> str:
    text = _SPACE_RE.sub(" ", str(value or "")).strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


class IndexLine(NamedTuple):
    """What a commit message says about one run it recorded."""

    run_id: str
    status: str
    type: str
    subtype: str
    summary: str
    #: True when ``summary`` is the whole summary (not cut to fit the line).
    summary_complete: bool


def format_index_line(run: dict[str, Any]) -> str:
    """The commit-message line describing a run dict."""
    summary = _SPACE_RE.sub(" ", str(run.get("summary") or "")).strip()
    return "\t".join(
        (
            str(run["run_id"]),
            _one_line(run.get("status"), 40),
            _one_line(run.get("type"), 100),
            _one_line(run.get("subtype"), 200),
            _one_line(summary, INDEX_SUMMARY_CHARS),
        )
    )


def parse_index_lines(message: str) -> list[IndexLine]:
    """The run lines of a ledger commit message (anything else is ignored)."""
    out: list[IndexLine] = []
    for line in message.splitlines():
        m = _LINE_RE.match(line)
        if m:
            summary = m.group(5)
            out.append(
                IndexLine(
                    m.group(1),
                    m.group(2),
                    m.group(3),
                    m.group(4),
                    summary,
                    not summary.endswith("\u2026") or len(summary) < INDEX_SUMMARY_CHARS,
                )
            )
    return out


def _stream_field(line: dict[str, Any]) -> str:
    stream = str(line.get("stream") or "out")
    if stream == "log":
        return f"log:{line.get('level') or ''}:{line.get('logger') or ''}"
    return stream


_PLAIN = ("out", "err", "meta")  # streams written as they are (a tuple: no hashing)


def format_output(lines: list[dict[str, Any]]) -> bytes:
    """``output.log`` for a run's output lines: ``<n> TAB <t> TAB <stream> TAB <text>``,
    where a log line's stream is ``log:<LEVEL>:<logger>`` (text has no newline)."""
    return "".join([f"{int(line['n'])}\t{float(line.get('t') or 0.0):.3f}\t"
                    f"{stream if (stream := line.get('stream')) in _PLAIN else _stream_field(line)}"
                    f"\t{line['text']}\n" for line in lines]).encode("utf-8", "replace")


def parse_output(data: bytes) -> list[dict[str, Any]]:
    """The lines of an ``output.log`` (malformed lines are kept as text of stream ``meta``)."""
    out: list[dict[str, Any]] = []
    for raw in data.decode("utf-8", "replace").split("\n"):
        if not raw:
            continue
        fields = raw.split("\t", 3)
        try:
            n, t, stream, text = int(fields[0]), float(fields[1]), fields[2], fields[3]
        except (IndexError, ValueError):
            out.append({"n": out[-1]["n"] + 1 if out else 0, "t": 0.0, "stream": "meta",
                        "text": raw})
            continue
        line: dict[str, Any] = {"n": n, "t": t, "stream": stream, "text": text}
        if stream.startswith("log:"):
            _, level, logger = stream.split(":", 2)
            line.update(stream="log", level=level, logger=logger)
        out.append(line)
    return out
