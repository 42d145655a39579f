"""A run's output written from many threads at once while the flusher and other threads
flush it: no line lost or doubled, each thread's lines in order; the cap read when the
output outgrows the smallest one; a chunk's JSON as the json module writes it."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import pytest

from otel_runs._output import RunOutput, add_output_sink, remove_output_sink
from otel_runs._output_lines import _encode_columns


class Entry:
    """Stands in for the run's OpenRun: the sinks receive it."""


def _size(lines: list[dict[str, Any]]) -> int:
    return sum(len(line["text"]) + 24 for line in lines)


def test_writers_flushers_and_the_flusher_thread_lose_no_line() -> None:
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (threads take turns as often as they can: races happen)
    try:
        _write_and_flush_at_once()
    finally:
        sys.setswitchinterval(switch)


def _write_and_flush_at_once() -> None:
    entry = Entry()
    out = RunOutput(entry, 0, max_bytes=64 << 20)  # (a cap no line reaches: all are kept)
    chunks: list[list[dict[str, Any]]] = []

    def sink(run: Any, lines: list[dict[str, Any]], durable: bool) -> None:
        if run is entry:
            chunks.append(list(lines))

    writers, per_writer = 4, 50_000
    done = threading.Event()

    def write(w: int) -> None:
        for i in range(per_writer):
            out.write("out", f"w{w} {i}")

    def flush() -> None:  # (flushes racing the writers, as the flusher thread's do)
        while not done.is_set():
            out.flush()

    add_output_sink(sink)
    try:
        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        flushers = [threading.Thread(target=flush) for _ in range(2)]
        for thread in flushers + threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        done.set()
        for thread in flushers:
            thread.join(60)
        kept = out.close()
    finally:
        remove_output_sink(sink)
    sent = [line for chunk in chunks for line in chunk]
    total = writers * per_writer
    assert len(chunks) > 1  # (many chunks: the flushes raced the writes)
    assert [line["n"] for line in sent] == list(range(total))  # numbered in order, once each
    texts = [line["text"] for line in sent]
    assert len(set(texts)) == total  # every line once
    for w in range(writers):  # each writer's lines in the order it wrote them
        mine = [int(text.split()[1]) for text in texts if text.startswith(f"w{w} ")]
        assert mine == list(range(per_writer))
    assert [line["text"] for line in kept] == texts and out.lines_written == total


def test_late_writes_after_close_are_not_kept_and_kept_is_stable() -> None:
    out = RunOutput(Entry(), 0)
    out.write("out", "one")
    kept = out.close()
    out.write("out", "after the end")
    out.write("out", "two\nlines after")
    assert out.kept() is kept and [line["text"] for line in kept] == ["one"]


@pytest.mark.parametrize("cap", [4096, 10_000])
def test_the_cap_is_read_once_the_output_outgrows_the_smallest_one(
        monkeypatch: pytest.MonkeyPatch, cap: int) -> None:
    monkeypatch.setenv("OTEL_RUNS_OUTPUT_MAX_BYTES", str(cap))
    out = RunOutput(Entry(), 0)
    for i in range(400):  # one chunk per line: the head fills line by line
        out.write("out", f"line {i:04d} " + "x" * 60)
        out.flush()
    kept = out.close()
    (marker,) = [line for line in kept if line["stream"] == "meta"]
    lines = [line for line in kept if line["stream"] != "meta"]
    assert out.max_bytes == cap and f"last {cap // 2} bytes" in marker["text"]
    head = [line for line in lines if line["n"] < marker["n"]]
    tail = [line for line in lines if line["n"] > marker["n"]]
    assert cap // 2 - 100 < _size(head) <= cap // 2 and cap // 2 - 100 < _size(tail) <= cap // 2
    assert lines[0]["text"].startswith("line 0000") and lines[-1]["text"].startswith("line 0399")


def test_a_small_output_keeps_every_line_whatever_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_OUTPUT_MAX_BYTES", "4096")
    out = RunOutput(Entry(), 0)
    for i in range(20):
        out.write("out", f"step {i}")
    assert [line["text"] for line in out.close()] == [f"step {i}" for i in range(20)]
    assert out.dropped == 0 and out.max_bytes == 4096


TEXTS = ["plain", 'quotes " and \\ back', "\\u0000 literal", "tab\tand é and \u2028",
         "\x1b[31mred\x1b[0m", "", "emoji \U0001f680", "</script>"]


