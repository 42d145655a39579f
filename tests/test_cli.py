"""The otel-runs command line: click's runner for each command, and real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from conftest import free_port, git, user_state, wait_until
from flask import Flask, jsonify
from flask.cli import FlaskGroup

import otel_runs
from otel_runs import cli as cli_module
from otel_runs import run_tracked, tracked_run
from otel_runs.cli import make_serve_app, runs_group
from otel_runs.flask import RunTracking

REPO = Path(__file__).resolve().parent.parent


def _record(root: Path) -> list[str]:
    """Three runs in ``root``'s ledger (one failed, one with a secret and an event)."""
    otel_runs.configure(root)
    ids = []
    with tracked_run(root, "deploy", "deploy:k8s", summary="applied 3", token="s3cr3t") as run:
        run.add_event("kubectl", step="apply")
        ids.append(run.run_id)
    with pytest.raises(RuntimeError):
        with tracked_run(root, "build", "build:docker") as run:
            ids.append(run.run_id)
            raise RuntimeError("docker daemon not running")
    with tracked_run(root, "git", "git:push", summary="pushed") as run:
        ids.append(run.run_id)
    otel_runs.flush()
    return ids


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(runs_group, list(args), catch_exceptions=False)


def _one_line_error(result: Any, needle: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], lines
    assert "Traceback" not in result.output


