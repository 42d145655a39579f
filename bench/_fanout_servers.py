"""The bench app's server for ``bench/fanout.py`` (and ``bench/memory.py``): one job.

Runs the Flask app with ``RunTracking`` and the git ledger on a fresh temp repository in
a child process (werkzeug threaded, or gunicorn ``gthread`` workers), POSTs tracked runs
to it, and reads the CPU time its processes and threads used (``/proc``, Linux).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SERVER = textwrap.dedent('''
    import logging, os, sys, threading
    from flask import Flask
    import otel_runs
    from otel_runs import api
    from otel_runs.flask import RunTracking

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    root = os.environ["OTEL_RUNS_PROJECT_ROOT"]
    ledger = os.environ["BENCH_LEDGER"] == "1"
    app = Flask("bench")
    app.config["PROJECT_ROOT"] = root
    if os.environ.get("BENCH_LINGER"):
        app.config["OTEL_RUNS_SSE_LINGER"] = float(os.environ["BENCH_LINGER"])
    if os.environ.get("BENCH_WAKEUPS"):
        app.config["OTEL_RUNS_SSE_WAKEUPS"] = float(os.environ["BENCH_WAKEUPS"])
    if os.environ.get("BENCH_BUFFER"):
        app.config["OTEL_RUNS_SSE_BUFFER"] = int(os.environ["BENCH_BUFFER"])

    @app.post("/run")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def run():
        return {"ok": True, "summary": "deployed web to staging"}

    @app.after_request
    def worker_pid(resp):  # which worker (and thread) answered: the stream's, the run's
        resp.headers["X-Worker-Pid"] = str(os.getpid())
        resp.headers["X-Worker-Tid"] = str(threading.get_native_id())
        return resp

    RunTracking(app, ledger=ledger)
    api.register(app, app.extensions["otel_runs"])

    def name_threads():  # the live feed's own threads (stream writer, feed follower), by tid
        import json, time
        path = os.path.join(os.environ["BENCH_DIR"], f"threads-{os.getpid()}.json")
        while True:
            tids = {t.name: t.native_id for t in threading.enumerate()
                    if t.name.startswith("otel-runs-")}
            with open(path + ".tmp", "w") as out:
                json.dump(tids, out)
            os.replace(path + ".tmp", path)
            time.sleep(0.25)

    threading.Thread(target=name_threads, daemon=True).start()

    if __name__ == "__main__":
        from werkzeug.serving import make_server

        make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
''')

#: gunicorn, one ``gthread`` worker: a thread pool (streams each hold a thread) instead
#: of werkzeug's new thread per connection.
GUNICORN_THREADS = 160


def _no_control_socket() -> list[str]:
    """gunicorn >= 27 opens a control socket under ~/.gunicorn by default: not for a bench."""
    import gunicorn

    return ["--no-control-socket"] if gunicorn.version_info >= (27,) else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The bench app in a child process on 127.0.0.1."""

    def __init__(self, workdir: Path, ledger: bool = True, linger: float | None = None,
                 kind: str = "werkzeug", workers: int = 1,
                 wakeups: float | None = None, buffer: int | None = None) -> None:
        self.root = workdir / "project"
        self.root.mkdir()
        env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
               "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=self.root, check=True, env=env)
        (self.root / "README").write_text("bench\n")
        subprocess.run(["git", "add", "README"], cwd=self.root, check=True, env=env)
        subprocess.run(["git", "commit", "-q", "-m", "init"], cwd=self.root, check=True, env=env)
        script = workdir / "bench_server.py"
        script.write_text(SERVER)
        self.port = free_port()
        env.pop("OTEL_RUNS_REDIS_URL", None)  # the host's feed file, not Redis
        env.update({"PYTHONPATH": str(ROOT), "OTEL_RUNS_PROJECT_ROOT": str(self.root),
                    "BENCH_LEDGER": "1" if ledger else "0", "BENCH_DIR": str(workdir),
                    "BENCH_LINGER": "" if linger is None else str(linger),
                    "BENCH_WAKEUPS": "" if wakeups is None else str(wakeups),
                    "BENCH_BUFFER": "" if buffer is None else str(buffer)})
        if kind == "gunicorn":
            cmd = [sys.executable, "-m", "gunicorn", "--worker-class", "gthread",
                   "--workers", str(workers),
                   "--threads", str(GUNICORN_THREADS), "--bind", f"127.0.0.1:{self.port}",
                   "--chdir", str(workdir), "--log-level", "warning", *_no_control_socket(),
                   "bench_server:app"]
        else:
            cmd = [sys.executable, str(script), str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start") from None
                time.sleep(0.05)
        self.pids = [self.proc.pid]  # the processes that serve: gunicorn's workers
        if kind == "gunicorn":
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            while True:
                pids = children.read_text().split() if children.exists() else []
                if len(pids) == workers or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            if len(pids) != workers:
                raise SystemExit(f"expected {workers} gunicorn worker(s), found {pids}")
            self.pids = [int(pid) for pid in pids]
        self.pid = self.pids[0]
        self.workdir = workdir

    def live_threads(self) -> dict[str, str]:
        """The live feed's own threads of each worker (``pid/tid`` by thread name, e.g.
        ``otel-runs-sse-writer``), as the workers last wrote them down."""
        out: dict[str, str] = {}
        for pid in self.pids:
            try:
                names = json.loads((self.workdir / f"threads-{pid}.json").read_text())
            except (OSError, ValueError):
                continue
            out.update({f"{pid}/{tid}": name for name, tid in names.items()})
        return out

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(pid) for pid in self.pids)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_ns(pids: list[int]) -> dict[str, int]:
    """CPU time of each thread of ``pids`` in ns (``/proc/.../schedstat``; {} where there is
    none), by ``pid/tid``."""
    out: dict[str, int] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                out[f"{pid}/{tid}"] = int(
                    Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return out


def post_runs(port: int, count: int, posters: int, deadline: float,
              origins: dict[str, int] | None = None) -> tuple[float, list[str]]:
    """POST ``count`` tracked requests from ``posters`` threads; (requests/s, run ids).
    ``origins`` gets the worker pid that ran each run."""
    ids: list[str] = []
    lock = threading.Lock()
    remaining = [count]

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/run")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"POST /run answered {resp.status}")
            run_id = resp.getheader("X-Run-Id") or ""
            with lock:
                ids.append(run_id)
                if origins is not None:
                    origins[run_id] = int(resp.getheader("X-Worker-Pid") or 0)
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(posters)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if len(ids) < count:
        raise SystemExit(f"only {len(ids)}/{count} requests within the time limit")
    return len(ids) / elapsed, ids
