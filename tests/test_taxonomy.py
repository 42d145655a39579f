"""The run taxonomy: the seed's 15 types, subtype rules, errors at decoration time."""

from __future__ import annotations

import pytest

import otel_runs
from otel_runs import RUN_TYPES, RunTypeError, register_run_type, run_tracked, tracked_run

SEED_TYPES = {
    "install": "Package/tool installation",
    "build": "Build artifacts (images, sites, binaries)",
    "deploy": "Deploy to target (cluster, cloud, pages)",
    "destroy": "Tear down resources",
    "setup": "Initial setup/configuration of an integration",
    "plan": "Dry-run / preview (terraform plan, helm template)",
    "validate": "Validation / linting",
    "format": "Code/config formatting",
    "test": "Test execution",
    "scan": "Security / audit scans",
    "generate": "Generate configs, templates, scaffolding",
    "backup": "Backup / export",
    "restore": "Restore / import",
    "git": "Git operations (commit, push, pull)",
    "ci": "CI/CD workflow operations",
}


def test_run_types_are_exactly_the_seed_types() -> None:
    seed_view = {k: v for k, v in RUN_TYPES.items() if k in SEED_TYPES}
    assert seed_view == SEED_TYPES
    assert len(SEED_TYPES) == 15


def test_run_types_is_read_only() -> None:
    with pytest.raises(TypeError):
        RUN_TYPES["nope"] = "x"  # type: ignore[index]


def test_register_run_type_extends_the_taxonomy() -> None:
    register_run_type("migrate", "Database migrations")
    assert RUN_TYPES["migrate"] == "Database migrations"
    register_run_type("migrate", "Database migrations")  # idempotent

    @run_tracked("migrate", "migrate:schema")
    def f() -> None:
        return None

    with pytest.raises(RunTypeError, match="already registered"):
        register_run_type("migrate", "something else")
    with pytest.raises(RunTypeError, match="invalid run type name"):
        register_run_type("Bad-Name", "x")


def test_run_type_error_is_a_value_error() -> None:
    assert issubclass(RunTypeError, ValueError)


def test_unknown_type_fails_when_the_decorator_is_applied() -> None:
    called = []
    with pytest.raises(RunTypeError) as err:
        @run_tracked("deploi", "deploi:k8s")
        def view() -> None:
            called.append(1)
    assert "deploi" in str(err.value)
    assert "deploy" in str(err.value)  # lists the valid choices
    assert not called


@pytest.mark.parametrize(
    "subtype",
    ["deploy", "deploy:", "build:k8s", "deploy:K8s", "deploy:k8s-scale", "deploy:k8s:x", "", "deploy: k8s", "deploy:k8s\n"],
)
def test_bad_subtype_fails_at_decoration_with_the_value_named(subtype: str) -> None:
    with pytest.raises(RunTypeError) as err:
        run_tracked("deploy", subtype)
    assert repr(subtype) in str(err.value)
    assert "deploy:<detail>" in str(err.value)


def test_bad_subtype_fails_when_tracked_run_is_created() -> None:
    with pytest.raises(RunTypeError):
        tracked_run(None, "deploy", "deploy:Bad")


def test_good_subtypes_pass() -> None:
    for subtype in ("deploy:k8s", "deploy:k8s_scale", "deploy:helm2"):
        run_tracked("deploy", subtype)
    assert otel_runs.validate_run_id(otel_runs.new_run_id())
