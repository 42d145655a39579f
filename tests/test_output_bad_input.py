"""Run output under bad input: 100 MB printed in a second, a 10 MB line, bytes that are not
UTF-8, a progress bar that never ends its line. Real subprocesses, a real git ledger; the
memory case runs in a fresh interpreter and reads its own /proc/self/status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import git

import otel_runs
from otel_runs._output_lines import MAX_LINE_CHARS, cut_marker
from otel_runs.ledger import ledger_for

TEN_MB = 10 * 1024 * 1024


def texts(root: Path, run_id: str) -> list[str]:
    ledger = ledger_for(root)
    assert ledger.flush(60)
    return [line["text"] for line in ledger.output(run_id) or []]


def stored(repo: Path, run_id: str) -> str:
    names = git(repo, "ls-tree", "-r", "--name-only", "scp-ledger").split()
    (path,) = [n for n in names if n.endswith(f"{run_id}/output.log")]
    return git(repo, "show", f"scp-ledger:{path}")


def cut_line(char: str, length: int) -> str:
    return char * MAX_LINE_CHARS + cut_marker(length - MAX_LINE_CHARS)


def test_a_10_mb_line_is_cut_with_a_marker_however_it_is_written(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    child = ("import sys, time\n"
             "out = sys.stdout.buffer\n"
             f"for _ in range({TEN_MB // 65536}):\n"
             "    out.write(b'c' * 65536); out.flush()\n"
             "out.write(b'\\nafter\\n')\n")
    with otel_runs.tracked_run(git_repo, "test", "test:pytest") as run:
        run.log("a" * TEN_MB)
        for _ in range(TEN_MB // 1024):  # a file's writes, none with a newline
            run.output.write("b" * 1024)
        run.output.write("\nnext\n")
        result = otel_runs.run_command([sys.executable, "-c", child])
        run.output.write("d" * (MAX_LINE_CHARS + 5))  # never ended: ended by the run's end
    assert result.returncode == 0
    got = texts(git_repo, run.run_id)
    assert got == [cut_line("a", TEN_MB), cut_line("b", TEN_MB), "next",
                   cut_line("c", TEN_MB), "after", cut_line("d", MAX_LINE_CHARS + 5)]
    assert stored(git_repo, run.run_id).count("more characters]") == 4
    # the command's own result keeps its bounded copy of what it printed
    assert result.stdout.startswith("c" * 1000) and "more characters not kept here" in result.stdout


def test_bytes_that_are_not_utf8_are_stored_with_replacement_characters(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    # the two bytes of "é" come in two writes: decoded as one character, not two errors
    child = ("import sys, time\n"
             "out = sys.stdout.buffer\n"
             "out.write(b'bad \\xff\\xfe bytes\\n'); out.flush()\n"
             "out.write(b'caf\\xc3'); out.flush(); time.sleep(0.2)\n"
             "out.write(b'\\xa9 split\\n'); out.flush()\n"
             "out.write(b'cut short \\xe2\\x82')\n")
    with otel_runs.tracked_run(git_repo, "test", "test:pytest") as run:
        result = otel_runs.run_command([sys.executable, "-c", child])
        run.output.write(b"\xff raw bytes as text".decode("utf-8", "surrogateescape") + "\n")
    assert result.returncode == 0
    got = texts(git_repo, run.run_id)
    assert got == ["bad \ufffd\ufffd bytes", "café split", "cut short \ufffd",
                   "\ufffd raw bytes as text"]
    assert stored(git_repo, run.run_id).encode("utf-8")  # the file is valid UTF-8


def test_a_progress_bar_that_never_ends_its_line_is_one_line(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    child = ("import sys\n"
             "for i in range(200_000): sys.stdout.write(f'\\rprogress {i}')\n"
             "sys.stdout.write('\\rdone    \\n')\n")
    with otel_runs.tracked_run(git_repo, "test", "test:pytest") as run:
        otel_runs.run_command([sys.executable, "-c", child])
        for i in range(50_000):
            run.output.write(f"upload {i}%\r")
    assert texts(git_repo, run.run_id) == ["done    ", "upload 49999%"]


# A fresh interpreter: a child printing 100 MB (a million 100-byte lines) as fast as it
# can, through run_command; RSS is read before and at its peak after.
_FLOOD = textwrap.dedent("""
    import json, sys, time
    import otel_runs
    from otel_runs.ledger import ledger_for

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])

    root, shape = sys.argv[1:]
    otel_runs.configure(root)
    block = "(b'x' * 99 + b'\\\\n') * 10_000" if shape == "lines" else "b'y' * 1_000_000"
    child = f"import sys\\nblock = {block}\\nfor _ in range(100): sys.stdout.buffer.write(block)\\n"
    with otel_runs.tracked_run(root, "test", "test:pytest") as warm:  # imports, caches
        otel_runs.run_command([sys.executable, "-c", child.replace("100)", "2)")])
    ledger_for(root).flush(60)
    def journal_size():
        return sum(p.stat().st_size for p in Path(ledger_for(root).journal_dir).glob("*.jsonl"))
    journal_before = journal_size()
    before = status("VmRSS:")
    start = time.monotonic()
    with otel_runs.tracked_run(root, "test", "test:pytest") as run:
        result = otel_runs.run_command([sys.executable, "-c", child])
    seconds = time.monotonic() - start
    peak = status("VmHWM:")
    ledger = ledger_for(root)
    # (nothing committed yet, the interval is long: the journal holds all the run wrote)
    journal = journal_size() - journal_before
    assert ledger.flush(120)
    lines = ledger.output(run.run_id)
    print(json.dumps({"before_kb": before, "peak_kb": peak, "seconds": seconds,
                      "returncode": result.returncode, "kept": len(lines),
                      "last": lines[-1]["n"], "meta": [l["text"] for l in lines
                                                       if l["stream"] == "meta"],
                      "kept_bytes": sum(len(l["text"]) + 24 for l in lines),
                      "journal_bytes": journal, "result_chars": len(result.stdout)}))
