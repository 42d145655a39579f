"""The README and docs match the code: every link and anchor resolves, every setting the
package reads is in the README's configuration table, the Python snippets run, and no page
speaks of how the project was built instead of what it does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted([REPO / "README.md", REPO / "CHANGELOG.md", REPO / "collector-config" / "README.md",
                *(REPO / "docs").glob("*.md")])
#: Pages that describe the product (the changelog is a history by design).
PRODUCT_PAGES = [p for p in PAGES if p.name != "CHANGELOG.md"]

_FENCE = re.compile(r"^(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation but ``-`` and
    ``_`` dropped, each space a ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every ``#anchor`` of a page: heading slugs (repeats get ``-1``, ``-2``) and HTML ids."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in _prose_lines(path):
        match = _HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
        found.update(_HTML_ID.findall(line))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link, image and reference definition in the prose."""
    found = []
    for number, line in _prose_lines(path):
        ref = _REF_DEF.match(line)
        if ref:
            found.append((number, ref.group(1)))
            continue
        text = _INLINE_CODE.sub("code", line)
        found.extend((number, target) for target in _LINK.findall(text))
    return found


def test_the_slugs_are_githubs() -> None:
    assert github_slug("`sync`: sharing a ledger") == "sync-sharing-a-ledger"
    assert github_slug("With gunicorn gthread, and how noisy one run is") == (
        "with-gunicorn-gthread-and-how-noisy-one-run-is")
    assert github_slug("Several processes or hosts: Redis") == "several-processes-or-hosts-redis"
    assert github_slug("[0.1.0] - 2026-12-02") == "010---2026-12-02"
    assert github_slug("`OTEL_RUNS_MAX_*` limits") == "otel_runs_max_-limits"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http(s):, mailto:: not fetched here
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{_rel(page)}:{number}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{_rel(page)}:{number}: {target} (no heading #{anchor} in "
                          f"{_rel(dest)})")
        elif not dest.is_relative_to(REPO):
            broken.append(f"{_rel(page)}:{number}: {target} (outside the repository)")
    assert not broken, "\n".join(broken)


# -- the configuration table --------------------------------------------------------------

#: A name otel-runs reads: ``OTEL_RUNS_...``, not a template placeholder (``__X__``) nor
#: a family written as a prefix (``OTEL_RUNS_MAX_*``).
_SETTING = re.compile(r"(?<![A-Za-z0-9_])OTEL_RUNS_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_])")


def _settings_in_code() -> set[str]:
    names: set[str] = set()
    for path in (REPO / "otel_runs").rglob("*.py"):
        names.update(_SETTING.findall(path.read_text(encoding="utf-8")))
    return names


def _readme_configuration_table() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(ln for ln in section.splitlines() if ln.startswith("|"))


def test_every_setting_the_package_reads_is_in_the_readmes_table() -> None:
    in_code = _settings_in_code()
    assert {"OTEL_RUNS_PROJECT_ROOT", "OTEL_RUNS_COMMIT_INTERVAL", "OTEL_RUNS_SSE_HEARTBEAT"
            } <= in_code  # the scan finds environment and app.config names
    table = _readme_configuration_table()
    missing = sorted(n for n in in_code if not re.search(rf"\b{n}\b", table))
    assert not missing, f"not in the README's configuration table: {missing}"


def test_the_table_says_what_several_hosts_need() -> None:
    row = next(ln for ln in _readme_configuration_table().splitlines()
               if "OTEL_RUNS_REDIS_URL" in ln)
    assert "hosts" in row and "worker" in row


# -- snippets -----------------------------------------------------------------------------

#: Python blocks that are fragments of a larger program, not meant to run alone.
FRAGMENTS = {
    ("docs/otlp.md", "from otel_runs.propagation import outgoing_headers"):
        "a call inside service A's view, to a service B",
    ("docs/otlp.md", "# pip install opentelemetry-instrumentation-requests   (or -httpx)"):
        "needs optional instrumentation packages",
    ("docs/live-feed.md", "from otel_runs.live import get_hub"): "runs inside a request",
}


