"""The demo's generated files: manifests, Terraform, Docker, CI, tests, config, env, docs.

Every route really writes its files into the scratch project (``write_files``).
"""

from __future__ import annotations

import secrets
from typing import Any

from ._routes_base import actions_blueprint, checked_name, reply, scratch_project, write_files
from ._tools import _note, demo_state, payload, run_command


@actions_blueprint.post("/k8s/generate/manifests")
def k8s_generate_manifests() -> Any:
    deployment = ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n"
                  "  replicas: 2\n  selector:\n    matchLabels: {app: web}\n  template:\n"
                  "    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n"
                  "        - name: web\n          image: demo/web:latest\n")
    service = ("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n"
               "  selector: {app: web}\n  ports: [{port: 80, targetPort: 8000}]\n")
    return write_files({"k8s/deployment.yaml": deployment, "k8s/service.yaml": service},
                        "Generated 2 Kubernetes manifests")


@actions_blueprint.post("/k8s/generate/wizard")
def k8s_generate_wizard() -> Any:
    data = payload()
    app_name = checked_name(data.get("app"), "worker")
    replicas = int(data.get("replicas", 1) or 1)
    _note(app=app_name, replicas=replicas)
    manifest = (f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {app_name}\n"
                f"spec:\n  replicas: {replicas}\n")
    return write_files({f"k8s/{app_name}.yaml": manifest},
                        f"Wizard generated k8s/{app_name}.yaml ({replicas} replicas)")


@actions_blueprint.post("/terraform/generate")
def terraform_generate() -> Any:
    main_tf = ('terraform {\n  required_providers {\n    null = { source = "hashicorp/null" }\n'
               '  }\n}\n\nresource "null_resource" "web" {}\n')
    variables = 'variable "environment" {\n  default = "staging"\n}\n'
    return write_files({"infra/main.tf": main_tf, "infra/variables.tf": variables},
                        "Generated Terraform scaffolding (2 files)")


@actions_blueprint.post("/docker/generate/dockerfile")
def docker_generate_dockerfile() -> Any:
    return write_files({"Dockerfile": "FROM python:3.11-slim\nWORKDIR /app\nCOPY . .\n"
                                       'CMD ["python", "app.py"]\n'}, "Generated Dockerfile")


@actions_blueprint.post("/docker/generate/dockerignore")
def docker_generate_dockerignore() -> Any:
    return write_files({".dockerignore": ".git\n__pycache__/\nsecrets.env\n.env\n"},
                        "Generated .dockerignore")


_COMPOSE = ("services:\n  web:\n    build: .\n    ports: ['8000:8000']\n"
            "  db:\n    image: postgres:16\n")


@actions_blueprint.post("/docker/generate/compose")
def docker_generate_compose() -> Any:
    return write_files({"compose.yaml": _COMPOSE}, "Generated compose.yaml (2 services)")


@actions_blueprint.post("/docker/generate/compose-wizard")
def docker_generate_compose_wizard() -> Any:
    service = checked_name(payload().get("service"), "cache")
    text = _COMPOSE + f"  {service}:\n    image: redis:7\n"
    _note(service=service)
    return write_files({"compose.wizard.yaml": text},
                        f"Wizard generated compose.wizard.yaml (+{service})")


@actions_blueprint.post("/docker/generate/write")
def docker_generate_write() -> Any:
    return write_files({"docker/entrypoint.sh": "#!/bin/sh\nexec python app.py\n"},
                        "Wrote docker/entrypoint.sh")


@actions_blueprint.post("/pages/ci")
def pages_ci() -> Any:
    workflow = ("name: pages\non: {push: {branches: [main]}}\njobs:\n  build:\n"
                "    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n")
    return write_files({".github/workflows/pages.yml": workflow},
                        "Generated .github/workflows/pages.yml")


@actions_blueprint.post("/testing/generate/template")
def testing_generate_template() -> Any:
    test = ("import unittest\n\nfrom app import greet\n\n\n"
            "class GreetTest(unittest.TestCase):\n"
            "    def test_greet(self):\n        self.assertEqual(greet('ada'), 'hello ada')\n\n"
            "    def test_greet_empty(self):\n        self.assertEqual(greet(''), 'hello ')\n")
    return write_files({"tests/__init__.py": "", "tests/test_app.py": test},
                        "Generated tests/test_app.py (2 tests)")


@actions_blueprint.post("/quality/generate/config")
def quality_generate_config() -> Any:
    return write_files({"ruff.toml": "line-length = 100\n[lint]\nselect = ['E', 'F', 'B']\n"},
                        "Generated ruff.toml")


@actions_blueprint.post("/security/generate/gitignore")
def security_generate_gitignore() -> Any:
    path = scratch_project() / ".gitignore"
    wanted = ["secrets.env", ".env", "*.pem", "*.key", "__pycache__/", "backups/", "_site/"]
    with demo_state().lock:
        have = path.read_text().splitlines() if path.exists() else []
        added = [w for w in wanted if w not in have]
        path.write_text("\n".join(have + added) + "\n")
    _note(added=added)
    return reply(True, f"Updated .gitignore (+{len(added)} patterns)", added=added)


@actions_blueprint.post("/infra/env/generate-example")
def infra_generate_env_example() -> Any:
    return write_files({".env.example": "DATABASE_URL=\nAPI_TOKEN=\nSECRET_KEY=\n"},
                        "Generated .env.example (3 keys)")


@actions_blueprint.post("/infra/env/generate-env")
def infra_generate_env() -> Any:
    values = {"DATABASE_URL": "postgres://demo@localhost:5432/demo",
              "API_TOKEN": secrets.token_hex(16), "SECRET_KEY": secrets.token_hex(24)}
    # Recorded on purpose: the secret-looking keys reach the ledger as "***".
    _note(**values)
    return write_files({".env": "".join(f"{k}={v}\n" for k, v in values.items())},
                        "Generated .env (3 keys; secrets redacted in the run)")


@actions_blueprint.post("/docs/generate/changelog")
def docs_generate_changelog() -> Any:
    proc = run_command(["git", "log", "--no-merges", "--pretty=format:- %s (%h)", "-n", "50"],
                       scratch_project())
    if proc.returncode != 0:
        return reply(False, f"git log failed: {proc.stderr.strip()}")
    lines = proc.stdout.strip().splitlines()
    return write_files({"CHANGELOG.md": "# Changelog\n\n" + "\n".join(lines) + "\n"},
                        f"Generated CHANGELOG.md from {len(lines)} commits")


@actions_blueprint.post("/docs/generate/readme")
def docs_generate_readme() -> Any:
    project = scratch_project()
    files = sorted(p.name for p in project.iterdir() if not p.name.startswith("."))
    text = "# demo-project\n\nFiles:\n\n" + "".join(f"- `{f}`\n" for f in files)
    return write_files({"README.md": text}, f"Generated README.md ({len(files)} entries)")