""").replace("import otel_runs\n", "import otel_runs\nfrom pathlib import Path\n", 1)


@pytest.mark.parametrize("shape", ["lines", "one line"])
def test_100_mb_in_a_second_keeps_memory_bounded_and_the_output_capped(
        git_repo: Path, shape: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _FLOOD, str(git_repo), shape], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OTEL_TRACES_EXPORTER": "none",
                               "OTEL_RUNS_COMMIT_INTERVAL": "1000"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["returncode"] == 0
    growth_mb = (got["peak_kb"] - got["before_kb"]) / 1024
    assert growth_mb <= 20, got  # the goal: RSS growth <= 20 MB at its peak
    assert got["result_chars"] <= (4 << 20) + 100
    if shape == "one line":  # cut with its marker
        assert got["kept"] == 1 and got["meta"] == [] and got["last"] == 0
        return
    assert got["last"] == 1_000_000 - 1  # the last line is kept, numbered after all the others
    (marker,) = got["meta"]
    assert "dropped here" in marker
    # the 1 MiB cap, as the cap counts a line (its characters and 24 for its output.log
    # prefix), with the marker line over it
    assert 1000 * 1024 <= got["kept_bytes"] <= 1024 * 1024 + 200
    # the journal took what the cap allows a run (4x the cap as it counts, then the end
    # record with the kept 1 MiB), not 100 MB
    assert 4 * 1024 * 1024 <= got["journal_bytes"] <= 7 * 1024 * 1024, got


@pytest.mark.parametrize("stream", ["out", "err"])
def test_a_stream_written_as_bytes_decoded_is_one_run_line_per_line(
        git_repo: Path, stream: str) -> None:
    otel_runs.configure(git_repo)
    code = f"import sys\nsys.std{stream}.write('one\\r\\ntwo\\n\\nfour')\n"
    with otel_runs.tracked_run(git_repo, "test", "test:pytest") as run:
        otel_runs.run_command([sys.executable, "-c", code])
    ledger = ledger_for(git_repo)
    assert ledger.flush(60)
    lines = ledger.output(run.run_id) or []
    assert [(line["stream"], line["text"]) for line in lines] == [
        (stream, "one"), (stream, "two"), (stream, ""), (stream, "four")]
