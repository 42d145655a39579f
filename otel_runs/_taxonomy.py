"""The run taxonomy: broad types and ``type:detail`` subtypes, validated early."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["RUN_TYPES", "RunTypeError", "register_run_type", "validate_run_type"]

_SEED_TYPES: dict[str, str] = {
    # Lifecycle operations
    "install": "Package/tool installation",
    "build": "Build artifacts (images, sites, binaries)",
    "deploy": "Deploy to target (cluster, cloud, pages)",
    "destroy": "Tear down resources",
    # Maintenance operations
    "setup": "Initial setup/configuration of an integration",
    "plan": "Dry-run / preview (terraform plan, helm template)",
    "validate": "Validation / linting",
    "format": "Code/config formatting",
    # Execution operations
    "test": "Test execution",
    "scan": "Security / audit scans",
    "generate": "Generate configs, templates, scaffolding",
    # Data operations
    "backup": "Backup / export",
    "restore": "Restore / import",
    # Git operations
    "git": "Git operations (commit, push, pull)",
    "ci": "CI/CD workflow operations",
}

_types: dict[str, str] = dict(_SEED_TYPES)

#: The registered run types and their descriptions (read-only view; extend with
#: :func:`register_run_type`).
RUN_TYPES: Mapping[str, str] = MappingProxyType(_types)

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*")
_DETAIL_RE = re.compile(r"[a-z0-9_]+")


class RunTypeError(ValueError):
    """A run type or subtype is not valid."""


def register_run_type(name: str, description: str) -> None:
    """Add a run type to :data:`RUN_TYPES` (idempotent for the same description)."""
    if not isinstance(name, str) or not _TYPE_RE.fullmatch(name):
        raise RunTypeError(
            f"invalid run type name {name!r}: use lowercase letters, digits and '_', "
            "starting with a letter"
        )
    if not isinstance(description, str) or not description.strip():
        raise RunTypeError(f"run type {name!r} needs a non-empty description")
    existing = _types.get(name)
    if existing is not None and existing != description:
        raise RunTypeError(
            f"run type {name!r} is already registered as {existing!r}"
        )
    _types[name] = description


def validate_run_type(run_type: str, subtype: str) -> None:
    """Raise :class:`RunTypeError` unless ``run_type`` is registered and
    ``subtype`` is ``"<run_type>:<detail>"`` with detail in ``[a-z0-9_]+``."""
    if run_type not in _types:
        raise RunTypeError(
            f"unknown run type {run_type!r}; valid types: {', '.join(sorted(_types))} "
            "(or add one with otel_runs.register_run_type)"
        )
    if not isinstance(subtype, str):
        raise RunTypeError(f"run subtype must be a string, got {subtype!r}")
    prefix, sep, detail = subtype.partition(":")
    if not sep or prefix != run_type or not _DETAIL_RE.fullmatch(detail):
        raise RunTypeError(
            f"invalid run subtype {subtype!r} for type {run_type!r}: expected "
            f"'{run_type}:<detail>' with detail of lowercase letters, digits and '_' "
            f"(e.g. '{run_type}:k8s')"
        )
