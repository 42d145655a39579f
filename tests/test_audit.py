"""The route audit finds exactly the state-changing routes that open no run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask, jsonify
from flask.cli import FlaskGroup

from otel_runs import run_tracked
from otel_runs.audit import audit_routes, untracked_routes
from otel_runs.cli import register as register_cli
from otel_runs.cli import runs_group
from otel_runs.flask import RunTracking
from otel_runs.inventory import Action

REPO = Path(__file__).resolve().parent.parent

APP_SOURCE = textwrap.dedent('''
    from flask import Flask, jsonify
    from otel_runs import run_tracked

    def create_app(untracked=True):
        app = Flask(__name__)

        @app.get("/status")
        def status():
            return jsonify(ok=True)

        @app.post("/k8s/apply")
        @run_tracked("deploy", "deploy:k8s")
        def k8s_apply():
            return jsonify(ok=True)

        @app.route("/docker/build", methods=["POST", "PUT"])
        @run_tracked("build", "build:docker")
        def docker_build():
            return jsonify(ok=True)

        if untracked:
            @app.post("/vault/unlock")
            def vault_unlock():
                return jsonify(ok=True)

        return app

    app = create_app()
    clean = create_app(untracked=False)
''')


def _app(untracked: bool = True) -> Flask:
    app = Flask(__name__)

    @app.get("/status")
    def status() -> Any:
        return jsonify(ok=True)

    @app.post("/k8s/apply")
    @run_tracked("deploy", "deploy:k8s")
    def k8s_apply() -> Any:
        return jsonify(ok=True)

    if untracked:
        @app.post("/vault/unlock")
        def vault_unlock() -> Any:
            return jsonify(ok=True)

    return app


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: Any) -> str:
    """A module file in a tmp dir (unique name: no sys.modules reuse between tests)."""
    name = f"auditapp_{request.node.name.replace('[', '_').replace(']', '_')}"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_finds_exactly_the_untracked_post_route() -> None:
    found = untracked_routes(_app())
    assert [(r.method, r.rule, r.endpoint) for r in found] == [("POST", "/vault/unlock",
                                                                 "vault_unlock")]
    assert found[0].view.endswith("vault_unlock") and not found[0].tracked
    assert untracked_routes(_app(untracked=False)) == []


def test_every_state_changing_method_counts_and_reads_do_not() -> None:
    app = Flask(__name__)

    @app.route("/item", methods=["GET", "PUT", "PATCH", "DELETE"])
    def item() -> Any:
        return jsonify(ok=True)

    found = untracked_routes(app)
    assert [r.method for r in found] == ["PUT", "PATCH", "DELETE"]
    assert all(r.method not in ("GET", "HEAD", "OPTIONS") for r in audit_routes(app))


def test_inventory_wired_routes_count_as_tracked_per_method(collector: Any) -> None:
    app = Flask(__name__)
    RunTracking(app, ledger=False)  # the explicit rows below are wired by the audit itself
    from otel_runs._wiring import wire_actions

    @app.route("/vault/unlock", methods=["POST", "PUT"])
    def vault_unlock() -> Any:
        return jsonify(ok=True)

    wire_actions(app, [Action("Vault", "/vault/unlock", "POST", "setup", "setup:vault_unlock",
                              "Unlock vault")])
    routes = {(r.method, r.rule): r.subtype for r in audit_routes(app)}
    assert routes == {("POST", "/vault/unlock"): "setup:vault_unlock",
                      ("PUT", "/vault/unlock"): None}


def test_actions_recorded_by_run_tracking_are_wired_before_the_audit(collector: Any) -> None:
    from otel_runs._wiring import register
    from otel_runs.flask import _register_app_hook

    _register_app_hook(register)
    app = Flask(__name__)
    RunTracking(app, actions=[Action("Vault", "/vault/unlock", "POST", "setup",
                                     "setup:vault_unlock", "Unlock vault")], ledger=False)

    @app.post("/vault/unlock")  # registered after init_app, as in an app factory
    def vault_unlock() -> Any:
        return jsonify(ok=True)

    assert untracked_routes(app) == []


def test_cli_exit_codes_and_table(app_module: str) -> None:
    runner = CliRunner()
    bad = runner.invoke(runs_group, ["audit", f"{app_module}:app"])
    assert bad.exit_code == 1
    lines = bad.stdout.strip().splitlines()
    assert lines[0].startswith("UNTRACKED POST   /vault/unlock")
    assert lines[-1] == f"1 of 4 state-changing routes of {app_module} open no run"
    good = runner.invoke(runs_group, ["audit", f"{app_module}:clean"])
    assert good.exit_code == 0, good.output
    factory = runner.invoke(runs_group, ["audit", f"{app_module}:create_app(untracked=False)"])
    assert factory.exit_code == 0, factory.output
    shown = runner.invoke(runs_group, ["audit", "--all", f"{app_module}:clean"])
    assert "tracked   POST   /k8s/apply" in shown.stdout and "[deploy:k8s]" in shown.stdout


def test_cli_json(app_module: str) -> None:
    result = CliRunner().invoke(runs_group, ["audit", "--json", f"{app_module}:app"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["total"] == 4
    assert [(r["method"], r["rule"], r["tracked"]) for r in data["untracked"]] == [
        ("POST", "/vault/unlock", False)]
    assert sorted((r["method"], r["rule"], r["subtype"]) for r in data["tracked"]) == [
        ("POST", "/docker/build", "build:docker"), ("POST", "/k8s/apply", "deploy:k8s"),
        ("PUT", "/docker/build", "build:docker")]


def test_cli_load_errors_are_one_line(app_module: str) -> None:
    runner = CliRunner()
    for spec, needle in [("no_such_module_xyz:app", "no_such_module_xyz"),
                         (f"{app_module}:nothing", "nothing")]:
        result = runner.invoke(runs_group, ["audit", spec])
        assert result.exit_code != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], lines
    missing = runner.invoke(runs_group, ["audit"])
    assert missing.exit_code != 0 and "MODULE:APP" in missing.stderr


def test_flask_runs_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_RUN_FROM_CLI", "")
    app = _app()
    register_cli(app, None)
    result = CliRunner().invoke(FlaskGroup(create_app=lambda: app), ["runs", "audit", "--json"])
    assert result.exit_code == 1
    assert [r["rule"] for r in json.loads(result.stdout)["untracked"]] == ["/vault/unlock"]


def test_audit_as_a_real_subprocess(app_module: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLASK_RUN_FROM_CLI"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    bad = subprocess.run([sys.executable, "-m", "otel_runs.cli", "audit", f"{app_module}:app"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "/vault/unlock" in bad.stdout
    good = subprocess.run([sys.executable, "-m", "otel_runs.cli", "audit", f"{app_module}:clean"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
