"""Shared fixtures: real git repositories, a run collector, real servers on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import otel_runs
from otel_runs import Run
from otel_runs.exporters import RunProcessor


def git(cwd: Path | str, *args: str, check: bool = True) -> str:
    """Run git in ``cwd`` and return its stdout."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


@pytest.fixture(autouse=True)
def _isolated_otel_runs(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Never let a test write a ledger into this checkout or export to the developer's
    collector (OTLP settings from the environment are removed); start each test clean."""
    scratch = tmp_path_factory.mktemp("default-root")
    monkeypatch.setenv("OTEL_RUNS_PROJECT_ROOT", str(scratch))
    for name in list(os.environ):
        if name.startswith("OTEL_EXPORTER_OTLP_") or name == "OTEL_TRACES_EXPORTER":
            monkeypatch.delenv(name)
    yield
    otel_runs.shutdown()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A real git repository with one commit on ``main``."""
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "t")
    git(repo, "config", "user.email", "t@example.com")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def user_state(repo: Path) -> dict[str, Any]:
    """What a ledger write must never change: HEAD, index bytes, status, stash."""
    gitdir = Path(git(repo, "rev-parse", "--absolute-git-dir").strip())
    index = gitdir / "index"
    return {
        "head": git(repo, "rev-parse", "HEAD", check=False).strip(),
        "symbolic_head": git(repo, "symbolic-ref", "-q", "HEAD", check=False).strip(),
        "index": index.read_bytes() if index.exists() else None,
        "status": git(repo, "status", "--porcelain", "--untracked-files=all"),
        "stash": git(repo, "stash", "list"),
    }


class CollectingProcessor(RunProcessor):
    """A RunProcessor that remembers what it saw (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[Run] = []
        self.ended: list[Run] = []
        self.child_spans: list[tuple[str, Any]] = []
        self.event = threading.Condition(self.lock)

    def on_run_start(self, run: Run) -> None:
        with self.lock:
            self.started.append(run)
            self.event.notify_all()

    def on_run_end(self, run: Run) -> None:
        with self.lock:
            self.ended.append(run)
            self.event.notify_all()

    def on_run_span_end(self, run_id: str, span: Any) -> None:
        with self.lock:
            self.child_spans.append((run_id, span))

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Wait (bounded) until ``predicate()`` holds; True if it did."""
        with self.event:
            return self.event.wait_for(predicate, timeout)

    def by_id(self, run_id: str) -> Run:
        with self.lock:
            for run in self.ended:
                if run.run_id == run_id:
                    return run
        raise KeyError(run_id)


@pytest.fixture
def collector(tmp_path: Path) -> CollectingProcessor:
    """Configure otel-runs (no ledger) with a collecting RunProcessor."""
    proc = CollectingProcessor()
    otel_runs.configure(tmp_path, ledger=False, processors=[proc])
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    """True once something accepts connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop_child(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """Stop a child process the test started: SIGTERM, then SIGKILL after ``timeout``."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until truthy (bounded); return its value or raise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class LiveServer:
    """A real threaded werkzeug server for a Flask app on 127.0.0.1."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        from werkzeug.serving import make_server

        self.port = port or free_port()
        self.server = make_server("127.0.0.1", self.port, app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.thread.start()
        wait_until(self._ready, timeout=10)
        return self

    def _ready(self) -> bool:
        return port_open(self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    """Factory: ``live_server(app)`` starts a real server; all are stopped after the test."""
    servers: list[LiveServer] = []

    def start(app: Any, port: int | None = None) -> LiveServer:
        srv = LiveServer(app, port).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on 127.0.0.1 and a free port, no persistence."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server binary not found (apt-get install redis-server; .ci/run does)")
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        redis = pytest.importorskip("redis", reason="the 'redis' extra is not installed")
        client = redis.Redis.from_url(url, socket_connect_timeout=0.5)

        def ready() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(ready, timeout=20, interval=0.05)
        client.close()
        yield url
    finally:
        stop_child(proc)