def python_blocks(path: Path) -> list[tuple[int, str]]:
    blocks, current, start = [], None, 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if current is None and line.strip() == "```python":
            current, start = [], number
        elif current is not None and line.strip().startswith("```"):
            blocks.append((start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


SNIPPETS = [(page, start, code) for page in PRODUCT_PAGES for start, code in python_blocks(page)
            if (_rel(page), code.splitlines()[0]) not in FRAGMENTS]


def test_the_fragment_list_is_current() -> None:
    firsts = {(_rel(page), code.splitlines()[0]) for page in PRODUCT_PAGES
              for _, code in python_blocks(page)}
    assert set(FRAGMENTS) <= firsts, set(FRAGMENTS) - firsts
    assert any(_rel(page) == "README.md" for page, _, _ in SNIPPETS)


@pytest.mark.parametrize("page,start,code", SNIPPETS,
                         ids=[f"{_rel(p)}:{n}" for p, n, _ in SNIPPETS])
def test_the_python_snippets_run(page: Path, start: int, code: str, git_repo: Path,
                                 tmp_path: Path) -> None:
    """Each block runs by itself in a fresh interpreter; the example paths of a project
    become a real git repository."""
    for placeholder in ("/srv/my-project", "/path/to/project"):
        code = code.replace(placeholder, str(git_repo))
    env = {k: v for k, v in os.environ.items() if k != "OTEL_RUNS_PROJECT_ROOT"}
    env.update(PYTHONPATH=str(REPO), DEPLOY_TOKEN="dt-0123456789abcdef",
               VAULT_PASSPHRASE="correct horse battery staple")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{_rel(page)}:{start}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr


# -- what the pages talk about ----------------------------------------------------------------

#: Phrases about the project's own history of work (sessions, issues, rounds of changes)
#: rather than about the product. Product words (a Flask *session*, *issue* a request)
#: stay allowed: each pattern needs the context that makes it history.
HISTORY = [
    r"\b(?:this|our|previous|next|last|earlier|later|work(?:ing)?|coding|agent)\s+"
    r"(?:session|iteration|sprint|ticket|brief)s?\b",
    r"\bsession\s+\d+\b",
    r"\b(?:the|this|that|an?|our)\s+issue\b(?!\s+(?:a|an|the)\b)",
    r"\bissue\s*#\s*\d+|(?<![\w/&#])#\d{1,5}\b",
    r"\bwhat (?:the|this) (?:issue|brief|task|ticket|lead|review) (?:asks|asked|wants|wanted"
    r"|requires|required)\b",
    r"\b(?:before|after|since|until) (?:this|that|the) (?:change|fix|work|refactor|rewrite|"
    r"patch|session|round)\b",
    r"\bbefore the (?:fix|fixes|changes|rework|rewrite)\b",
    r"\bthis (?:change|fix|refactor|rewrite|patch|round)\b",
    r"\b(?:the )?old code\b|\bfails on the old\b",
    r"\bno longer (?:a dependency|needed|used|required)\b",
    r"\bthe (?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth) "
    r"(?:change|fix|attempt|version|rewrite|iteration|round|pass|review|try)\b",
    r"\b(?:was|were|got) (?:fixed|rewritten|reworked)\b",
    r"\bwe (?:added|changed|fixed|rewrote|removed|decided)\b",
]


def test_no_page_speaks_of_the_history_of_work() -> None:
    found = []
    for page in PRODUCT_PAGES:
        for number, line in _prose_lines(page):
            for pattern in HISTORY:
                for hit in re.finditer(pattern, line, re.IGNORECASE):
                    found.append(f"{_rel(page)}:{number}: {hit.group(0)!r}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


def test_the_history_patterns_spare_product_words() -> None:
    fine = ["Flask's secret key signs the session cookie",
            "built in: cookie, session, signature",
            "`session_id`, `sessionToken`",
            "every request may issue a new token",
            "a third-party OTLP receiver",
            "the second run of the benchmark",
            "the journal is truncated after the commit's ref update",
            "this commit's tree"]
    for text in fine:
        assert not [p for p in HISTORY if re.search(p, text, re.IGNORECASE)], text
    for text in ["as the issue asks", "before this change", "in the fourth iteration",
                 "fails on the old code", "work session 3", "see #12"]:
        assert [p for p in HISTORY if re.search(p, text, re.IGNORECASE)], text


# -- what the README promises a new user ----------------------------------------------------

_SERVICE_OF_A_RUN = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
{setup}
import otel_runs
from flask import Flask
from otel_runs.flask import RunTracking
from otel_runs.ledger import ledger_for

app = Flask("shop.web")
app.config["PROJECT_ROOT"] = sys.argv[1]
RunTracking(app)
with otel_runs.tracked_run(sys.argv[1], "deploy", "deploy:k8s") as run:
    pass
otel_runs.flush()
print(ledger_for(sys.argv[1]).get(run.run_id).service)
"""


def _child(code: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("OTEL_RUNS_PROJECT_ROOT", "OTEL_SERVICE_NAME",
                            "OTEL_RESOURCE_ATTRIBUTES")}
    environ.update(PYTHONPATH=str(REPO), **env)
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("setup,env,service", [
    ("", {}, "shop.web"),
    ("", {"OTEL_SERVICE_NAME": "from-env"}, "from-env"),
    ("", {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,team=ops"}, "from-attrs"),
    ("from opentelemetry import trace\n"
     "from opentelemetry.sdk.resources import Resource\n"
     "from opentelemetry.sdk.trace import TracerProvider\n"
     "trace.set_tracer_provider(TracerProvider(resource=Resource({'service.name': 'mine'})))",
     {}, "mine"),
], ids=["the app's name", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
        "the application's provider"])
def test_the_service_is_named_after_the_app_unless_otel_names_it(
        git_repo: Path, tmp_path: Path, setup: str, env: dict[str, str], service: str) -> None:
    out = _child(_SERVICE_OF_A_RUN.format(setup=setup), str(git_repo), cwd=tmp_path, **env)
    assert out.stdout.strip() == service


def test_a_run_for_a_project_logs_nothing_about_the_working_directory(
        git_repo: Path, tmp_path: Path) -> None:
    """``tracked_run(root, ...)`` from a directory that is no git repository records into
    ``root`` and says nothing about the directory it was started from."""
    code = ("import logging, sys\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
            "import otel_runs\n"
            "with otel_runs.tracked_run(sys.argv[1], 'deploy', 'deploy:k8s') as run:\n"
            "    pass\n"
            "otel_runs.flush()\n"
            "from otel_runs.ledger import ledger_for\n"
            "print(ledger_for(sys.argv[1]).get(run.run_id).status)\n")
    out = _child(code, str(git_repo), cwd=tmp_path)
    assert out.stdout.strip() == "ok"
    assert "ledger is off" not in out.stderr and str(tmp_path) not in out.stderr, out.stderr


def test_submodules_are_attributes_of_the_package(tmp_path: Path) -> None:
    code = ("import otel_runs, sys\n"
            "assert 'otel_runs._setup' not in sys.modules  # import otel_runs is cheap\n"
            "print(len(otel_runs.inventory.ACTIONS), otel_runs.flask.RunTracking.__name__,\n"
            "      otel_runs.tracked_run.__name__, otel_runs.__version__)\n")
    out = _child(code, cwd=tmp_path)
    import otel_runs

    assert out.stdout.split() == ["79", "RunTracking", "tracked_run", otel_runs.__version__]


def test_the_secret_key_table_in_security_md_is_what_the_scrubber_does() -> None:
    """Every key name in the ``| secret | not secret |`` table is classified as it says."""
    from otel_runs.redaction import is_secret_key

    text = (REPO / "docs" / "security.md").read_text()
    table = text[text.index("| secret | not secret |"):].split("\n\n", 1)[0]
    rows = [ln for ln in table.splitlines()[2:] if ln.startswith("|")]
    assert len(rows) >= 5
    for row in rows:
        secret, plain = row.strip("|").split("|")
        for name in re.findall(r"`([^`]+)`", secret):
            if name not in ("SECRET_KEY_PARTS", "_id"):  # (the prose naming a word)
                assert is_secret_key(name), name
        for name in re.findall(r"`([^`]+)`", plain):
            assert not is_secret_key(name), name
