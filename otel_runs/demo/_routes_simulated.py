"""The demo's simulated tools: kubectl, helm, terraform, docker, npm, gh, pip, the checkers.

Each route plays its tool's output step by step (``simulate``) and never runs the
tool, even when it is installed; failures are occasional and seeded.
"""

from __future__ import annotations

import re
from typing import Any

from flask import jsonify

from ._routes_base import actions_blueprint, checked_name
from ._tools import simulate

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
        safe = {k: checked_name(v, "x") for k, v in params.items()}
        result = simulate(tool, command.format(**safe), steps, weight=weight,
                          ok_summary=ok.format(**safe), fail_summary=fail.format(**safe), **safe)
        return jsonify(result)

    view.__name__ = "simulated_" + re.sub(r"\W+", "_", route).strip("_")
    return view


for _route in _SIMULATED:
    _view = _simulated_view(_route)
    actions_blueprint.add_url_rule(_route, _view.__name__, _view, methods=["POST"])