def _env() -> dict[str, str]:
    """The child's environment: this checkout importable, no default project root
    (so a command without --project uses its current directory)."""
    env = {k: v for k, v in os.environ.items() if k != "OTEL_RUNS_PROJECT_ROOT"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


# -- click runner ----------------------------------------------------------------------------

def test_list_shows_a_table_and_filters(git_repo: Path) -> None:
    ids = _record(git_repo)
    result = _invoke("--project", str(git_repo), "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("RUN ID") and len(lines) == 4
    assert [ln.split()[0] for ln in lines[1:]] == ids[::-1]  # newest first
    failed = _invoke("list", "--project", str(git_repo), "--status", "failed", "--json")
    assert [r["run_id"] for r in json.loads(failed.stdout)] == [ids[1]]
    deploys = _invoke("--project", str(git_repo), "list", "--type", "deploy", "--json")
    assert [r["subtype"] for r in json.loads(deploys.stdout)] == ["deploy:k8s"]
    limited = _invoke("--project", str(git_repo), "list", "--limit", "1", "--json")
    assert len(json.loads(limited.stdout)) == 1


def test_show_prints_the_run_with_events_and_redacted_metadata(git_repo: Path) -> None:
    ids = _record(git_repo)
    result = _invoke("--project", str(git_repo), "show", ids[0])
    assert result.exit_code == 0
    assert f"run:         {ids[0]}" in result.stdout
    assert 'token = "***"' in result.stdout and "s3cr3t" not in result.stdout
    assert "kubectl  (step=apply)" in result.stdout
    as_json = json.loads(_invoke("--project", str(git_repo), "show", ids[1], "--json").stdout)
    assert as_json["status"] == "failed" and as_json["summary"] == "docker daemon not running"
    assert "spans" in as_json


def test_expected_errors_are_one_line(git_repo: Path, tmp_path: Path) -> None:
    _record(git_repo)
    _one_line_error(_invoke("--project", str(git_repo), "show", "../../etc/passwd"),
                    "malformed run id")
    _one_line_error(_invoke("--project", str(git_repo), "show", "20261127T101500123Z-3fa9c2d1e5"),
                    "no run 20261127T101500123Z-3fa9c2d1e5")
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    _one_line_error(_invoke("--project", str(plain), "list"), str(plain))
    _one_line_error(_invoke("--project", str(tmp_path / "missing"), "list"), "does not exist")
    _one_line_error(_invoke("--project", str(plain), "verify"), str(plain))
    _one_line_error(_invoke("--project", str(git_repo), "sync", "nowhere"), "unknown remote")
    _one_line_error(_invoke("tail", "--url", f"http://127.0.0.1:{free_port()}",
                            "--timeout", "5"), "cannot reach")
    _one_line_error(_invoke("tail", "--url", "ftp://x"), "http(s) URL")
    _one_line_error(_invoke("--project", str(plain), "serve"), str(plain))


def test_verify_passes_then_reports_problems(git_repo: Path) -> None:
    ids = _record(git_repo)
    ok = _invoke("--project", str(git_repo), "verify")
    assert ok.exit_code == 0 and "3 runs, 3 tags on scp-ledger: ok" in ok.stdout
    before = user_state(git_repo)
    git(git_repo, "tag", "-d", f"scp-run/{ids[0]}")
    git(git_repo, "tag", "scp-run/20200101T000000000Z-0000000000", "main")
    bad = _invoke("--project", str(git_repo), "verify", "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    kinds = sorted((p["kind"], p["subject"]) for p in report["problems"])
    assert kinds == [("missing-tag", ids[0]),
                     ("orphan-tag", "scp-run/20200101T000000000Z-0000000000")]
    assert user_state(git_repo) == before  # verify never writes


def test_verify_finds_an_unparsable_run_file(git_repo: Path, tmp_path: Path) -> None:
    ids = _record(git_repo)
    files = git(git_repo, "ls-tree", "-r", "--name-only", "scp-ledger").split()
    target = next(f for f in files if f.endswith(f"{ids[2]}/run.json"))
    blob = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=git_repo,
                          input="{not json", capture_output=True, text=True).stdout.strip()
    index = tmp_path / "private-index"
    env = {**os.environ, "GIT_INDEX_FILE": str(index)}
    subprocess.run(["git", "read-tree", "scp-ledger"], cwd=git_repo, env=env, check=True)
    subprocess.run(["git", "update-index", "--cacheinfo", f"100644,{blob},{target}"],
                   cwd=git_repo, env=env, check=True)
    tree = subprocess.run(["git", "write-tree"], cwd=git_repo, env=env, capture_output=True,
                          text=True, check=True).stdout.strip()
    commit = git(git_repo, "commit-tree", tree, "-p", "scp-ledger", "-m", "hand edit").strip()
    git(git_repo, "update-ref", "refs/heads/scp-ledger", commit)
    bad = _invoke("--project", str(git_repo), "verify")
    assert bad.exit_code == 1
    assert f"unparsable: {target}" in bad.stdout


def test_tail_follows_the_ledger(git_repo: Path) -> None:
    last_old = _record(git_repo)[-1]
    result: dict[str, Any] = {}

    def follow() -> None:
        result["r"] = CliRunner().invoke(runs_group, [
            "--project", str(git_repo), "tail", "--json", "--count", "2", "--interval", "0.05",
            "--timeout", "60", "--after", last_old])

    thread = threading.Thread(target=follow)
    thread.start()
    new = []
    for i in range(2):
        with tracked_run(git_repo, "test", "test:run", summary=f"new {i}") as run:
            new.append(run.run_id)
    thread.join(timeout=90)
    assert not thread.is_alive()
    lines = [json.loads(ln) for ln in result["r"].stdout.splitlines()]
    # Each run once as completed, in order; a run the poll saw while it was running is
    # also said as started, before its completion.
    assert [ln["run"]["run_id"] for ln in lines if ln["event"] == "run:completed"] == new
    started = [ln["run"]["run_id"] for ln in lines if ln["event"] == "run:started"]
    assert len(started) == len(set(started)) and set(started) <= set(new)
    for run_id in started:
        order = [(ln["event"], ln["run"]["run_id"]) for ln in lines]
        assert order.index(("run:started", run_id)) < order.index(("run:completed", run_id))
    assert {ln["event"] for ln in lines} <= {"run:started", "run:completed"}
    assert result["r"].exit_code == 0


def test_tail_after_rejects_a_bad_id_in_one_line(git_repo: Path) -> None:
    result = CliRunner().invoke(runs_group, ["--project", str(git_repo), "tail", "--after", "../x"])
    assert result.exit_code != 0
    assert "malformed run id" in result.output and "Traceback" not in result.output


def _tracked_app(root: Path) -> Flask:
    app = Flask(__name__)
    app.config["PROJECT_ROOT"] = str(root)

    @app.post("/deploy")
    @run_tracked("deploy", "deploy:k8s")
    def deploy() -> Any:
        return jsonify(ok=True, summary="deployed")

    RunTracking(app)
    if "otel_runs" not in app.blueprints:
        from otel_runs import api

        api.register(app, app.extensions["otel_runs"])
    return app


def test_tail_follows_a_servers_event_stream(git_repo: Path, live_server: Any) -> None:
    server = live_server(_tracked_app(git_repo))
    proc = subprocess.Popen(
        [sys.executable, "-m", "otel_runs.cli", "tail", "--url", server.url, "--count", "1",
         "--timeout", "60", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_env(), cwd=git_repo)
    try:
        assert proc.stderr is not None
        # stderr says "following" only once the stream is connected
        assert "following runs from" in proc.stderr.readline()
        run_id = requests.post(server.url + "/deploy", timeout=30).json()["run_id"]
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    events = [json.loads(ln) for ln in out.splitlines()]
    assert [(e["event"], e["run"]["run_id"]) for e in events] == [
        ("run:started", run_id), ("run:completed", run_id)]
    assert events[1]["run"]["status"] == "ok"


def test_the_serve_app_serves_the_api_over_the_ledger(git_repo: Path) -> None:
    ids = _record(git_repo)
    client = make_serve_app(str(git_repo)).test_client()
    recent = client.get("/api/runs/recent").get_json()
    items = recent["runs"] if isinstance(recent, dict) else recent
    assert [r["run_id"] for r in items] == ids[::-1]
    assert client.get("/").status_code in (301, 302)
    assert client.get("/runs").status_code == 200


def test_audit_and_export_otlp_are_mounted() -> None:
    assert {"list", "show", "tail", "serve", "sync", "verify", "demo", "audit"} <= set(
        runs_group.commands)
    try:
        import otel_runs.backfill  # noqa: F401
    except ImportError:
        pytest.skip("otel_runs.backfill is not in this tree")
    assert "export-otlp" in runs_group.commands


def test_export_otlp_without_endpoint_is_one_line(git_repo: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if "export-otlp" not in runs_group.commands:
        pytest.skip("otel_runs.backfill is not in this tree")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    _record(git_repo)
    result = _invoke("--project", str(git_repo), "export-otlp")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_flask_runs_uses_the_apps_project_root(git_repo: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "")  # FlaskGroup sets it; restore afterwards
    ids = _record(git_repo)
    app = _tracked_app(git_repo)
    cli_module.register(app, app.extensions["otel_runs"])
    group = FlaskGroup(create_app=lambda: app)
    result = CliRunner().invoke(group, ["runs", "list", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [r["run_id"] for r in json.loads(result.stdout)] == ids[::-1]


# -- real subprocesses -------------------------------------------------------------------------

def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "otel_runs.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=_env())


def test_real_subprocesses_list_show_verify_and_errors(git_repo: Path) -> None:
    ids = _record(git_repo)
    listed = _run_cli("list", "--json", cwd=git_repo)  # project = the current directory
    assert listed.returncode == 0, listed.stderr
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ids[::-1]
    shown = subprocess.run([sys.executable, "-m", "otel_runs", "--project", str(git_repo),
                            "show", ids[0]], capture_output=True, text=True, timeout=120,
                           env=_env())
    assert shown.returncode == 0 and ids[0] in shown.stdout
    verified = _run_cli("verify", cwd=git_repo)
    assert verified.returncode == 0 and ": ok" in verified.stdout
    bad = _run_cli("show", "nope", cwd=git_repo)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "Error: malformed run id 'nope': expected e.g. '20261127T101500123Z-3fa9c2d1e5'"]


def _wait_http(url: str, proc: subprocess.Popen[str]) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"server exited with {proc.returncode}: {err}")
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, timeout=60, interval=0.2)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_real_serve_subprocess(git_repo: Path) -> None:
    ids = _record(git_repo)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "otel_runs.cli", "--project", str(git_repo),
                             "serve", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_http(f"http://127.0.0.1:{port}/runs", proc)
        run = requests.get(f"http://127.0.0.1:{port}/api/runs/{ids[0]}", timeout=10).json()["run"]
        assert run["run_id"] == ids[0] and run["metadata"]["token"] == "***"
    finally:
        _stop(proc)


def test_real_demo_subprocess_records_runs_readable_by_the_cli(tmp_path: Path) -> None:
    port = free_port()
    where = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "otel_runs.cli", "demo", "--port", str(port),
                             "--dir", str(where), "--delay", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc)
        resp = requests.post(f"http://127.0.0.1:{port}/git/commit",  # the demo's page sends it
                             json={"message": "from the test"}, headers={"X-Otel-Runs-CSRF": "1"},
                             timeout=60).json()
        assert resp["ok"] and resp["summary"].startswith("Committed")

        def listed() -> Any:
            out = _run_cli("--project", str(where / "project"), "list", "--json", cwd=tmp_path)
            runs = json.loads(out.stdout) if out.returncode == 0 else []
            return [r for r in runs if r["run_id"] == resp["run_id"]]

        (run,) = wait_until(listed, timeout=60, interval=0.5)
        assert run["subtype"] == "git:commit" and run["status"] == "ok"
    finally:
        _stop(proc)
    assert proc.stdout is not None
    banner = proc.stdout.read()
    assert str(where) in banner and f"http://127.0.0.1:{port}/" in banner


def test_installed_console_script(git_repo: Path) -> None:
    import shutil

    exe = shutil.which("otel-runs")
    if exe is None:
        pytest.skip("the otel-runs console script is not installed (pip install -e .)")
    _record(git_repo)
    out = subprocess.run([exe, "--project", str(git_repo), "list"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("RUN ID")
