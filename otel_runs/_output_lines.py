"""One line of run output as it is kept, and chunks of lines as JSON.

- :func:`clean_controls`: what a terminal shows of a line (after its last carriage
  return), ANSI SGR colours kept, every other control sequence dropped, lone surrogates
  replaced, at most :data:`MAX_LINE_CHARS` characters; :func:`clean_line` scrubs it too.
- :class:`OutputChunk`: the lines a ``RunOutput`` hands to its sinks together, encoded as
  JSON once for all of them (:func:`lines_json`).
- :func:`kept_json` / :func:`lines_of_kept`: a run's kept output as the journal stores it
  with the run's end record: as columns when it is one chunk's lines, numbered on.
- :func:`hide_private_keys`: the lines of a private key printed line by line hidden.
- :class:`LineJoiner`: text written in pieces made into lines, the unfinished one held
  within :data:`MAX_LINE_CHARS` however long it grows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

from .redaction import REDACTED, scrub_text

__all__ = ["MAX_LINE_CHARS", "LineJoiner", "OutputChunk", "clean_controls", "clean_line",
           "cut_marker", "hide_private_keys", "kept_json", "lines_json", "lines_of_kept"]

#: Longest line kept (characters); the rest is cut with a marker.
MAX_LINE_CHARS = 16_384

# SGR (colour) sequences are kept; any other escape sequence and control character goes.
_ESCAPES = re.compile(r"\x1b\[[0-9;]*m|(\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
                      r"|\x1b[@-Z\\-_]?|[\x00-\x08\x0b-\x1f\x7f\x9b])|([\ud800-\udfff])")


# A line already cut (by a LineJoiner) is not cut again.
_CUT = re.compile(r"\.\.\. \[\d+ more characters\]")


def cut_marker(extra: int) -> str:
    """What replaces the ``extra`` characters cut from the end of a long line."""
    return f"... [{extra} more characters]"


def _drop_controls(match: re.Match[str]) -> str:
    if match.group(2) is not None:  # a lone surrogate (not UTF-8): the replacement character
        return "\ufffd"
    return "" if match.group(1) is not None else match.group(0)


def clean_controls(text: str) -> str:
    """What a terminal shows of one line after its last carriage return, SGR colours
    kept, other control sequences dropped, length bounded (not scrubbed)."""
    if "\r" in text:
        text = text.rstrip("\r").rsplit("\r", 1)[-1]
    if len(text) > MAX_LINE_CHARS and not _CUT.fullmatch(text, MAX_LINE_CHARS):
        text = text[:MAX_LINE_CHARS] + cut_marker(len(text) - MAX_LINE_CHARS)
    if not text.isprintable():
        text = _ESCAPES.sub(_drop_controls, text)
    return text


def clean_line(text: str) -> str:
    """One line as it is kept: :func:`clean_controls`, then secrets scrubbed."""
    return scrub_text(clean_controls(text))


# A private key printed line by line: its BEGIN line, the lines after it, and its END line.
_KEY_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----")
_KEY_END = re.compile(r"-----END[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-----")


def hide_private_keys(streams: Sequence[str], texts: list[str], inside: set[str]) -> None:
    """The lines between a private key's BEGIN and END lines are the key: replaced in
    ``texts`` by the redaction marker. ``inside``: the streams in a key block (updated)."""
    for i, text in enumerate(texts):
        stream = streams[i]
        if stream in inside:
            texts[i] = REDACTED
            if _KEY_END.search(text) is not None:
                inside.discard(stream)
            continue
        begin = _KEY_BEGIN.search(text)
        if begin is not None and _KEY_END.search(text, begin.end()) is None:
            inside.add(stream)  # (the BEGIN line itself is scrubbed by its rule)


class LineJoiner:
    """Text that comes in pieces (a file's ``write``, a pipe's reads) made into whole
    lines. The unfinished line is held as a terminal would show it (only what follows its
    last carriage return) and within :data:`MAX_LINE_CHARS`: past it the rest of the line
    is only counted, and the line ends with :func:`cut_marker`. Not thread-safe."""

    __slots__ = ("_cut", "_held")

    def __init__(self) -> None:
        self._held = ""
        self._cut = 0

    def feed(self, text: str) -> list[str]:
        """The lines ``text`` completes (none when it has no newline)."""
        if "\n" not in text:
            self._hold(text)
            return []
        lines = text.split("\n")
        last = lines.pop()
        lines[0] = self._ended(lines[0])
        self._held, self._cut = "", 0
        self._hold(last)
        return lines

    def finish(self) -> str | None:
        """The unfinished line, ended (None when there is none)."""
        if not self._held and not self._cut:
            return None
        line = self._ended("")
        self._held, self._cut = "", 0
        return line

    def _ended(self, text: str) -> str:
        if self._cut:
            return self._held + cut_marker(self._cut + len(text))
        return self._held + text

    def _hold(self, text: str) -> None:
        if not text:
            return
        if self._cut:
            self._cut += len(text)
            return
        held = self._held + text
        if "\r" in text:  # (a progress bar: only its last state is shown, so kept)
            at = held.rstrip("\r").rfind("\r")
            if at >= 0:
                held = held[at + 1:]
        if len(held) > MAX_LINE_CHARS:
            self._cut = len(held) - MAX_LINE_CHARS
            held = held[:MAX_LINE_CHARS]
        self._held = held


class OutputChunk(Sequence[dict[str, Any]]):
    """Lines a :class:`RunOutput` handed to its sinks together: a sequence of line dicts
    (``n``, ``t``, ``stream``, ``text``, and ``level`` and ``logger`` for log records).
    Lines without a level are held as ``columns`` (first number, times, streams, texts)
    and made into dicts only when a sink reads them (the usual sinks need only the
    JSON); :meth:`json` encodes them once for every sink."""

    __slots__ = ("_json", "_lines", "columns", "size")

    def __init__(self, lines: list[dict[str, Any]] | None = None,
                 columns: tuple[int, list[float], Sequence[str], Sequence[str]] | None = None,
                 ) -> None:
        self._lines = lines if lines is not None or columns is not None else []
        self.columns = columns
        self._json: str | None = None
        self.size = 0

    @property
    def lines(self) -> list[dict[str, Any]]:
        """The lines as dicts (made from the columns on first use)."""
        lines = self._lines
        if lines is None:
            first, stamps, streams, texts = self.columns  # type: ignore[misc]
            lines = self._lines = [
                {"n": n, "t": t, "stream": stream, "text": text} for n, t, stream, text
                in zip(range(first, first + len(texts)), stamps, streams, texts, strict=True)]
        return lines

    def __len__(self) -> int:
        return len(self._lines) if self._lines is not None else len(self.columns[3])  # type: ignore[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.lines)

    def __getitem__(self, index: Any) -> Any:
        return self.lines[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, OutputChunk):
            other = other.lines
        return self.lines == other if isinstance(other, list) else NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OutputChunk({self.lines!r})"

    def json(self) -> str:
        """The lines as one compact JSON array (the same text for every sink)."""
        text = self._json
        if text is None:
            columns = self.columns
            text = self._json = _encode_columns(*columns) if columns is not None \
                else _encode_lines(self.lines)
        return text


def lines_json(lines: Sequence[dict[str, Any]]) -> str:
    """``lines`` as a compact JSON array (encoded once when they are an :class:`OutputChunk`)."""
    if isinstance(lines, OutputChunk):
        return lines.json()
    return _JSON.encode(list(lines))


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                         default=repr)
_quote = json.encoder.encode_basestring  # (the C one: a JSON string, non-ASCII kept)


class _QuotedStreams(dict):  # type: ignore[type-arg]
    """A stream's name as a JSON string (the usual ones made once)."""

    def __missing__(self, stream: str) -> str:
        return _quote(stream)


