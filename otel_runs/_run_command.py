"""``run_command``: run a subprocess inside a run and stream its output into the run."""

from __future__ import annotations

import codecs
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from ._context import CURRENT_RUN
from ._output_lines import LineJoiner
from .redaction import scrub_text

__all__ = ["CommandResult", "run_command"]

#: Most characters of each stream a :class:`CommandResult` keeps (the run keeps its own,
#: bounded copy of every line); past it the result's text says how much was left out.
RESULT_MAX_CHARS = 4 << 20
_READ = 64 * 1024


@dataclass
class CommandResult:
    """What :func:`run_command` returns: like ``subprocess.CompletedProcess`` (``args``,
    ``returncode``, ``stdout``, ``stderr``), plus ``timed_out``."""

    args: Sequence[str] | str
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    def check_returncode(self) -> None:
        """Raise ``subprocess.CalledProcessError`` if the command failed."""
        if self.returncode:
            raise subprocess.CalledProcessError(self.returncode, self.args, self.stdout,
                                                self.stderr)


class _Pump(threading.Thread):
    """Reads one pipe as data comes and writes each line to the run as it completes
    (bytes decoded as UTF-8, invalid ones replaced; a line however long held within
    the line bound, see :class:`LineJoiner`)."""

    def __init__(self, pipe: IO[bytes], stream: str, handle: Any) -> None:
        super().__init__(daemon=True, name=f"otel-runs-command-{stream}")
        self.pipe, self.stream, self.handle = pipe, stream, handle
        self.parts: list[str] = []
        self.size = 0
        self.cut = 0

    def run(self) -> None:  # (threading.Thread's run: the pump loop)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        joiner = LineJoiner()
        fd = self.pipe.fileno()
        while True:
            try:
                data = os.read(fd, _READ)
            except OSError:
                data = b""
            text = decoder.decode(data, final=not data)
            if text:
                self._keep(text)
                self._send(joiner.feed(text))
            if not data:
                break
        last = joiner.finish()
        if last is not None:
            self._send([last])
        self.pipe.close()

    def _send(self, lines: list[str]) -> None:
        out = self.handle.output_buffer() if self.handle is not None and lines else None
        if out is not None:
            out.write_lines(self.stream, lines)

    def _keep(self, text: str) -> None:
        if self.size + len(text) <= RESULT_MAX_CHARS:
            self.parts.append(text)
            self.size += len(text)
        else:
            self.cut += len(text)

    def text(self) -> str:
        extra = f"\n[otel-runs: {self.cut} more characters not kept here]\n" if self.cut else ""
        return "".join(self.parts) + extra


def run_command(args: Sequence[str] | str, *, check: bool = False,
                timeout: float | None = None, cwd: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None, shell: bool = False,
                input: bytes | None = None) -> CommandResult:
    """Run ``args`` (a list; a string only with ``shell=True``), streaming its stdout and
    stderr into the current run line by line as they come. Returns a
    :class:`CommandResult`; with ``check``, a non-zero exit raises
    ``subprocess.CalledProcessError``. Past ``timeout`` seconds the child is killed
    (``returncode`` -9, ``timed_out`` True; with ``check`` it raises
    ``subprocess.TimeoutExpired``). The run's metadata gets ``command`` (scrubbed) and
    ``exit_code``. Outside a run the command still runs; nothing is recorded."""
    if isinstance(args, str) and not shell:
        raise TypeError("run_command takes a list of arguments; a string needs shell=True")
    run = CURRENT_RUN.get()
    shown = scrub_text(args if isinstance(args, str) else " ".join(map(str, args)))
    proc = subprocess.Popen(args, cwd=cwd, env=None if env is None else dict(env), shell=shell,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    pumps = [_Pump(proc.stdout, "out", run), _Pump(proc.stderr, "err", run)]
    for pump in pumps:
        pump.start()
    if input is not None and proc.stdin is not None:
        stdin = proc.stdin

        def feed() -> None:  # (a thread: a child that does not read must not block us)
            try:
                stdin.write(input)
                stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass

        threading.Thread(target=feed, daemon=True, name="otel-runs-command-in").start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    except BaseException:  # (KeyboardInterrupt...): the child does not outlive the run
        proc.kill()
        proc.wait()
        raise
    finally:
        for pump in pumps:
            pump.join(5.0)
    code = proc.returncode
    if run is not None:
        run.metadata["command"] = shown
        run.metadata["exit_code"] = code
        if timed_out:
            run.metadata["timed_out"] = True
            out = run.output_buffer()
            if out is not None:
                out.write("meta", f"[otel-runs: killed after the {timeout} s timeout]")
    result = CommandResult(args, code, pumps[0].text(), pumps[1].text(), timed_out)
    if check and timed_out:
        raise subprocess.TimeoutExpired(args, timeout or 0.0, result.stdout, result.stderr)
    if check:
        result.check_returncode()
    return result
