"""A real ``gunicorn -k gthread`` on 127.0.0.1 serving an app module written to a directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, port_open, stop_child, wait_until

gunicorn_module = pytest.importorskip(
    "gunicorn", reason="gunicorn is a test dependency (pip install -e '.[test]')")
#: gunicorn >= 27 opens a control socket under ~/.gunicorn by default: not for tests.
NO_CONTROL_SOCKET = ["--no-control-socket"] if gunicorn_module.version_info >= (27,) else []


class GunicornServer:
    """``gunicorn -k gthread --threads T --workers N`` serving ``<module>:app`` (its source
    written to ``workdir``); up (port open) when the constructor returns; :meth:`stop`
    sends SIGTERM (gunicorn's graceful stop)."""

    def __init__(self, workdir: Path, module: str, source: str, workers: int,
                 env: dict[str, str], *, threads: int = 8, graceful_timeout: int = 2,
                 without: tuple[str, ...] = ()) -> None:
        (workdir / f"{module}.py").write_text(source)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"gunicorn-{self.port}.log"
        self._log_file = self.log.open("wb")
        environ = {k: v for k, v in os.environ.items() if k not in without}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads",
             str(threads), "--workers", str(workers), "--bind", f"127.0.0.1:{self.port}",
             "--chdir", str(workdir), "--graceful-timeout", str(graceful_timeout),
             *NO_CONTROL_SOCKET, f"{module}:app"],
            env={**environ, **env}, stdout=self._log_file, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or port_open(self.port), timeout=30)
        except Exception:
            self.stop()
            raise
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        stop_child(self.proc, 15)
        self._log_file.close()
