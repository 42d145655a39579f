"""Child process for the ledger tests: records runs through the public API.

Usage: ``python ledger_child.py MODE ROOT [ARGS...]``. Prints one line per event
(``started <id>``, ``done <id>``, ``inflight <id>``) and flushes stdout at once,
so the parent knows exactly which blocks had exited when it kills the child.
(``soak`` writes its many run ids to a file instead, see :func:`soak`.)
"""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import otel_runs  # noqa: E402


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def hold_forever(root: str) -> None:
    with otel_runs.tracked_run(root, "deploy", "deploy:k8s", summary="long deploy") as run:
        say("inflight", run.run_id)
        time.sleep(3600)


def loop(root: str, limit: int) -> None:
    """Record runs until killed (bounded: ``limit`` runs), plus one run that
    never ends, in another thread."""
    otel_runs.configure(root)
    threading.Thread(target=hold_forever, args=(root,), daemon=True).start()
    for i in range(limit):
        with otel_runs.tracked_run(root, "build", "build:docker", summary=f"build {i}",
                                   n=i) as run:
            say("started", run.run_id)
        say("done", run.run_id)
    time.sleep(3600)


def hold(root: str) -> None:
    """Start a run, wait for a line on stdin, finish it ok and exit normally."""
    otel_runs.configure(root)
    with otel_runs.tracked_run(root, "deploy", "deploy:k8s", summary="held") as run:
        say("inflight", run.run_id)
        sys.stdin.readline()
    say("done", run.run_id)


def threads(root: str, n_threads: int, per_thread: int) -> None:
    """``n_threads`` threads each record ``per_thread`` runs; then exit normally."""
    otel_runs.configure(root)

    def work(t: int) -> None:
        for i in range(per_thread):
            with otel_runs.tracked_run(root, "test", "test:unit", summary=f"p{os.getpid()} t{t} {i}"):
                pass

    workers = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    say("finished", os.getpid())


def unsampled(root: str) -> None:
    """configure() with a sampler that drops everything: the run is still recorded."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    otel_runs.configure(root, sampler=ALWAYS_OFF)
    with otel_runs.tracked_run(root, "deploy", "deploy:k8s", summary="dropped trace") as run:
        with trace.get_tracer("child").start_as_current_span("inner"):
            pass
    sampled = run.span.get_span_context().trace_flags.sampled
    otel_runs.flush()
    say("done", run.run_id, "sampled" if sampled else "unsampled")


def fork(root: str, per_child: int, kill_child: str) -> None:
    """configure(), record one run, fork; the child records runs (and then exits
    normally, or SIGKILLs itself when ``kill_child`` is ``kill``); the parent
    records runs too, then waits and flushes."""
    import signal

    otel_runs.configure(root)
    with otel_runs.tracked_run(root, "deploy", "deploy:k8s", summary="before fork") as run:
        pass
    say("done", run.run_id)
    otel_runs.flush()  # the committer thread (and, if enabled, the commit helper) exist at fork
    pid = os.fork()
    if pid == 0:
        for i in range(per_child):
            with otel_runs.tracked_run(root, "build", "build:docker", summary=f"child {i}") as run:
                pass
            say("done", run.run_id)
        if kill_child == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(0)  # normal exit: atexit flushes the ledger
    for i in range(per_child):
        with otel_runs.tracked_run(root, "build", "build:docker", summary=f"parent {i}") as run:
            pass
        say("done", run.run_id)
    os.waitpid(pid, 0)
    otel_runs.flush()
    say("finished", os.getpid())


def soak(root: str, runs: int, ids_path: str, finish: str) -> None:
    """configure(), record ``runs`` runs through ``tracked_run`` (one thread), write
    their ids to ``ids_path`` (one a line, written once all blocks exited), then:

    * ``finish == "flush"``: ``flush()`` the ledger, print ``flushed True|False``
      and exit normally;
    * ``finish == "blocked"``: the ledger's write lock (``.git/otel-runs/write.lock``,
      the flock every writer of this ledger takes to commit) is held by this
      process from before the first run, so its committer waits on it and every
      run stays in the journal only; print ``journaled <n>`` and wait (bounded)
      to be killed. (The store stops waiting for the lock after 60 s and writes
      without it: the parent checks that the branch is still absent.)
    """
    import fcntl
    import subprocess

    lock_fd = None
    if finish == "blocked":
        git_dir = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
        private = os.path.join(root, git_dir, "otel-runs")
        os.makedirs(private, exist_ok=True)
        lock_fd = os.open(os.path.join(private, "write.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    otel_runs.configure(root)
    ids = []
    for i in range(runs):
        with otel_runs.tracked_run(root, "deploy", "deploy:k8s", summary=f"soak {i}",
                                   n=i, pid=os.getpid()) as run:
            pass
        ids.append(run.run_id)
    with open(ids_path + ".tmp", "w") as fh:
        fh.write("".join(f"{r}\n" for r in ids))
    os.replace(ids_path + ".tmp", ids_path)
    if finish == "blocked":
        say("journaled", len(ids))
        time.sleep(3600)
        return
    from otel_runs.ledger import ledger_for

    say("flushed", ledger_for(root).flush(240))


if __name__ == "__main__":
    mode, root_dir, *args = sys.argv[1:]
    if mode == "loop":
        loop(root_dir, int(args[0]) if args else 100_000)
    elif mode == "hold":
        hold(root_dir)
    elif mode == "threads":
        threads(root_dir, int(args[0]), int(args[1]))
    elif mode == "unsampled":
        unsampled(root_dir)
    elif mode == "fork":
        fork(root_dir, int(args[0]), args[1] if len(args) > 1 else "exit")
    elif mode == "soak":
        soak(root_dir, int(args[0]), args[1], args[2] if len(args) > 2 else "flush")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
