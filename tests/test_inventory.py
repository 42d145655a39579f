"""The seed's full action inventory as data: complete, unique, valid."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from otel_runs import RunTypeError
from otel_runs._taxonomy import validate_run_type
from otel_runs.inventory import ACTIONS, INTEGRATIONS, Action, by_integration

REPO = Path(__file__).resolve().parent.parent
SEED_CANDIDATES = [
    REPO.parent / "shared" / "seed" / "run-operations-backend.md",
    Path("/work/shared/seed/run-operations-backend.md"),
]

EXPECTED_COUNTS = {
    "Kubernetes": 8, "Terraform": 8, "Docker": 14, "Pages": 8, "Git/GitHub": 11,
    "Testing": 3, "Quality": 6, "Security": 1, "Packages": 2, "Docs": 2, "Vault": 7,
    "Backup": 4, "Infra": 2, "Audit": 1, "Content": 2,
}


def _seed_rows(path: Path) -> list[tuple[str, str, str, str, str]]:
    """(integration, route, method, subtype, summary) for every inventory table row."""
    text = path.read_text(encoding="utf-8")
    section = text.split("## Full Action Inventory", 1)[1].split("**Total", 1)[0]
    rows = []
    integration = ""
    for line in section.splitlines():
        head = re.match(r"### (.+?) \(", line)
        if head:
            integration = head.group(1).replace("Git / GitHub", "Git/GitHub")
            continue
        row = re.match(r"\| `([^`]+)` \| (\w+) \| `([^`]+)` \| (.+?) \|$", line)
        if row:
            route, method, subtype, summary = row.groups()
            rows.append((integration, route, method, subtype, summary))
    return rows


def test_every_row_is_valid_against_the_taxonomy() -> None:
    for action in ACTIONS:
        validate_run_type(action.type, action.subtype)
        assert action.subtype.split(":", 1)[0] == action.type
        assert action.method == "POST"
        assert action.route.startswith("/")


def test_exact_counts_per_integration() -> None:
    counts = Counter(a.integration for a in ACTIONS)
    assert dict(counts) == EXPECTED_COUNTS
    assert len(ACTIONS) == 79
    assert list(INTEGRATIONS) == list(EXPECTED_COUNTS)
    assert {k: len(v) for k, v in by_integration().items()} == EXPECTED_COUNTS


def test_no_duplicate_routes_or_subtypes() -> None:
    keys = Counter(a.key for a in ACTIONS)
    assert [k for k, n in keys.items() if n > 1] == []
    subtypes = Counter(a.subtype for a in ACTIONS)
    assert [s for s, n in subtypes.items() if n > 1] == []


def test_matches_the_seed_document_row_for_row() -> None:
    seed = next((p for p in SEED_CANDIDATES if p.is_file()), None)
    if seed is None:
        pytest.skip("seed document not present beside the clone (counts are checked above)")
    rows = _seed_rows(seed)
    assert len(rows) == 79
    ours = [(a.integration, a.route, a.method, a.subtype, a.summary) for a in ACTIONS]
    missing = [r for r in rows if r not in ours]
    extra = [r for r in ours if r not in rows]
    assert missing == [] and extra == []
    assert ours == rows  # same order too


def test_a_bad_row_fails_when_it_is_built() -> None:
    with pytest.raises(RunTypeError):
        Action("X", "/x", "POST", "deploy", "build:x", "wrong prefix")
    with pytest.raises(RunTypeError):
        Action("X", "/x", "POST", "nope", "nope:x", "unknown type")
    with pytest.raises(ValueError):
        Action("X", "x", "POST", "deploy", "deploy:x", "no leading slash")


def test_actions_are_frozen() -> None:
    with pytest.raises(AttributeError):
        ACTIONS[0].route = "/elsewhere"  # type: ignore[misc]