_STREAM_JSON = _QuotedStreams({name: _quote(name) for name in ("out", "err", "log", "meta")})
_float_text = float.__repr__


def _encode_columns(first: int, stamps: list[float], streams: Sequence[str],
                    texts: Sequence[str]) -> str:
    """Lines without a level (numbered from ``first``) as JSON, field by field (each
    distinct time written once: the lines of a chunk mostly share their millisecond)."""
    numbers = range(first, first + len(texts))
    stamp, stream = stamps[0], streams[0]
    if stamps.count(stamp) == len(stamps) and streams.count(stream) == len(streams):
        # (the usual chunk: one time and one stream; only the number and the text change)
        mid = f',"t":{_float_text(stamp)},"stream":{_STREAM_JSON[stream]},"text":'
        return "[" + ",".join([f'{{"n":{n}{mid}{text}}}'
                               for n, text in zip(numbers, map(_quote, texts), strict=True)]) + "]"
    times = {t: _float_text(t) for t in set(stamps)}
    quoted = _STREAM_JSON
    return "[" + ",".join([f'{{"n":{n},"t":{times[t]},"stream":{quoted[stream]},"text":'
                           f'{_quote(text)}}}' for n, t, stream, text in zip(
                               numbers, stamps, streams, texts, strict=True)]) + "]"


