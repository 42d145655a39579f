"""The demo's tests and checks: the project's unit tests and a compile check.

Both really run on the scratch project with the demo's own Python.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from ._routes_base import actions_blueprint, reply, scratch_project
from ._tools import _note, run_command


def _unittest() -> Any:
    project = scratch_project()
    if not (project / "tests").is_dir():
        return reply(False, "no tests yet: generate a test template first")
    proc = run_command([sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."],
                       project, env={"PYTHONDONTWRITEBYTECODE": "1"})
    match = re.search(r"Ran (\d+) tests?", proc.stderr)
    ran = int(match.group(1)) if match else 0
    _note(tests=ran, exit_code=proc.returncode)
    if proc.returncode != 0:
        return reply(False, f"{ran} tests ran, some failed", output=proc.stderr[-2000:])
    return reply(True, f"{ran} tests passed", tests=ran)


@actions_blueprint.post("/testing/run")
def testing_run() -> Any:
    return _unittest()


@actions_blueprint.post("/quality/test")
def quality_test() -> Any:
    return _unittest()


@actions_blueprint.post("/quality/check")
def quality_check() -> Any:
    project = scratch_project()
    files = sorted(str(p.relative_to(project)) for p in project.rglob("*.py")
                   if ".git" not in p.parts)
    proc = run_command([sys.executable, "-c",
                        "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')",
                        *files], project)
    if proc.returncode != 0:
        return reply(False, f"syntax errors: {proc.stderr.strip().splitlines()[-1:]}")
    return reply(True, f"Quality check passed ({len(files)} Python files compile)")
