"""The ``otel-runs`` command's mistakes, as a user meets them: real ``otel-runs``
subprocesses, each expected error one line on stderr and a non-zero exit status, a closed
pipe silent, Ctrl-C exit 130 without a traceback, nothing left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port
from otlp_receiver import refused_endpoint

import otel_runs

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("otel-runs")
#: What the console script runs (``[project.scripts]``), for the runs that need a hook.
ENTRY = "import sys; from otel_runs import _main; sys.argv[0] = 'otel-runs'; sys.exit(_main())"


def _env(tmp: Path | None = None) -> dict[str, str]:
    """This checkout importable first; no default project root; temporary files in ``tmp``."""
    env = {k: v for k, v in os.environ.items() if k != "OTEL_RUNS_PROJECT_ROOT"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    if tmp is not None:
        env["TMPDIR"] = str(tmp)
    return env


def _otel_runs(*args: str, cwd: Path, tmp: Path | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} is not installed (pip install -e .)")
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_env(tmp))


def _one_line(proc: subprocess.CompletedProcess[str], status: int, needle: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def _record(root: Path, n: int = 3) -> list[str]:
    otel_runs.configure(root)
    ids = []
    for i in range(n):
        with otel_runs.tracked_run(root, "deploy", "deploy:k8s" if i % 2 else "deploy:helm_upgrade",
                                   summary=f"deploy {i}") as run:
            ids.append(run.run_id)
    otel_runs.flush()
    from otel_runs.ledger import ledger_for

    ledger_for(root).flush()
    return ids


def test_version_comes_from_the_package(tmp_path: Path) -> None:
    out = _otel_runs("--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"otel-runs {otel_runs.__version__}"
    assert "--version" in _otel_runs("--help", cwd=tmp_path).stdout


def test_usage_errors_are_one_line_with_exit_2(git_repo: Path) -> None:
    _one_line(_otel_runs("lst", cwd=git_repo), 2, "No such command 'lst'")
    _one_line(_otel_runs("list", "--status", "nope", cwd=git_repo), 2, "'--status'")
    _one_line(_otel_runs("list", "--limit", "0", cwd=git_repo), 2, "'--limit'")


def test_list_filters_are_checked_like_the_api(git_repo: Path) -> None:
    ids = _record(git_repo)
    line = _one_line(_otel_runs("--project", str(git_repo), "list", "--type", "nonsense",
                                cwd=git_repo), 2, "unknown run type 'nonsense'")
    assert "valid: backup, build, ci, deploy, destroy" in line
    _one_line(_otel_runs("--project", str(git_repo), "list", "--type", "deploy:k8s",
                         cwd=git_repo), 2, "use --subtype deploy:k8s")
    _one_line(_otel_runs("--project", str(git_repo), "list", "--subtype", "deploy",
                         cwd=git_repo), 2, "is not TYPE:DETAIL")
    _one_line(_otel_runs("--project", str(git_repo), "list", "--subtype", "nope:k8s",
                         cwd=git_repo), 2, "unknown run type 'nope'")
    _one_line(_otel_runs("--project", str(git_repo), "list", "--type", "build", "--subtype",
                         "deploy:k8s", cwd=git_repo), 2, "not a subtype of --type build")
    found = _otel_runs("--project", str(git_repo), "list", "--subtype", "deploy:k8s",
                       cwd=git_repo)
    assert found.returncode == 0, found.stderr
    assert [ln.split()[0] for ln in found.stdout.splitlines()[1:]] == [ids[1]]


def test_a_type_registered_by_the_application_is_accepted(git_repo: Path) -> None:
    """The command does not know an application's own run types; the ledger does."""
    app = ("import otel_runs\n"
           "otel_runs.register_run_type('migrate', 'Database migrations')\n"
           "with otel_runs.tracked_run('.', 'migrate', 'migrate:schema') as run:\n"
           "    print(run.run_id)\n")
    recorded = subprocess.run([sys.executable, "-c", app], cwd=git_repo, capture_output=True,
                              text=True, timeout=120, env=_env())
    assert recorded.returncode == 0, recorded.stderr
    out = _otel_runs("--project", str(git_repo), "list", "--type", "migrate", cwd=git_repo)
    assert out.returncode == 0 and recorded.stdout.strip() in out.stdout, out.stderr
    _one_line(_otel_runs("--project", str(git_repo), "list", "--type", "migrat", cwd=git_repo),
              2, "unknown run type 'migrat'")


