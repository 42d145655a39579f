"""Every route of the seed inventory, implemented for the demo's scratch project.

Git, files, tests, backups and encryption are real (in the scratch directory
only). Cluster, cloud, container and GitHub tools are simulated: the demo
never acts on a real system, even when the tool is installed.
No view here is decorated: the demo tracks them all from the inventory
(``RunTracking(app, actions=ACTIONS)``), exactly as a user's app would.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify

from .._tracking import current_run
from ._tools import _event, _note, demo_state, fail_requested, payload, run_command, simulate
from ._vault import CIPHER, InvalidToken, Vault, decrypt, encrypt, parse_env

__all__ = ["DEFAULT_PASSPHRASE", "actions_blueprint"]

DEFAULT_PASSPHRASE = "correct horse battery staple"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

actions_blueprint = Blueprint("demo", __name__)


def _project() -> Path:
    return demo_state().project


def _result(ok: bool, summary: str, **details: Any) -> Any:
    return jsonify({"ok": ok, "summary": summary, **details})


def _name(value: Any, default: str) -> str:
    text = str(value) if value not in (None, "") else default
    if not _NAME_RE.match(text):
        raise _BadInputError(f"invalid name {text!r}: letters, digits, '.', '_' and '-' only")
    return text


class _BadInputError(ValueError):
    pass


@actions_blueprint.errorhandler(_BadInputError)
def _bad_input(exc: _BadInputError) -> Any:
    return jsonify({"ok": False, "summary": str(exc)}), 400


def _write_files(files: dict[str, str], summary: str) -> Any:
    """Really write generated files into the scratch project."""
    project = _project()
    with demo_state().lock:
        for rel, content in files.items():
            path = project / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            _event("file_written", path=rel, bytes=len(content.encode()))
    _note(files=sorted(files))
    return _result(True, summary, files=sorted(files))


# -- simulated tools ---------------------------------------------------------------------
# route -> (tool, command, steps, weight, ok summary, failure summary)

_SIMULATED: dict[str, tuple[str, str, list[str], float, str, str]] = {
    "/k8s/apply": ("kubectl", "kubectl apply -f k8s/ -n demo",
                   ["deployment.apps/web configured", "service/web unchanged",
                    "ingress.networking.k8s.io/web configured"], 1.2,
                   "Applied 3 manifests to namespace demo",
                   "error: context \"demo\" not found in kubeconfig"),
    "/k8s/delete": ("kubectl", "kubectl delete deployment/web -n demo",
                    ["deployment.apps \"web\" deleted"], 0.6,
                    "Deleted deployment/web in namespace demo",
                    "Error from server (NotFound): deployments.apps \"web\" not found"),
    "/k8s/scale": ("kubectl", "kubectl scale deployment/web --replicas=3 -n demo",
                   ["deployment.apps/web scaled", "3/3 replicas ready"], 0.8,
                   "Scaled deployment/web to 3 replicas",
                   "error: timed out waiting for 3/3 replicas (2 ready)"),
    "/k8s/helm/install": ("helm", "helm install web ./chart -n demo",
                          ["NAME: web", "STATUS: deployed", "REVISION: 1"], 1.5,
                          "Installed chart web (revision 1)",
                          "Error: INSTALLATION FAILED: cannot re-use a name that is still in use"),
    "/k8s/helm/upgrade": ("helm", "helm upgrade web ./chart -n demo",
                          ["Release \"web\" has been upgraded", "REVISION: 2"], 1.5,
                          "Upgraded release web to revision 2",
                          "Error: UPGRADE FAILED: another operation is in progress"),
    "/k8s/helm/template": ("helm", "helm template web ./chart",
                           ["rendered deployment.yaml", "rendered service.yaml"], 0.5,
                           "Rendered 2 templates (dry-run)",
                           "Error: template: web/templates/deployment.yaml:12: nil pointer"),
    "/terraform/init": ("terraform", "terraform init",
                        ["Initializing the backend...", "Installing hashicorp/null v3.2.2...",
                         "Terraform has been successfully initialized!"], 1.5,
                        "Initialized backend and 1 provider",
                        "Error: Failed to query available provider packages"),
    "/terraform/validate": ("terraform", "terraform validate",
                            ["Success! The configuration is valid."], 0.4,
                            "The configuration is valid",
                            "Error: Unsupported argument \"instance_typ\" on main.tf line 7"),
    "/terraform/plan": ("terraform", "terraform plan -out=tfplan",
                        ["Refreshing state...", "Plan: 2 to add, 1 to change, 0 to destroy."], 1.5,
                        "Plan: 2 to add, 1 to change, 0 to destroy",
                        "Error: No valid credential sources found"),
    "/terraform/apply": ("terraform", "terraform apply tfplan",
                         ["null_resource.web: Creating...", "null_resource.web: Creation complete",
                          "Apply complete! Resources: 2 added, 1 changed, 0 destroyed."], 2.0,
                         "Apply complete: 2 added, 1 changed, 0 destroyed",
                         "Error: Error acquiring the state lock"),
    "/terraform/destroy": ("terraform", "terraform destroy -auto-approve",
                           ["null_resource.web: Destroying...",
                            "Destroy complete! Resources: 3 destroyed."], 1.5,
                           "Destroy complete: 3 destroyed",
                           "Error: deleting resource: DependencyViolation"),
    "/terraform/workspace/select": ("terraform", "terraform workspace select staging",
                                    ["Switched to workspace \"staging\"."], 0.4,
                                    "Switched to workspace staging",
                                    "Workspace \"staging\" doesn't exist."),
    "/terraform/fmt": ("terraform", "terraform fmt -recursive",
                       ["main.tf", "variables.tf"], 0.3, "Formatted 2 files",
                       "Error: Invalid character on main.tf line 3"),
    "/docker/build": ("docker", "docker build -t demo/web:latest .",
                      ["[1/4] FROM python:3.11-slim", "[2/4] COPY . /app",
                       "[3/4] RUN pip install -r requirements.txt",
                       "naming to docker.io/demo/web:latest"], 2.0,
                      "Built image demo/web:latest",
                      "ERROR: failed to solve: process \"pip install\" did not complete"),
    "/docker/up": ("docker", "docker compose up -d",
                   ["Network demo_default Created", "Container demo-db-1 Started",
                    "Container demo-web-1 Started"], 1.2, "Started 2 containers",
                   "Error: port 5432 is already allocated"),
    "/docker/down": ("docker", "docker compose down",
                     ["Container demo-web-1 Removed", "Container demo-db-1 Removed",
                      "Network demo_default Removed"], 0.8, "Stopped and removed 2 containers",
                     "Error: container demo-web-1 is not running"),
    "/docker/restart": ("docker", "docker compose restart",
                        ["Container demo-web-1 Restarted", "Container demo-db-1 Restarted"], 1.0,
                        "Restarted 2 containers", "Error: no such service: web"),
    "/docker/prune": ("docker", "docker system prune -f",
                      ["Deleted Containers: 2", "Total reclaimed space: 312.4MB"], 0.8,
                      "Reclaimed 312.4MB", "Error: a prune operation is already running"),
    "/docker/pull": ("docker", "docker pull python:3.11-slim",
                     ["3.11-slim: Pulling from library/python", "Status: Downloaded newer image"],
                     1.5, "Pulled python:3.11-slim",
                     "Error response from daemon: toomanyrequests: rate limit exceeded"),
    "/docker/exec": ("docker", "docker exec demo-web-1 python -m pytest -q",
                     ["12 passed in 0.84s"], 0.8, "12 tests passed in demo-web-1",
                     "Error: container demo-web-1 is not running"),
    "/docker/rm": ("docker", "docker rm demo-web-1", ["demo-web-1"], 0.3,
                   "Removed container demo-web-1",
                   "Error: You cannot remove a running container"),
    "/docker/rmi": ("docker", "docker rmi demo/web:old", ["Untagged: demo/web:old",
                    "Deleted: sha256:4be1..."], 0.3, "Removed image demo/web:old",
                    "Error: image is being used by stopped container"),
    "/pages/builders/<name>/install": ("npm", "npm install --prefix builders/{name}",
                                       ["added 212 packages in 3s", "found 0 vulnerabilities"],
                                       1.2, "Installed the {name} builder's dependencies",
                                       "npm ERR! code ERESOLVE unable to resolve dependency tree"),
    "/pages/deploy": ("git", "git push origin _site:gh-pages",
                      ["Publishing 4 files", "gh-pages updated"], 1.0,
                      "Deployed the site to gh-pages (simulated: no GitHub here)",
                      "remote: Permission to demo/site.git denied"),
    "/gh/actions/dispatch": ("gh", "gh workflow run ci.yml --ref main",
                             ["Created workflow_dispatch event for ci.yml at main"], 0.6,
                             "Dispatched workflow ci.yml on main",
                             "HTTP 404: workflow ci.yml not found"),
    "/gh/repo/create": ("gh", "gh repo create demo/web --private",
                        ["Created repository demo/web on GitHub"], 0.8,
                        "Created repository demo/web",
                        "GraphQL: Name already exists on this account"),
    "/gh/repo/visibility": ("gh", "gh repo edit demo/web --visibility public",
                            ["Edited repository demo/web"], 0.5,
                            "Changed demo/web visibility to public",
                            "HTTP 403: Must have admin rights to Repository"),
    "/gh/repo/default-branch": ("gh", "gh repo edit demo/web --default-branch main",
                                ["Edited repository demo/web"], 0.5,
                                "Set default branch of demo/web to main",
                                "HTTP 422: Branch main not found"),
    "/testing/coverage": ("coverage", "coverage run -m pytest && coverage report",
                          ["12 passed", "TOTAL 412 statements, 87% covered"], 1.5,
                          "Coverage 87% (412 statements)", "coverage: no data to report"),
    "/quality/lint": ("ruff", "ruff check .", ["Checked 14 files", "All checks passed!"], 0.5,
                      "Lint clean (14 files)", "Found 3 errors (E501, F401, B006)"),
    "/quality/typecheck": ("mypy", "mypy .", ["Success: no issues found in 14 source files"],
                           1.0, "No type errors in 14 files",
                           "app.py:2: error: Incompatible return value type"),
    "/quality/format": ("ruff", "ruff format .", ["2 files reformatted, 12 files left unchanged"],
                        0.4, "Reformatted 2 files", "error: Failed to parse app.py:3:1"),
    "/packages/install": ("pip", "pip install -r requirements.txt",
                          ["Collecting flask", "Successfully installed 7 packages"], 1.5,
                          "Installed 7 packages (simulated: nothing installed)",
                          "ERROR: No matching distribution found for flsk"),
    "/packages/update": ("pip", "pip install -U -r requirements.txt",
                         ["Requirement already satisfied: flask", "Successfully installed 2"],
                         1.5, "Updated 2 packages (simulated: nothing installed)",
                         "ERROR: Cannot install flask==9 (conflicting dependencies)"),
    "/audit/install-tool": ("pip", "pip install trivy-db-tools",
                            ["Downloading tool", "Installed trivy-db-tools"], 1.0,
                            "Installed DevOps tool (simulated: nothing installed)",
                            "ERROR: Could not find a version that satisfies the requirement"),
}


def _simulated_view(route: str) -> Any:
    tool, command, steps, weight, ok, fail = _SIMULATED[route]

    def view(**params: str) -> Any:
        safe = {k: _name(v, "x") for k, v in params.items()}
        result = simulate(tool, command.format(**safe), steps, weight=weight,
                          ok_summary=ok.format(**safe), fail_summary=fail.format(**safe), **safe)
        return jsonify(result)

    view.__name__ = "simulated_" + re.sub(r"\W+", "_", route).strip("_")
    return view


for _route in _SIMULATED:
    _view = _simulated_view(_route)
    actions_blueprint.add_url_rule(_route, _view.__name__, _view, methods=["POST"])


# -- generated files (real writes into the scratch project) ---------------------------------

@actions_blueprint.post("/k8s/generate/manifests")
def k8s_generate_manifests() -> Any:
    deployment = ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n"
                  "  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n"
                  "    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n"
                  "        - name: web\n          image: demo/web:latest\n")
    service = ("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n"
               "  selector: {app: web}\n  ports: [{port: 80, targetPort: 8000}]\n")
    return _write_files({"k8s/deployment.yaml": deployment, "k8s/service.yaml": service},
                        "Generated 2 Kubernetes manifests")


@actions_blueprint.post("/k8s/generate/wizard")
def k8s_generate_wizard() -> Any:
    data = payload()
    app_name = _name(data.get("app"), "worker")
    replicas = int(data.get("replicas", 1) or 1)
    _note(app=app_name, replicas=replicas)
    manifest = (f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app_name}\n"
                f"spec:\n  replicas: {replicas}\n")
    return _write_files({f"k8s/{app_name}.yaml": manifest},
                        f"Wizard generated k8s/{app_name}.yaml ({replicas} replicas)")


@actions_blueprint.post("/terraform/generate")
def terraform_generate() -> Any:
    main_tf = ('terraform {\n  required_providers {\n    null = { source = "hashicorp/null" }\n'
               '  }\n}\n\nresource "null_resource" "web" {}\n')
    variables = 'variable "environment" {\n  default = "staging"\n}\n'
    return _write_files({"infra/main.tf": main_tf, "infra/variables.tf": variables},
                        "Generated Terraform scaffolding (2 files)")


@actions_blueprint.post("/docker/generate/dockerfile")
def docker_generate_dockerfile() -> Any:
    return _write_files({"Dockerfile": "FROM python:3.11-slim\nWORKDIR /app\nCOPY . .\n"
                                       'CMD ["python", "app.py"]\n'}, "Generated Dockerfile")


@actions_blueprint.post("/docker/generate/dockerignore")
def docker_generate_dockerignore() -> Any:
    return _write_files({".dockerignore": ".git\n__pycache__/\nsecrets.env\n.env\n"},
                        "Generated .dockerignore")


_COMPOSE = ("services:\n  web:\n    build: .\n    ports: ['8000:8000']\n"
            "  db:\n    image: postgres:16\n")


@actions_blueprint.post("/docker/generate/compose")
def docker_generate_compose() -> Any:
    return _write_files({"compose.yaml": _COMPOSE}, "Generated compose.yaml (2 services)")


@actions_blueprint.post("/docker/generate/compose-wizard")
def docker_generate_compose_wizard() -> Any:
    service = _name(payload().get("service"), "cache")
    text = _COMPOSE + f"  {service}:\n    image: redis:7\n"
    _note(service=service)
    return _write_files({"compose.wizard.yaml": text},
                        f"Wizard generated compose.wizard.yaml (+{service})")


@actions_blueprint.post("/docker/generate/write")
def docker_generate_write() -> Any:
    return _write_files({"docker/entrypoint.sh": "#!/bin/sh\nexec python app.py\n"},
                        "Wrote docker/entrypoint.sh")


@actions_blueprint.post("/pages/ci")
def pages_ci() -> Any:
    workflow = ("name: pages\non: {push: {branches: [main]}}\njobs:\n  build:\n"
                "    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n")
    return _write_files({".github/workflows/pages.yml": workflow},
                        "Generated .github/workflows/pages.yml")


@actions_blueprint.post("/testing/generate/template")
def testing_generate_template() -> Any:
    test = ("import unittest\n\nfrom app import greet\n\n\n"
            "class GreetTest(unittest.TestCase):\n"
            "    def test_greet(self):\n        self.assertEqual(greet('ada'), 'hello ada')\n\n"
            "    def test_greet_empty(self):\n        self.assertEqual(greet(''), 'hello ')\n")
    return _write_files({"tests/__init__.py": "", "tests/test_app.py": test},
                        "Generated tests/test_app.py (2 tests)")


@actions_blueprint.post("/quality/generate/config")
def quality_generate_config() -> Any:
    return _write_files({"ruff.toml": "line-length = 100\n[lint]\nselect = ['E', 'F', 'B']\n"},
                        "Generated ruff.toml")


@actions_blueprint.post("/security/generate/gitignore")
def security_generate_gitignore() -> Any:
    path = _project() / ".gitignore"
    wanted = ["secrets.env", ".env", "*.pem", "*.key", "__pycache__/", "backups/", "_site/"]
    with demo_state().lock:
        have = path.read_text().splitlines() if path.exists() else []
        added = [w for w in wanted if w not in have]
        path.write_text("\n".join(have + added) + "\n")
    _note(added=added)
    return _result(True, f"Updated .gitignore (+{len(added)} patterns)", added=added)


@actions_blueprint.post("/infra/env/generate-example")
def infra_generate_env_example() -> Any:
    return _write_files({".env.example": "DATABASE_URL=\nAPI_TOKEN=\nSECRET_KEY=\n"},
                        "Generated .env.example (3 keys)")


@actions_blueprint.post("/infra/env/generate-env")
def infra_generate_env() -> Any:
    values = {"DATABASE_URL": "postgres://demo@localhost:5432/demo",
              "API_TOKEN": secrets.token_hex(16), "SECRET_KEY": secrets.token_hex(24)}
    # Recorded on purpose: the secret-looking keys reach the ledger as "***".
    _note(**values)
    return _write_files({".env": "".join(f"{k}={v}\n" for k, v in values.items())},
                        "Generated .env (3 keys; secrets redacted in the run)")


@actions_blueprint.post("/docs/generate/changelog")
def docs_generate_changelog() -> Any:
    proc = run_command(["git", "log", "--no-merges", "--pretty=format:- %s (%h)", "-n", "50"],
                       _project())
    if proc.returncode != 0:
        return _result(False, f"git log failed: {proc.stderr.strip()}")
    lines = proc.stdout.strip().splitlines()
    return _write_files({"CHANGELOG.md": "# Changelog\n\n" + "\n".join(lines) + "\n"},
                        f"Generated CHANGELOG.md from {len(lines)} commits")


@actions_blueprint.post("/docs/generate/readme")
def docs_generate_readme() -> Any:
    project = _project()
    files = sorted(p.name for p in project.iterdir() if not p.name.startswith("."))
    text = "# demo-project\n\nFiles:\n\n" + "".join(f"- `{f}`\n" for f in files)
    return _write_files({"README.md": text}, f"Generated README.md ({len(files)} entries)")


# -- pages: real builds ----------------------------------------------------------------------

def _segments() -> list[str]:
    root = _project() / "pages"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))


def _render(name: str) -> int:
    source = _project() / "pages" / name
    out = _project() / "_site" / name
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for md in sorted(source.glob("*.md")):
        body = "".join(f"<h1>{ln[2:]}</h1>\n" if ln.startswith("# ") else f"<p>{ln}</p>\n"
                       for ln in md.read_text().splitlines() if ln.strip())
        (out / (md.stem + ".html")).write_text(f"<!doctype html>\n<title>{name}</title>\n{body}")
        count += 1
    return count


@actions_blueprint.post("/pages/init")
def pages_init() -> Any:
    return _write_files({"pages/docs/index.md": "# Docs\nWelcome to the demo docs.\n",
                         "pages/blog/index.md": "# Blog\nFirst post.\n",
                         "pages/segments.json": json.dumps({"segments": ["docs", "blog"]})},
                        "Initialized pages with 2 segments (docs, blog)")


@actions_blueprint.post("/pages/build/<name>")
def pages_build(name: str) -> Any:
    name = _name(name, "docs")
    if name not in _segments():
        return _result(False, f"no segment {name!r} (run Initialize pages first)", segment=name)
    with demo_state().lock:
        pages = _render(name)
    _note(segment=name, pages=pages)
    return _result(True, f"Built segment {name} ({pages} pages)", segment=name)


@actions_blueprint.post("/pages/build-all")
def pages_build_all() -> Any:
    segs = _segments()
    if not segs:
        return _result(False, "no segments to build (run Initialize pages first)")
    with demo_state().lock:
        total = sum(_render(s) for s in segs)
    _note(segments=segs)
    return _result(True, f"Built {len(segs)} segments ({total} pages)", segments=segs)


@actions_blueprint.post("/pages/merge")
def pages_merge() -> Any:
    site = _project() / "_site"
    built = sorted(p for p in site.glob("*/*.html")) if site.is_dir() else []
    if not built:
        return _result(False, "nothing to merge: build the segments first")
    links = "".join(f'<li><a href="{p.parent.name}/{p.name}">{p.parent.name}/{p.name}</a></li>\n'
                    for p in built)
    (site / "index.html").write_text(f"<!doctype html>\n<title>site</title>\n<ul>\n{links}</ul>\n")
    return _result(True, f"Merged {len(built)} pages into _site/index.html")


@actions_blueprint.post("/pages/build-stream/<name>")
def pages_build_stream(name: str) -> Any:
    name = _name(name, "docs")
    state = demo_state()
    failing = fail_requested() or state.roll_failure()
    steps = ["resolving config", f"collecting pages of {name}", "rendering markdown",
             "copying assets", "writing output"]
    pause = state.delay * 1.5 / len(steps)

    def stream() -> Any:
        run = current_run()  # the run is current while the stream is read
        for i, step in enumerate(steps):
            time.sleep(pause)
            if failing and i == len(steps) - 2:
                if run is not None:
                    run.status = "failed"
                    run.summary = f"Build of {name} failed at: {step}"
                yield f"event: error\ndata: {json.dumps({'step': step, 'ok': False})}\n\n"
                return
            if run is not None:
                run.add_event("step", step=step, index=i + 1, of=len(steps))
            yield f"data: {json.dumps({'step': step, 'index': i + 1, 'of': len(steps)})}\n\n"
        if run is not None:
            run.summary = f"Streamed build of {name} ({len(steps)} steps)"
        yield f"event: done\ndata: {json.dumps({'ok': True, 'segment': name})}\n\n"

    return Response(stream(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# -- git: real commands against the scratch repository and its bare remote -------------------

def _git(*args: str, cwd: Path | None = None) -> Any:
    from ._scratch import GIT_ENV

    return run_command(["git", *args], cwd or _project(), env=GIT_ENV)


def _remotes() -> list[str]:
    return _git("remote").stdout.split()


def _git_failed(proc: Any, what: str) -> Any:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return _result(False, f"{what} failed: {lines[-1] if lines else proc.returncode}")


@actions_blueprint.post("/git/commit")
def git_commit() -> Any:
    state = demo_state()
    number = state.next_number()
    message = str(payload().get("message") or f"Demo change #{number}")[:200]
    with state.lock:
        notes = state.project / "notes"
        notes.mkdir(exist_ok=True)
        (notes / f"change-{number}.md").write_text(f"{message}\n")
        add = _git("add", "-A")
        if add.returncode != 0:
            return _git_failed(add, "git add")
        proc = _git("commit", "-q", "-m", message)
        if proc.returncode != 0:
            return _git_failed(proc, "git commit")
        sha = _git("rev-parse", "--short", "HEAD").stdout.strip()
        count = _git("show", "--name-only", "--pretty=format:", "HEAD").stdout.split()
    _note(commit=sha, files=len(count))
    return _result(True, f"Committed {sha}: {message} ({len(count)} files)", commit=sha)


@actions_blueprint.post("/git/push")
def git_push() -> Any:
    with demo_state().lock:
        proc = _git("push", "--porcelain", "origin", "HEAD:refs/heads/main")
    if proc.returncode != 0:
        return _git_failed(proc, "git push")
    line = next((ln for ln in proc.stdout.splitlines() if "\t" in ln), "")
    detail = line.split("\t")[-1] if line else "done"
    return _result(True, f"Pushed main to origin ({detail.strip('[]')})")


@actions_blueprint.post("/git/pull")
def git_pull() -> Any:
    state = demo_state()
    number = state.next_number()
    with state.lock:
        # A teammate pushes a change first, so that the pull brings something real.
        mate = state.teammate
        _git("pull", "-q", "--rebase", "origin", "main", cwd=mate)
        (mate / "team").mkdir(exist_ok=True)
        (mate / "team" / f"update-{number}.md").write_text(f"teammate update {number}\n")
        _git("add", "-A", cwd=mate)
        _git("commit", "-q", "-m", f"Teammate update #{number}", cwd=mate)
        _git("push", "-q", "origin", "HEAD:main", cwd=mate)
        before = _git("rev-parse", "HEAD").stdout.strip()
        proc = _git("pull", "--no-rebase", "--no-edit", "origin", "main")
        if proc.returncode != 0:
            return _git_failed(proc, "git pull")
        after = _git("rev-parse", "HEAD").stdout.strip()
        count = len(_git("rev-list", f"{before}..{after}").stdout.split())
    return _result(True, f"Pulled {count} commit(s) from origin/main", commits=count)


@actions_blueprint.post("/git/remote/add")
def git_remote_add() -> Any:
    data = payload()
    state = demo_state()
    with state.lock:
        existing = _remotes()
        default = "mirror" if "mirror" not in existing else f"mirror-{state.next_number()}"
        name = _name(data.get("name"), default)
        url = str(data.get("url") or state.remote)
        proc = _git("remote", "add", name, url)
    _note(remote=name, url=url)
    if proc.returncode != 0:
        return _git_failed(proc, f"git remote add {name}")
    return _result(True, f"Added remote {name} -> {url}", remote=name)


def _extra_remote(data: dict[str, Any], key: str) -> str | None:
    if data.get(key):
        return _name(data.get(key), "x")
    extras = [r for r in _remotes() if r != "origin"]
    return extras[-1] if extras else None


@actions_blueprint.post("/git/remote/remove")
def git_remote_remove() -> Any:
    with demo_state().lock:
        name = _extra_remote(payload(), "name")
        if name is None:
            return _result(False, "no remote to remove besides origin (add one first)")
        proc = _git("remote", "remove", name)
    if proc.returncode != 0:
        return _git_failed(proc, f"git remote remove {name}")
    return _result(True, f"Removed remote {name}", remote=name)


@actions_blueprint.post("/git/remote/rename")
def git_remote_rename() -> Any:
    data = payload()
    with demo_state().lock:
        old = _extra_remote(data, "old")
        if old is None:
            return _result(False, "no remote to rename besides origin (add one first)")
        new = _name(data.get("new"), f"{old}-renamed")
        proc = _git("remote", "rename", old, new)
    if proc.returncode != 0:
        return _git_failed(proc, f"git remote rename {old}")
    return _result(True, f"Renamed remote {old} to {new}", remote=new)


@actions_blueprint.post("/git/remote/set-url")
def git_remote_set_url() -> Any:
    data = payload()
    state = demo_state()
    with state.lock:
        name = _name(data.get("name"), "origin")
        current = _git("remote", "get-url", name).stdout.strip()
        plain = str(state.remote)
        default = plain if current.startswith("file://") else state.remote.as_uri()
        url = str(data.get("url") or default)
        proc = _git("remote", "set-url", name, url)
    if proc.returncode != 0:
        return _git_failed(proc, f"git remote set-url {name}")
    _note(remote=name, url=url)
    return _result(True, f"Set {name} URL to {url}", remote=name, url=url)


# -- tests and checks: real, on the scratch project's Python ---------------------------------

def _unittest() -> Any:
    project = _project()
    if not (project / "tests").is_dir():
        return _result(False, "no tests yet: generate a test template first")
    proc = run_command([sys.executable, "-m", "unittest", "discover", "-s", "tests", "-t", "."],
                       project, env={"PYTHONDONTWRITEBYTECODE": "1"})
    match = re.search(r"Ran (\d+) tests?", proc.stderr)
    ran = int(match.group(1)) if match else 0
    _note(tests=ran, exit_code=proc.returncode)
    if proc.returncode != 0:
        return _result(False, f"{ran} tests ran, some failed", output=proc.stderr[-2000:])
    return _result(True, f"{ran} tests passed", tests=ran)


@actions_blueprint.post("/testing/run")
def testing_run() -> Any:
    return _unittest()


@actions_blueprint.post("/quality/test")
def quality_test() -> Any:
    return _unittest()


@actions_blueprint.post("/quality/check")
def quality_check() -> Any:
    project = _project()
    files = sorted(str(p.relative_to(project)) for p in project.rglob("*.py")
                   if ".git" not in p.parts)
    proc = run_command([sys.executable, "-c",
                        "import sys\nfor f in sys.argv[1:]: compile(open(f).read(), f, 'exec')",
                        *files], project)
    if proc.returncode != 0:
        return _result(False, f"syntax errors: {proc.stderr.strip().splitlines()[-1:]}")
    return _result(True, f"Quality check passed ({len(files)} Python files compile)")


# -- vault and content: real encryption --------------------------------------------------------

def _passphrase() -> str:
    value = payload().get("passphrase")
    return str(value) if value else DEFAULT_PASSPHRASE


@actions_blueprint.post("/vault/create")
def vault_create() -> Any:
    vault = Vault(_project())
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    with demo_state().lock:
        if vault.exists:
            return _result(False, "a vault already exists (lock, unlock or export it)")
        keys = {"DB_PASSWORD": secrets.token_urlsafe(12), "API_TOKEN": secrets.token_hex(16)}
        vault.plain.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        vault.sealed.parent.mkdir(exist_ok=True)
    _note(keys=sorted(keys))
    return _result(True, f"Created vault with {len(keys)} keys (unlocked)", keys=sorted(keys))


@actions_blueprint.post("/vault/lock")
def vault_lock() -> Any:
    vault = Vault(_project())
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    with demo_state().lock:
        if not vault.exists:
            return _result(False, "no vault: create one first")
        if vault.locked:
            return _result(False, "the vault is already locked")
        count = vault.lock(passphrase)
    return _result(True, f"Locked vault: {count} keys encrypted to .vault/secrets.enc")


@actions_blueprint.post("/vault/unlock")
def vault_unlock() -> Any:
    vault = Vault(_project())
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    with demo_state().lock:
        if not vault.locked:
            return _result(False, "the vault is not locked" if vault.exists else "no vault")
        try:
            count = vault.unlock(passphrase)
        except InvalidToken:
            return _result(False, "wrong passphrase: the vault stays locked")
    return _result(True, f"Unlocked vault: {count} keys decrypted")


@actions_blueprint.post("/vault/register")
def vault_register() -> Any:
    vault = Vault(_project())
    if not vault.exists:
        return _result(False, "no vault to register: create one first")
    entry = {"name": _name(payload().get("name"), "demo-vault"),
             "path": ".vault/secrets.enc", "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                          time.gmtime())}
    with demo_state().lock:
        vault.registry.parent.mkdir(exist_ok=True)
        vault.registry.write_text(json.dumps(entry, indent=2))
    _note(vault=entry["name"])
    return _result(True, f"Registered vault {entry['name']}")


@actions_blueprint.post("/vault/add-keys")
def vault_add_keys() -> Any:
    vault = Vault(_project())
    data = payload()
    new = data.get("keys") if isinstance(data.get("keys"), dict) else {
        "STRIPE_API_KEY": "sk_demo_" + secrets.token_hex(8)}
    _note(**{str(k): v for k, v in new.items()})  # secret-named keys show as ***
    with demo_state().lock:
        if not vault.exists or vault.locked:
            return _result(False, "unlock the vault first" if vault.exists else "no vault")
        current = parse_env(vault.plain.read_text())
        current.update({str(k): str(v) for k, v in new.items()})
        vault.plain.write_text("".join(f"{k}={v}\n" for k, v in current.items()))
    return _result(True, f"Added {len(new)} key(s); the vault holds {len(current)}",
                   keys=sorted(new))


@actions_blueprint.post("/vault/export")
def vault_export() -> Any:
    vault = Vault(_project())
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    state = demo_state()
    with state.lock:
        if not vault.exists or vault.locked:
            return _result(False, "unlock the vault first" if vault.exists else "no vault")
        token = encrypt(vault.plain.read_bytes(), passphrase)
        exports = state.base / "exports"
        exports.mkdir(exist_ok=True)
        target = exports / f"vault-{state.next_number():04d}.enc"
        target.write_text(token)
    return _result(True, f"Exported the vault to {target.name} ({len(token)} bytes, encrypted)",
                   file=target.name)


@actions_blueprint.post("/vault/import")
def vault_import() -> Any:
    vault = Vault(_project())
    data = payload()
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    state = demo_state()
    with state.lock:
        token = data.get("data")
        source = "request"
        if not token:
            exports = sorted((state.base / "exports").glob("vault-*.enc"))
            if not exports:
                return _result(False, "nothing to import: export a vault first")
            token, source = exports[-1].read_text(), exports[-1].name
        if vault.locked:
            return _result(False, "unlock the vault first")
        try:
            imported = parse_env(decrypt(str(token), passphrase).decode("utf-8"))
        except InvalidToken:
            return _result(False, f"cannot decrypt {source}: wrong passphrase")
        current = parse_env(vault.plain.read_text()) if vault.plain.exists() else {}
        current.update(imported)
        vault.plain.write_text("".join(f"{k}={v}\n" for k, v in current.items()))
    return _result(True, f"Imported {len(imported)} keys from {source}")


@actions_blueprint.post("/content/encrypt")
def content_encrypt() -> Any:
    data = payload()
    text = str(data.get("text") or "The launch code is 0000")
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER, plaintext_bytes=len(text.encode()))
    token = encrypt(text.encode("utf-8"), passphrase)
    demo_state().last_ciphertext = token
    return _result(True, f"Encrypted {len(text.encode())} bytes", ciphertext=token)


@actions_blueprint.post("/content/decrypt")
def content_decrypt() -> Any:
    data = payload()
    token = data.get("ciphertext") or demo_state().last_ciphertext
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    if not token:
        return _result(False, "nothing to decrypt: encrypt something first")
    try:
        text = decrypt(str(token), passphrase).decode("utf-8", "replace")
    except InvalidToken:
        return _result(False, "wrong passphrase or damaged content")
    return _result(True, f"Decrypted {len(text.encode())} bytes", plaintext=text)


# -- backups: real archives of the project's data/ ----------------------------------------------

def _backups() -> list[Path]:
    return sorted((_project() / "backups").glob("*.tar.gz"), key=lambda p: p.stat().st_mtime)


def _extract(archive: Path, target: Path) -> int:
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.isfile() and not m.name.startswith("/") and ".." not in Path(m.name).parts]
        for m in members:
            dest = target / m.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is not None:
                dest.write_bytes(src.read())
        return len(members)


@actions_blueprint.post("/backup/restore")
def backup_restore() -> Any:
    with demo_state().lock:
        backups = _backups()
        if not backups:
            return _result(False, "no backup to restore")
        count = _extract(backups[-1], _project())
    _note(backup=backups[-1].name, files=count)
    return _result(True, f"Restored {count} file(s) from {backups[-1].name}")


@actions_blueprint.post("/backup/import")
def backup_import() -> Any:
    state = demo_state()
    with state.lock:
        incoming = sorted((state.base / "incoming").glob("*.tar.gz"))
        if not incoming:
            return _result(False, "no archive in incoming/ to import")
        target = state.project / "backups" / f"imported-{state.next_number():04d}.tar.gz"
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(incoming[-1], target)
    return _result(True, f"Imported {incoming[-1].name} as {target.name}")


@actions_blueprint.post("/backup/wipe")
def backup_wipe() -> Any:
    data_dir = _project() / "data"
    with demo_state().lock:
        files = [p for p in data_dir.rglob("*") if p.is_file()] if data_dir.is_dir() else []
        for p in files:
            p.unlink()
    return _result(True, f"Wiped {len(files)} file(s) from data/ (restore brings them back)")


@actions_blueprint.post("/backup/delete")
def backup_delete() -> Any:
    with demo_state().lock:
        backups = _backups()
        if len(backups) < 2:
            return _result(False, "refusing to delete the last backup")
        backups[0].unlink()
    return _result(True, f"Deleted backup {backups[0].name} ({len(backups) - 1} left)")