def kept_json(lines: Sequence[dict[str, Any]]) -> str:
    """``lines`` as the journal keeps a run's output. When they are one chunk's lines
    without a level (a short run's whole output, the usual case), as columns:
    ``{"n": first, "t": time or [times], "stream": stream or [streams], "text": [texts]}``
    (line ``i`` is numbered ``first + i``; one time or stream stands for every line), about
    a third of the bytes and of the time of one object per line; else :func:`lines_json`.
    :func:`lines_of_kept` reads either back."""
    columns = lines.columns if isinstance(lines, OutputChunk) else None
    if columns is None:
        return lines_json(lines)
    first, stamps, streams, texts = columns
    stamp, stream = stamps[0], streams[0]
    t = _float_text(stamp) if stamps.count(stamp) == len(stamps) else _JSON.encode(stamps)
    s = _STREAM_JSON[stream] if streams.count(stream) == len(streams) \
        else "[" + ",".join(map(_quote, streams)) + "]"
    return f'{{"n":{first},"t":{t},"stream":{s},"text":[{",".join(map(_quote, texts))}]}}'


def lines_of_kept(value: Any) -> list[dict[str, Any]]:
    """The output lines a journal record holds (what :func:`kept_json` or :func:`lines_json`
    wrote, decoded): lines that are no object with an int ``n`` and a str ``text`` are
    left out, as columns that do not line up are."""
    if isinstance(value, list):
        return [line for line in value if isinstance(line, dict)
                and type(line.get("n")) is int and isinstance(line.get("text"), str)]
    if not isinstance(value, dict):
        return []
    first, texts = value.get("n"), value.get("text")
    if type(first) is not int or not isinstance(texts, list):
        return []
    count = len(texts)
    stamps, streams = value.get("t"), value.get("stream")
    if not isinstance(stamps, list):
        stamps = [stamps] * count
    if not isinstance(streams, list):
        streams = [streams] * count
    if len(stamps) != count or len(streams) != count:
        return []
    return [{"n": first + i, "t": t, "stream": stream, "text": text}
            for i, (t, stream, text) in enumerate(zip(stamps, streams, texts, strict=True))
            if isinstance(text, str) and isinstance(stream, str)
            and type(t) in (int, float)]


def _encode_lines(lines: list[dict[str, Any]]) -> str:
    """Lines RunOutput made (``n`` an int, ``t`` a finite float, strings) as JSON, written
    out field by field (~2.5x faster than ``json`` for these small dicts)."""
    try:
        return "[" + ",".join([
            f'{{"n":{line["n"]:d},"t":{float(line["t"])!r},"stream":{_quote(line["stream"])},'
            f'"text":{_quote(line["text"])}}}' if len(line) == 4 else
            f'{{"n":{line["n"]:d},"t":{float(line["t"])!r},"stream":{_quote(line["stream"])},'
            f'"text":{_quote(line["text"])},"level":{_quote(line["level"])},'
            f'"logger":{_quote(line["logger"])}}}' if len(line) == 6 else _JSON.encode(line)
            for line in lines]) + "]"
    except (KeyError, TypeError, ValueError):
        return _JSON.encode(list(lines))