def test_a_project_that_is_a_file_or_missing_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "passwd"
    afile.write_text("root:x:0:0\n")
    _one_line(_otel_runs("--project", str(afile), "list", cwd=tmp_path), 1, "is not a directory")
    _one_line(_otel_runs("--project", str(tmp_path / "gone"), "list", cwd=tmp_path), 1,
              "does not exist")


def test_a_closed_stdout_ends_the_command_silently(git_repo: Path) -> None:
    _record(git_repo, 5)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run([str(SCRIPT), "--project", str(git_repo), "list", "--limit", "200"],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              env=_env())
    finally:
        os.close(write)
    assert proc.returncode == 1 and proc.stderr == ""


def test_list_into_head_prints_no_error(git_repo: Path) -> None:
    _record(git_repo, 300)
    proc = subprocess.run(f"'{SCRIPT}' --project '{git_repo}' list --limit 200 | head -2",
                          shell=True, capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 2


def _interrupted(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the console script's entry with ``code`` first (a hook that sends SIGINT)."""
    return subprocess.run([sys.executable, "-c", f"{code}\n{ENTRY}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=_env())


_SIGINT_ON_IMPORT = """
import os, signal, sys
class _Hook:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, _Hook())
"""


@pytest.mark.parametrize("module", ["click", "opentelemetry.sdk.trace", "otel_runs.ledger"])
def test_ctrl_c_while_loading_or_running_exits_130_quietly(git_repo: Path, module: str) -> None:
    """SIGINT while the command line loads (click, the SDK) and while the command runs
    (the ledger is imported when ``list`` opens it)."""
    _record(git_repo)
    proc = _interrupted(_SIGINT_ON_IMPORT.format(module=module), "--project", str(git_repo),
                        "list", cwd=git_repo)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert proc.stdout == ""


def test_ctrl_c_at_any_moment_of_a_real_command(git_repo: Path) -> None:
    _record(git_repo)
    if not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} is not installed (pip install -e .)")
    ours = 0
    for delay in (0.15, 0.25, 0.35, 0.5, 0.7, 1.0, 1.5, 2.0):
        proc = subprocess.Popen([str(SCRIPT), "--project", str(git_repo), "list"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env())
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        if "init_import_site" in err:
            # The interpreter itself was still starting (importing ``site``, before any
            # code of the command runs: a loaded machine): nothing of ours to judge.
            continue
        ours += 1
        # 130, or killed by SIGINT itself once Python restored its default during exit (a
        # shell shows both as 130), or 0 when the command had finished
        assert proc.returncode in (130, -signal.SIGINT, 0), (delay, proc.returncode, err)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
    assert ours >= 3, "the interpreter never got past its start-up before the Ctrl-C"


def test_demo_in_a_foreign_non_empty_directory_is_one_line(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me\n")
    _one_line(_otel_runs("demo", "--dir", str(foreign), "--port", str(free_port()),
                         cwd=tmp_path), 1, "is not empty and is not a previous demo directory")
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_demo_on_a_busy_port_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        _one_line(_otel_runs("demo", "--port", str(port), cwd=tmp_path, tmp=scratch), 1,
                  f"cannot listen on 127.0.0.1:{port}")
    assert list(scratch.iterdir()) == []


def test_audit_requires_the_app_and_leaves_no_scratch_directory(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    _one_line(_otel_runs("audit", cwd=tmp_path, tmp=scratch), 1, "give the app as MODULE:APP")
    out = _otel_runs("audit", "otel_runs.demo:create_demo_app()", cwd=tmp_path, tmp=scratch)
    assert out.returncode == 0, out.stderr
    assert "0 of 79 state-changing routes of otel_runs.demo open no run" in out.stdout
    assert list(scratch.iterdir()) == [], list(scratch.rglob("*"))[:5]


def test_export_otlp_to_an_unreachable_collector_is_one_short_line(git_repo: Path) -> None:
    _record(git_repo)
    endpoint = refused_endpoint()
    started = time.monotonic()
    line = _one_line(_otel_runs("--project", str(git_repo), "export-otlp", "--endpoint",
                                endpoint, cwd=git_repo), 1,
                     f"cannot reach the OTLP endpoint {endpoint}: Connection refused")
    assert time.monotonic() - started < 30 and len(line) < 200
    _one_line(_otel_runs("--project", str(git_repo), "export-otlp", "--endpoint", "localhost",
                         cwd=git_repo), 1, "is not an http(s) URL")


def test_show_a_malformed_id_is_one_line(git_repo: Path) -> None:
    _one_line(_otel_runs("--project", str(git_repo), "show", "../../etc/passwd", cwd=git_repo),
              1, "malformed run id")