@pytest.mark.parametrize("stamps, streams", [
    ([0.25] * len(TEXTS), ("out",) * len(TEXTS)),  # one time, one stream (the usual chunk)
    ([0.25] * (len(TEXTS) - 1) + [0.5], ("out",) * len(TEXTS)),  # two times
    ([0.25] * len(TEXTS), ("out",) * (len(TEXTS) - 1) + ("err",)),  # two streams
])
def test_a_chunks_columns_are_encoded_as_the_json_module_would(
        stamps: list[float], streams: tuple[str, ...]) -> None:
    text = _encode_columns(7, stamps, streams, list(TEXTS))
    expected = [{"n": 7 + i, "t": t, "stream": s, "text": x}
                for i, (t, s, x) in enumerate(zip(stamps, streams, TEXTS, strict=True))]
    assert json.loads(text) == expected
    assert text == json.dumps(expected, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("stamps, streams", [
    ([0.25] * len(TEXTS), ("out",) * len(TEXTS)),
    ([0.25] * (len(TEXTS) - 1) + [0.5], ("out",) * len(TEXTS)),
    ([0.25] * len(TEXTS), ("out",) * (len(TEXTS) - 1) + ("err",)),
])
def test_a_kept_chunk_is_journaled_as_columns_and_read_back_as_its_lines(
        stamps: list[float], streams: tuple[str, ...]) -> None:
    from otel_runs._output_lines import OutputChunk, kept_json, lines_of_kept

    chunk = OutputChunk(columns=(7, stamps, streams, list(TEXTS)))
    expected = [{"n": 7 + i, "t": t, "stream": s, "text": x}
                for i, (t, s, x) in enumerate(zip(stamps, streams, TEXTS, strict=True))]
    assert len(chunk) == len(TEXTS) and chunk == expected and list(chunk) == expected
    columns = json.loads(kept_json(chunk))
    assert isinstance(columns, dict) and columns["n"] == 7  # (not one object per line)
    assert lines_of_kept(columns) == expected
    assert json.loads(chunk.json()) == expected
    # Lines that are no chunk's (or a chunk made of dicts) are kept one object a line.
    assert json.loads(kept_json(OutputChunk(expected))) == expected
    assert lines_of_kept(json.loads(kept_json(expected))) == expected


def test_columns_that_do_not_line_up_are_read_as_no_lines() -> None:
    from otel_runs._output_lines import lines_of_kept

    assert lines_of_kept({"n": 0, "t": [0.1], "stream": "out", "text": ["a", "b"]}) == []
    assert lines_of_kept({"n": "0", "t": 0.1, "stream": "out", "text": ["a"]}) == []
    assert lines_of_kept({"n": 0, "t": 0.1, "stream": "out", "text": "a"}) == []
    assert lines_of_kept({"n": 3, "t": 0.1, "stream": "out", "text": ["a", 5, "c"]}) == [
        {"n": 3, "t": 0.1, "stream": "out", "text": "a"},
        {"n": 5, "t": 0.1, "stream": "out", "text": "c"}]
    assert lines_of_kept("nonsense") == [] and lines_of_kept([{"n": 1}, 5]) == []


def test_a_runs_log_is_its_outputs_once_written_and_silent_after_the_end(
        git_repo: Any) -> None:
    import otel_runs
    from otel_runs.ledger import ledger_for

    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        with pytest.raises(ValueError):
            run.log("x", stream="log")
        run.log("one")
        run.log(2)
        run.log("three\nfour", stream="err")
        with pytest.raises(ValueError):  # (the output's own log checks the stream too)
            run.log("x", stream="meta")
    run.log("after the end")
    ledger = ledger_for(git_repo)
    assert ledger.flush(30)
    got = [(line["stream"], line["text"]) for line in ledger.output(run.run_id) or []]
    assert got == [("out", "one"), ("out", "2"), ("err", "three"), ("err", "four")]


def _tail_by_line(adds: list[list[tuple[int, int]]], limit: int) -> tuple[list[int], int, int]:
    """What the tail must keep, line by line: (numbers kept, lines dropped, bytes dropped)."""
    kept: list[tuple[int, int]] = []
    dropped = dropped_bytes = 0
    for lines in adds:
        kept.extend(lines)
        total = sum(size for _, size in kept)
        while total > limit and len(kept) > 1:
            _, size = kept.pop(0)
            total -= size
            dropped += 1
            dropped_bytes += size
    return [n for n, _ in kept], dropped, dropped_bytes


@pytest.mark.parametrize("seed", range(40))
def test_the_tail_drops_by_chunk_exactly_as_line_by_line(seed: int) -> None:
    import random

    from otel_runs._output_tail import OutputTail

    rng = random.Random(seed)
    limit = rng.choice([1, 30, 100, 1000, 5000])
    tail, adds, n = OutputTail(), [], 0
    for _ in range(rng.randrange(1, 60)):
        count = rng.choice([1, 1, 2, 5, 50, 300])
        big = rng.random() < 0.1  # sometimes lines larger than the limit itself
        lines = [(n + i, rng.randrange(1, 3 * limit if big else 80)) for i in range(count)]
        n += count
        adds.append(lines)
        as_kept = [(k, 0.0, "out", "x") if k % 2 else {"n": k, "t": 0.0, "stream": "err",
                                                      "text": "y", "level": "INFO"}
                   for k, _ in lines]
        tail.add(as_kept, [size for _, size in lines], limit)
        numbers, dropped, dropped_bytes = _tail_by_line(adds, limit)
        got = tail.lines()
        assert [line["n"] for line in got] == numbers
        assert (tail.dropped, tail.dropped_bytes) == (dropped, dropped_bytes)
        kept = set(numbers)
        assert tail.bytes == sum(size for add in adds for k, size in add if k in kept)
        assert tail.first_dropped == (0 if dropped else -1)
        assert all(type(line) is dict for line in got)
        assert [line.get("level") for line in got] == [
            None if k % 2 else "INFO" for k in numbers]
