"""The seed control plane's full action inventory, as data.

Every POST action route of the seed design (``run-operations-backend.md``,
"Full Action Inventory"), with its run type, subtype and summary, grouped by
integration. Pass it to ``RunTracking(app, actions=ACTIONS)`` to track an
existing app's views without editing its route files, or to
:func:`otel_runs.audit.untracked_routes` to check coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._taxonomy import validate_run_type

__all__ = ["ACTIONS", "INTEGRATIONS", "Action", "by_integration"]


@dataclass(frozen=True)
class Action:
    """One action route: which integration, which URL rule and method, which run."""

    integration: str
    route: str
    method: str
    type: str
    subtype: str
    summary: str

    def __post_init__(self) -> None:
        validate_run_type(self.type, self.subtype)
        if not self.route.startswith("/"):
            raise ValueError(f"action route {self.route!r} must start with '/'")
        if self.method != self.method.upper() or not self.method.isalpha():
            raise ValueError(f"action method {self.method!r} must be an upper-case HTTP method")

    @property
    def key(self) -> tuple[str, str]:
        """``(method, route)``: what identifies the action in an app."""
        return (self.method, self.route)


def _post(integration: str, route: str, subtype: str, summary: str) -> Action:
    return Action(integration, route, "POST", subtype.split(":", 1)[0], subtype, summary)


#: Every action of the seed inventory, in the seed's order (79 rows).
ACTIONS: tuple[Action, ...] = (
    # Kubernetes
    _post("Kubernetes", "/k8s/apply", "deploy:k8s", "Apply manifests"),
    _post("Kubernetes", "/k8s/delete", "destroy:k8s", "Delete resource"),
    _post("Kubernetes", "/k8s/scale", "deploy:k8s_scale", "Scale deployment"),
    _post("Kubernetes", "/k8s/generate/manifests", "generate:k8s_manifests", "Generate K8s manifests"),
    _post("Kubernetes", "/k8s/generate/wizard", "generate:k8s_wizard", "Wizard-generated manifests"),
    _post("Kubernetes", "/k8s/helm/install", "install:helm", "Helm chart install"),
    _post("Kubernetes", "/k8s/helm/upgrade", "deploy:helm_upgrade", "Helm release upgrade"),
    _post("Kubernetes", "/k8s/helm/template", "plan:helm_template", "Helm template render (dry-run)"),

    # Terraform
    _post("Terraform", "/terraform/init", "setup:terraform", "Terraform init"),
    _post("Terraform", "/terraform/validate", "validate:terraform", "Terraform validate"),
    _post("Terraform", "/terraform/plan", "plan:terraform", "Terraform plan"),
    _post("Terraform", "/terraform/apply", "deploy:terraform", "Terraform apply"),
    _post("Terraform", "/terraform/destroy", "destroy:terraform", "Terraform destroy"),
    _post("Terraform", "/terraform/generate", "generate:terraform", "Generate scaffolding"),
    _post("Terraform", "/terraform/workspace/select", "setup:terraform_ws", "Switch workspace"),
    _post("Terraform", "/terraform/fmt", "format:terraform", "Format files"),

    # Docker
    _post("Docker", "/docker/build", "build:docker", "Docker build"),
    _post("Docker", "/docker/up", "deploy:docker_up", "Compose up"),
    _post("Docker", "/docker/down", "destroy:docker_down", "Compose down"),
    _post("Docker", "/docker/restart", "deploy:docker_restart", "Compose restart"),
    _post("Docker", "/docker/prune", "destroy:docker_prune", "Docker prune"),
    _post("Docker", "/docker/pull", "install:docker_pull", "Pull image"),
    _post("Docker", "/docker/exec", "test:docker_exec", "Execute in container"),
    _post("Docker", "/docker/rm", "destroy:docker_rm", "Remove container"),
    _post("Docker", "/docker/rmi", "destroy:docker_rmi", "Remove image"),
    _post("Docker", "/docker/generate/dockerfile", "generate:dockerfile", "Generate Dockerfile"),
    _post("Docker", "/docker/generate/dockerignore", "generate:dockerignore", "Generate .dockerignore"),
    _post("Docker", "/docker/generate/compose", "generate:compose", "Generate compose file"),
    _post("Docker", "/docker/generate/compose-wizard", "generate:compose_wizard", "Wizard compose"),
    _post("Docker", "/docker/generate/write", "generate:docker_write", "Write generated file"),

    # Pages
    _post("Pages", "/pages/init", "setup:pages", "Initialize pages"),
    _post("Pages", "/pages/builders/<name>/install", "install:pages_builder", "Install builder deps"),
    _post("Pages", "/pages/build/<name>", "build:pages_segment", "Build single segment"),
    _post("Pages", "/pages/build-all", "build:pages_all", "Build all segments"),
    _post("Pages", "/pages/merge", "build:pages_merge", "Merge segments"),
    _post("Pages", "/pages/deploy", "deploy:pages", "Deploy to gh-pages"),
    _post("Pages", "/pages/ci", "generate:pages_ci", "Generate CI workflow"),
    _post("Pages", "/pages/build-stream/<name>", "build:pages_stream", "Build with SSE stream"),

    # Git/GitHub
    _post("Git/GitHub", "/git/commit", "git:commit", "Git commit"),
    _post("Git/GitHub", "/git/pull", "git:pull", "Git pull"),
    _post("Git/GitHub", "/git/push", "git:push", "Git push"),
    _post("Git/GitHub", "/git/remote/add", "setup:git_remote", "Add remote"),
    _post("Git/GitHub", "/git/remote/remove", "destroy:git_remote", "Remove remote"),
    _post("Git/GitHub", "/git/remote/rename", "setup:git_remote_rename", "Rename remote"),
    _post("Git/GitHub", "/git/remote/set-url", "setup:git_remote_url", "Set remote URL"),
    _post("Git/GitHub", "/gh/actions/dispatch", "ci:gh_dispatch", "Dispatch workflow"),
    _post("Git/GitHub", "/gh/repo/create", "setup:gh_repo", "Create repo"),
    _post("Git/GitHub", "/gh/repo/visibility", "setup:gh_visibility", "Change visibility"),
    _post("Git/GitHub", "/gh/repo/default-branch", "setup:gh_default_branch", "Set default branch"),

    # Testing
    _post("Testing", "/testing/run", "test:run", "Execute tests"),
    _post("Testing", "/testing/coverage", "test:coverage", "Run coverage"),
    _post("Testing", "/testing/generate/template", "generate:test_template", "Generate test template"),

    # Quality
    _post("Quality", "/quality/check", "validate:quality", "Quality check"),
    _post("Quality", "/quality/lint", "validate:lint", "Run linter"),
    _post("Quality", "/quality/typecheck", "validate:typecheck", "Type checking"),
    _post("Quality", "/quality/test", "test:quality", "Run tests via quality"),
    _post("Quality", "/quality/format", "format:quality", "Run formatter"),
    _post("Quality", "/quality/generate/config", "generate:quality_config", "Generate tool config"),

    # Security
    _post("Security", "/security/generate/gitignore", "generate:gitignore", "Generate .gitignore"),

    # Packages
    _post("Packages", "/packages/install", "install:packages", "Install packages"),
    _post("Packages", "/packages/update", "install:packages_update", "Update packages"),

    # Docs
    _post("Docs", "/docs/generate/changelog", "generate:changelog", "Generate CHANGELOG"),
    _post("Docs", "/docs/generate/readme", "generate:readme", "Generate README"),

    # Vault
    _post("Vault", "/vault/create", "setup:vault", "Create vault"),
    _post("Vault", "/vault/lock", "setup:vault_lock", "Lock vault"),
    _post("Vault", "/vault/unlock", "setup:vault_unlock", "Unlock vault"),
    _post("Vault", "/vault/register", "setup:vault_register", "Register vault"),
    _post("Vault", "/vault/add-keys", "setup:vault_keys", "Add keys"),
    _post("Vault", "/vault/import", "restore:vault", "Import vault"),
    _post("Vault", "/vault/export", "backup:vault", "Export vault"),

    # Backup
    _post("Backup", "/backup/restore", "restore:backup", "Restore backup"),
    _post("Backup", "/backup/import", "restore:import", "Import backup"),
    _post("Backup", "/backup/wipe", "destroy:backup_wipe", "Wipe data"),
    _post("Backup", "/backup/delete", "destroy:backup_delete", "Delete backup"),

    # Infra
    _post("Infra", "/infra/env/generate-example", "generate:env_example", "Generate .env.example"),
    _post("Infra", "/infra/env/generate-env", "generate:env", "Generate .env"),

    # Audit
    _post("Audit", "/audit/install-tool", "install:tool", "Install DevOps tool"),

    # Content
    _post("Content", "/content/encrypt", "setup:encrypt", "Encrypt content"),
    _post("Content", "/content/decrypt", "setup:decrypt", "Decrypt content"),
)

#: Integration names in inventory order.
INTEGRATIONS: tuple[str, ...] = tuple(dict.fromkeys(a.integration for a in ACTIONS))


def by_integration(actions: tuple[Action, ...] = ACTIONS) -> dict[str, list[Action]]:
    """The actions grouped by integration, in inventory order."""
    groups: dict[str, list[Action]] = {}
    for action in actions:
        groups.setdefault(action.integration, []).append(action)
    return groups
