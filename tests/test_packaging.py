"""The wheel and the sdist, built by a real ``python -m build`` from a copy of this checkout:
their files, their metadata, ``twine check``, the sdist's own test suite, and the wheel
installed into a fresh virtual environment."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import otel_runs

REPO = Path(__file__).resolve().parent.parent
VERSION = otel_runs.__version__
#: Not part of any distribution (caches, build output, local state).
_NOT_SHIPPED = (".git", "__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".ruff_cache",
                ".hypothesis", ".benchmarks", "build", "dist", ".venv")
#: Folders the sdist ships whole: the tests, and what they and the README's links use.
SDIST_FOLDERS = ("otel_runs", "tests", "docs", "collector-config", "bench")
REQUIRED_CLASSIFIERS = {
    "Framework :: Flask",
    "Topic :: System :: Monitoring",
    "Typing :: Typed",
    "Programming Language :: Python :: 3.10",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
}

pytestmark = pytest.mark.timeout(900)


def _files(root: Path, folder: str) -> set[str]:
    """Files under ``root/folder`` that belong in a distribution, relative to ``root``."""
    skip = {p for p in _NOT_SHIPPED if "*" not in p}
    found = set()
    for path in (root / folder).rglob("*"):
        rel = path.relative_to(root)
        if (path.is_file() and not skip & set(rel.parts) and rel.suffix not in (".pyc", ".pyo")
                and not rel.as_posix().startswith("bench/results/")):
            found.add(rel.as_posix())
    return found


def _build_backend_installed() -> bool:
    try:
        return int(metadata.version("setuptools").split(".")[0]) >= 77
    except metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build`` (sdist, then the wheel from the sdist) of a copy of the checkout."""
    pytest.importorskip("build", reason="pip install build (in the test extra)")
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*_NOT_SHIPPED))
    cmd = [sys.executable, "-m", "build", "--outdir", str(work / "dist")]
    if _build_backend_installed():
        cmd.append("--no-isolation")  # offline and faster; else build fetches setuptools>=77
    proc = subprocess.run([*cmd, str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    (wheel,) = (work / "dist").glob("*.whl")
    (sdist,) = (work / "dist").glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "work": work}


def _metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)


def test_the_wheel_holds_the_package_the_licence_and_full_metadata(dists: dict[str, Path]) -> None:
    assert dists["wheel"].name == f"otel_runs-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        info = f"otel_runs-{VERSION}.dist-info"
        assert _files(REPO, "otel_runs") <= names  # every module, py.typed, static files
        assert not [n for n in names if n.split("/")[0] in ("tests", "docs", "bench")]
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert whl.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
        meta = _metadata(whl.read(f"{info}/METADATA").decode())
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
    assert meta["Name"] == "otel-runs" and meta["Version"] == VERSION
    assert tuple(int(p) for p in meta["Metadata-Version"].split(".")) >= (2, 4)
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    assert not [c for c in meta.get_all("Classifier") if c.startswith("License ::")]
    assert REQUIRED_CLASSIFIERS <= set(meta.get_all("Classifier"))
    assert meta["Author"] and len(meta["Keywords"].split(",")) >= 5
    assert meta["Requires-Python"] == ">=3.10"
    assert "click>=8.1" in meta.get_all("Requires-Dist")  # imported by otel_runs.cli
    for url in meta.get_all("Project-URL") or []:  # none invented before there is one
        assert "example" not in url and "TODO" not in url, url
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# otel-runs")
    assert "otel-runs = otel_runs:_main" in entry_points


def test_the_sdist_holds_the_tests_and_everything_they_and_the_readme_need(
        dists: dict[str, Path]) -> None:
    top = f"otel_runs-{VERSION}"
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.removeprefix(f"{top}/") for n in tar.getnames() if n.startswith(f"{top}/")}
        pkg_info = tar.extractfile(f"{top}/PKG-INFO")
        assert pkg_info is not None
        assert _metadata(pkg_info.read().decode())["License-Expression"] == "MIT"
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", ".ci/run",
                 "tests/conftest.py", "tests/ledger_child.py", "tests/otlp_receiver.py",
                 "tests/gunicorn_server.py"):
        assert name in names, name
    for folder in SDIST_FOLDERS:
        missing = _files(REPO, folder) - names
        assert not missing, f"{folder}/ files not in the sdist: {sorted(missing)[:10]}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.split("/")[0] in (".git", ".hypothesis", ".benchmarks")]


def test_twine_check_passes(dists: dict[str, Path]) -> None:
    pytest.importorskip("twine", reason="pip install twine (in the test extra)")
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                           str(dists["wheel"]), str(dists["sdist"])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def _unpacked_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(root)  # the sdist's own otel_runs, not this checkout's
    return env


def test_the_unpacked_sdists_tests_collect_and_run(dists: dict[str, Path]) -> None:
    """Every test module collects (conftest and helpers are there); a sample of them runs:
    the collector config, the taxonomy, the docs' links and snippets, the CLI's errors."""
    with tarfile.open(dists["sdist"]) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dists["work"] / "unpacked", filter="data")
        else:  # pragma: no cover - Python < 3.11.4
            tar.extractall(dists["work"] / "unpacked")  # noqa: S202 - our own sdist
    root = dists["work"] / "unpacked" / f"otel_runs-{VERSION}"
    env = _unpacked_env(root)
    where = subprocess.run([sys.executable, "-c", "import otel_runs; print(otel_runs.__file__)"],
                           cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(root / "otel_runs" / "__init__.py"), where.stderr
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    collected = subprocess.run([*pytest_cmd, "--collect-only"], cwd=root, env=env,
                               capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    summary = collected.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ tests collected in [\d.]+s", summary), summary  # no "N errors"
    assert "ERROR" not in collected.stdout
    sample = ["tests/test_collector_config.py", "tests/test_taxonomy.py", "tests/test_docs.py",
              "tests/test_cli_errors.py::test_usage_errors_are_one_line_with_exit_2"]
    ran = subprocess.run([*pytest_cmd, *sample], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    assert " passed" in ran.stdout and " failed" not in ran.stdout


def test_the_wheel_installs_into_a_fresh_venv(dists: dict[str, Path], git_repo: Path) -> None:
    """A new environment (the dependencies from this one: no network) gets the console
    script, the version and the submodules from the wheel alone."""
    env_dir = dists["work"] / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                              "--no-index", str(dists["wheel"])],
                             capture_output=True, text=True, timeout=300, env=environ)
    assert install.returncode == 0, install.stdout + install.stderr
    probe = ("import importlib.metadata as m, otel_runs, otel_runs.inventory\n"
             "print(otel_runs.__file__)\nprint(m.version('otel-runs'), otel_runs.__version__)\n"
             "print(len(otel_runs.inventory.ACTIONS))")
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120,
                         env=environ, cwd=dists["work"])
    assert out.returncode == 0, out.stderr
    where, versions, actions = out.stdout.split("\n")[:3]
    assert Path(where).is_relative_to(env_dir), where
    assert versions == f"{VERSION} {VERSION}" and actions == "79"
    script = env_dir / "bin" / "otel-runs"
    version = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                             timeout=120, env=environ)
    assert version.stdout.strip() == f"otel-runs {VERSION}", version.stderr
    listed = subprocess.run([str(script), "--project", str(git_repo), "list"],
                            capture_output=True, text=True, timeout=120, env=environ)
    assert listed.returncode == 0 and listed.stdout.startswith("no runs"), listed.stderr
