"""Run output: captured from run.log / run.output / logging / run_command, bounded,
scrubbed, journaled as it comes, stored as output.log beside run.json, read back through
the ledger, the API and the CLI. Real git repositories, real subprocesses, real Flask."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import git
from flask import Flask

import otel_runs
from otel_runs import api
from otel_runs.cli import runs_group as cli_main
from otel_runs.flask import RunTracking
from otel_runs.ledger import ledger_for


def texts(lines: list[dict[str, Any]] | None) -> list[str]:
    return [line["text"] for line in lines or []]


def make_app(root: Path) -> Flask:
    app = Flask(f"output-{root.name}")
    app.config["PROJECT_ROOT"] = str(root)
    RunTracking(app)
    api.register(app, app.extensions["otel_runs"])
    return app


def output_file(repo: Path, run_id: str) -> str:
    names = git(repo, "ls-tree", "-r", "--name-only", "scp-ledger").split()
    (path,) = [n for n in names if n.endswith(f"{run_id}/output.log")]
    return git(repo, "show", f"scp-ledger:{path}")


def test_run_log_output_file_and_logging_are_kept_in_order(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    lib = logging.getLogger("tests.lib")
    lib.setLevel(logging.INFO)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        run.log("first\nsecond")
        print("printed", 3, file=run.output)
        run.output.write("partial ")
        run.output.write("line\n")
        lib.info("from the library %s", "web")
        lib.debug("below the level: not made at all")
        logging.getLogger("otel_runs.anything").warning("otel-runs' own: not captured")
        run.log("to stderr", stream="err")
    ledger = ledger_for(git_repo)
    before = ledger.output(run.run_id)  # journaled, not committed yet
    assert ledger.flush(30)
    lines = ledger.output(run.run_id)
    assert lines == before
    assert texts(lines) == ["first", "second", "printed 3", "partial line",
                            "from the library web", "to stderr"]
    assert [line["n"] for line in lines] == list(range(6))
    log = lines[4]
    assert (log["stream"], log["level"], log["logger"]) == ("log", "INFO", "tests.lib")
    assert lines[5]["stream"] == "err"
    assert all(0 <= line["t"] < 60 for line in lines)
    stored = output_file(git_repo, run.run_id).splitlines()
    assert stored[0].split("\t")[0:1] == ["0"] and stored[0].endswith("\tout\tfirst")
    assert stored[4].split("\t")[2:] == ["log:INFO:tests.lib", "from the library web"]


def test_a_run_without_output_has_no_file_and_an_empty_output(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        pass
    ledger = ledger_for(git_repo)
    assert ledger.flush(30)
    assert ledger.output(run.run_id) == []
    names = git(git_repo, "ls-tree", "-r", "--name-only", "scp-ledger")
    assert "output.log" not in names
    assert ledger.output("20200101T000000000Z-0000000000") is None


def test_a_finished_runs_output_is_freed_by_reference_counting(git_repo: Path) -> None:
    """No cycle (the run and its output) and no tick of the flusher holds a finished run's
    lines: at thousands of runs a second, the garbage collector would sweep them."""
    app = make_app(git_repo)  # every sink: journal, live feed
    assert app.extensions["otel_runs"].extra.get("hub") is not None
    gc.collect()
    gc.disable()
    try:
        refs = []
        for i in range(50):
            with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
                run.log(f"step {i}: applied deployment/web")
                print("and through the file", file=run.output)
                logging.getLogger("tests.freed").warning("and through logging")
                buffer = run.output_buffer()
                assert buffer is not None
                refs.append(weakref.ref(buffer))
            del run, buffer
        alive = sum(ref() is not None for ref in refs)
    finally:
        gc.enable()
    assert alive == 0
    assert otel_runs.flush()


def test_secrets_and_control_sequences_never_reach_the_ledger(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    otel_runs.add_secret_values("s3cr3t-vault-token-value")
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        run.log("token is s3cr3t-vault-token-value")
        run.log("password=hunter2 and Authorization: Bearer abcdefghijklmnop123456")
        run.log("\x1b[31mred\x1b[0m \x1b]0;set the title\x07 \x1b[2Jclear \x07bell \ud800")
        run.log("progress 10%\rprogress 100%")
    ledger = ledger_for(git_repo)
    assert ledger.flush(30)
    got = texts(ledger.output(run.run_id))
    stored = output_file(git_repo, run.run_id)
    journal = b"".join(p.read_bytes() for p in Path(ledger.journal_dir).glob("*.jsonl"))
    for where in (" ".join(got), stored, journal.decode("utf-8", "replace")):
        assert "s3cr3t-vault-token-value" not in where
        assert "hunter2" not in where and "abcdefghijklmnop123456" not in where
        assert "\x1b]0;" not in where and "\x1b[2J" not in where and "\x07" not in where
    assert got[2] == "\x1b[31mred\x1b[0m  clear bell \ufffd"  # colours kept, the rest gone
    assert got[3] == "progress 100%"


def test_output_beyond_the_cap_keeps_head_and_tail_with_one_marker(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RUNS_OUTPUT_MAX_BYTES", "65536")
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "test", "test:pytest") as run:
        for i in range(20_000):
            run.log(f"line {i:05d} " + "x" * 40)
    ledger = ledger_for(git_repo)
    assert ledger.flush(60)
    lines = ledger.output(run.run_id)
    assert lines is not None
    assert lines[0]["text"].startswith("line 00000") and lines[-1]["text"].startswith("line 19999")
    (marker,) = [line for line in lines if line["stream"] == "meta"]
    assert "lines" in marker["text"] and "dropped" in marker["text"]
    size = sum(len(line["text"]) + 24 for line in lines)
    assert size <= 65536 + 200
    numbers = [line["n"] for line in lines if line["stream"] != "meta"]
    assert numbers == sorted(numbers) and numbers[-1] == 19_999
    # the line numbers say what is missing: the API counts it
    app = make_app(git_repo)
    body = app.test_client().get(f"/api/runs/{run.run_id}/output").get_json()
    assert body["dropped"] == 20_000 - len(numbers)
    assert body["complete"] is True


def test_logging_is_attributed_to_the_run_of_its_thread(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    lib = logging.getLogger("tests.threads")
    lib.setLevel(logging.INFO)
    barrier = threading.Barrier(2)
    ids: dict[str, str] = {}

    def work(name: str) -> None:
        with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
            ids[name] = run.run_id
            for i in range(50):
                barrier.wait(10)  # the two runs log in turn, interleaved
                lib.info("%s %d", name, i)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("alpha", "beta")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ledger = ledger_for(git_repo)
    assert ledger.flush(30)
    for name in ("alpha", "beta"):
        assert texts(ledger.output(ids[name])) == [f"{name} {i}" for i in range(50)]


def test_logging_is_attributed_to_the_run_of_its_task(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    lib = logging.getLogger("tests.tasks")
    lib.setLevel(logging.INFO)
    ids: dict[str, str] = {}

    async def work(name: str) -> None:
        async with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
            ids[name] = run.run_id
            for i in range(30):
                lib.info("%s %d", name, i)
                await asyncio.sleep(0)

    async def both() -> None:
        await asyncio.gather(work("one"), work("two"))

    asyncio.run(both())
    ledger = ledger_for(git_repo)
    assert ledger.flush(30)
    for name in ("one", "two"):
        assert texts(ledger.output(ids[name])) == [f"{name} {i}" for i in range(30)]


def test_the_capture_leaves_the_applications_logging_alone(git_repo: Path) -> None:
    """basicConfig after configure() still configures (the root logger gets no handler),
    and logging's last resort still prints warnings when nothing else does."""
    script = f"""
import logging, sys
import otel_runs
otel_runs.configure({str(git_repo)!r})
assert logging.getLogger().handlers == []
logging.getLogger("x").warning("last resort still prints")
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
with otel_runs.tracked_run({str(git_repo)!r}, "deploy", "deploy:k8s") as run:
    logging.getLogger("app").info("inside the run")
from otel_runs.ledger import ledger_for
ledger = ledger_for({str(git_repo)!r})
assert [l["text"] for l in ledger.output(run.run_id)] == ["inside the run"]
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["app inside the run", "ok"]
    assert "last resort still prints" in proc.stderr


def test_run_command_streams_both_pipes_and_records_the_command(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    child = ("import sys, time\n"
             "for i in range(3):\n"
             "    print('out', i, flush=True); time.sleep(0.05)\n"
             "    print('err', i, file=sys.stderr, flush=True); time.sleep(0.05)\n"
             "sys.stdout.write('no newline at the end')\n"
             "sys.exit(3)\n")
    with otel_runs.tracked_run(git_repo, "test", "test:pytest") as run:
        result = otel_runs.run_command([sys.executable, "-c", child, "--token=abc123secret"])
    assert result.returncode == 3 and not result.timed_out
    assert result.stdout == "out 0\nout 1\nout 2\nno newline at the end"
    assert result.stderr == "err 0\nerr 1\nerr 2\n"
    with pytest.raises(subprocess.CalledProcessError):
        result.check_returncode()
    ledger = ledger_for(git_repo)
    assert ledger.flush(30)
    lines = ledger.output(run.run_id) or []
    # each pipe in its order (two pipes read by two threads have no order between them)
    assert [line["text"] for line in lines if line["stream"] == "out"] == [
        "out 0", "out 1", "out 2", "no newline at the end"]
    assert [line["text"] for line in lines if line["stream"] == "err"] == [
        "err 0", "err 1", "err 2"]
    assert [line["n"] for line in lines] == list(range(7))
    stored = ledger.get(run.run_id)
    assert stored is not None and stored.metadata["exit_code"] == 3
    assert "abc123secret" not in stored.metadata["command"]


def test_run_command_timeout_kills_the_child_and_says_so(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "test", "test:pytest") as run:
        result = otel_runs.run_command(["sh", "-c", "echo started; exec sleep 60"],
                                       timeout=2.0)
        with pytest.raises(subprocess.TimeoutExpired):
            otel_runs.run_command(["sleep", "60"], timeout=0.5, check=True)
    assert result.timed_out and result.returncode == -9
    with pytest.raises(TypeError):
        otel_runs.run_command("echo no shell")
    assert otel_runs.run_command("echo $((1+2))", shell=True).stdout == "3\n"
    ledger = ledger_for(git_repo)
    assert ledger.flush(30)
    got = texts(ledger.output(run.run_id))
    assert got[0] == "started" and "timeout" in got[1]


def test_the_api_answers_json_text_and_errors(git_repo: Path) -> None:
    app = make_app(git_repo)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        for i in range(5):
            run.log(f"step {i}")
    client = app.test_client()
    body = client.get(f"/api/runs/{run.run_id}/output").get_json()
    assert [line["text"] for line in body["lines"]] == [f"step {i}" for i in range(5)]
    assert body["next"] == 4 and body["complete"] is True and body["dropped"] == 0
    later = client.get(f"/api/runs/{run.run_id}/output?after=2").get_json()
    assert [line["n"] for line in later["lines"]] == [3, 4]
    assert client.get(f"/api/runs/{run.run_id}/output?after=4").get_json()["lines"] == []
    text = client.get(f"/api/runs/{run.run_id}/output?format=text&download=1")
    assert text.mimetype == "text/plain" and text.data == b"step 0\nstep 1\nstep 2\nstep 3\nstep 4\n"
    assert "attachment" in text.headers["Content-Disposition"]
    for url, status in ((f"/api/runs/{run.run_id}/output?after=x", 400),
                        (f"/api/runs/{run.run_id}/output?format=html", 400),
                        ("/api/runs/not-an-id/output", 400),
                        ("/api/runs/20200101T000000000Z-0000000000/output", 404)):
        resp = client.get(url)
        assert resp.status_code == status and resp.mimetype == "application/json"
        assert resp.get_json()["error"]


def test_the_cli_prints_a_runs_output(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
        run.log("\x1b[32mgreen\x1b[0m line")
        logging.getLogger("tests.cli").warning("careful")
    assert ledger_for(git_repo).flush(30)
    runner = CliRunner()
    plain = runner.invoke(cli_main, ["logs", run.run_id, "--project", str(git_repo)])
    assert plain.exit_code == 0, plain.output
    assert plain.output.splitlines() == ["green line", "WARNING tests.cli: careful"]
    colored = runner.invoke(cli_main, ["logs", run.run_id, "--project", str(git_repo),
                                       "--color", "always"], color=True)
    assert "\x1b[32mgreen\x1b[0m line" in colored.output
    as_json = runner.invoke(cli_main, ["logs", run.run_id, "--project", str(git_repo), "--json"])
    assert [json.loads(x)["n"] for x in as_json.output.splitlines()] == [0, 1]
    missing = runner.invoke(cli_main, ["logs", "20200101T000000000Z-0000000000",
                                       "--project", str(git_repo)])
    assert missing.exit_code != 0 and len(missing.output.strip().splitlines()) == 1


def test_the_cli_follows_a_running_runs_output_until_it_ends(git_repo: Path) -> None:
    otel_runs.configure(git_repo)
    started, printed, ids = threading.Event(), threading.Event(), []

    def action() -> None:
        with otel_runs.tracked_run(git_repo, "deploy", "deploy:k8s") as run:
            run.log("one")
            ids.append(run.run_id)
            started.set()
            printed.wait(60)  # the CLI, in another process, printed the first line
            run.log("two")
            run.log("three", stream="err")

    thread = threading.Thread(target=action)
    thread.start()
    try:
        assert started.wait(30)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "otel_runs.cli", "logs", ids[0], "--follow", "--interval",
             "0.05", "--timeout", "60", "--project", str(git_repo)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        watchdog = threading.Timer(90, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "one\n"  # while the run is still running
            assert thread.is_alive()
            printed.set()
            rest, err = proc.communicate(timeout=60)  # it stops by itself when the run ends
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
    finally:
        printed.set()
        thread.join(60)
    assert proc.returncode == 0, err
    assert rest.splitlines() == ["two", "three"]
