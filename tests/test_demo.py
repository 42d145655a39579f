"""The demo control plane in a real server: every inventory route is a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

import otel_runs
from otel_runs import RUN_ID_HEADER
from otel_runs.audit import untracked_routes
from otel_runs.demo import DemoDirError, create_demo_app
from otel_runs.demo._routes import DEFAULT_PASSPHRASE
from otel_runs.inventory import ACTIONS
from otel_runs.ledger import ledger_for
from otel_runs.web_security import CSRF_HEADER

#: With failure_rate=0, clicking the inventory top to bottom, these fail for a real reason.
EXPECTED_FAILURES = {
    "setup:git_remote_rename": "no remote to rename",  # the previous row removed it
    "test:run": "no tests yet",  # the test template comes later in the inventory
    "restore:vault": "nothing to import",  # the export comes after the import
}


#: What the demo's own page sends (a client without Origin / Sec-Fetch-Site must).
SAME_ORIGIN = {CSRF_HEADER: "1"}


def _client(app: Any) -> Any:
    """A test client that sends the header the demo asks of non-browser clients."""
    client = app.test_client()
    client.environ_base["HTTP_X_OTEL_RUNS_CSRF"] = "1"
    return client


def _path(route: str) -> str:
    return route.replace("<name>", "mkdocs" if "/builders/" in route else "docs")


@pytest.fixture
def demo(tmp_path: Path) -> Any:
    return create_demo_app(tmp_path / "demo", delay=0, failure_rate=0)


def test_every_inventory_route_answers_and_records_exactly_one_run(demo: Any,
                                                                   live_server: Any) -> None:
    server = live_server(demo)
    answers: dict[str, tuple[str, Any]] = {}
    with requests.Session() as http:
        http.headers.update(SAME_ORIGIN)
        for action in ACTIONS:
            resp = http.post(server.url + _path(action.route), json={}, timeout=60)
            assert resp.status_code == 200, (action.route, resp.text[:300])
            body: Any = resp.text
            if resp.headers["Content-Type"].startswith("application/json"):
                body = resp.json()
                assert body["run_id"] == resp.headers[RUN_ID_HEADER]
            answers[action.subtype] = (resp.headers[RUN_ID_HEADER], body)
    otel_runs.flush()
    ledger = ledger_for(demo.config["PROJECT_ROOT"])
    assert ledger.flush()
    recorded = list(ledger.iter_runs())
    assert len(recorded) == len(ACTIONS) == 79  # exactly one run per request
    assert len({r.run_id for r in recorded}) == 79
    for action in ACTIONS:
        run_id, body = answers[action.subtype]
        run = ledger.get(run_id)
        assert run is not None, action.route
        assert (run.type, run.subtype) == (action.type, action.subtype)
        if action.subtype in EXPECTED_FAILURES:
            assert run.status == "failed"
            assert EXPECTED_FAILURES[action.subtype] in run.summary
        else:
            assert run.status == "ok", (action.subtype, run.summary)
            assert run.summary
    commit = ledger.get(answers["git:commit"][0])
    assert commit is not None and commit.summary.startswith("Committed ")
    assert any(ev["name"] == "command" for ev in commit.events)  # real git, as events


def test_secrets_are_redacted_in_the_ledger(demo: Any, live_server: Any) -> None:
    server = live_server(demo)
    secret = "my very secret passphrase 42"
    enc = requests.post(server.url + "/content/encrypt",
                        json={"passphrase": secret, "text": "hello"}, headers=SAME_ORIGIN,
                        timeout=30).json()
    assert enc["ok"] and enc["ciphertext"] and "hello" not in enc["ciphertext"]
    dec = requests.post(server.url + "/content/decrypt", json={"passphrase": secret},
                        headers=SAME_ORIGIN, timeout=30)
    assert dec.json()["plaintext"] == "hello"
    wrong = requests.post(server.url + "/content/decrypt", json={"passphrase": "nope"},
                          headers=SAME_ORIGIN, timeout=30)
    assert wrong.json()["ok"] is False
    env = requests.post(server.url + "/infra/env/generate-env", json={}, headers=SAME_ORIGIN,
                        timeout=30).json()
    otel_runs.flush()
    ledger = ledger_for(demo.config["PROJECT_ROOT"])
    enc_run = ledger.get(enc["run_id"])
    assert enc_run is not None and enc_run.metadata["passphrase"] == "***"
    assert secret not in json.dumps(enc_run.to_dict())
    failed = ledger.get(wrong.json()["run_id"])
    assert failed is not None and failed.status == "failed"
    env_run = ledger.get(env["run_id"])
    assert env_run is not None
    assert env_run.metadata["API_TOKEN"] == "***" and env_run.metadata["SECRET_KEY"] == "***"
    assert env_run.metadata["DATABASE_URL"].startswith("postgres://")


def test_vault_round_trip_really_encrypts(demo: Any) -> None:
    client = _client(demo)
    project = Path(demo.config["PROJECT_ROOT"])
    assert client.post("/vault/create", json={}).get_json()["ok"]
    plain = (project / "secrets.env").read_text()
    assert client.post("/vault/lock", json={}).get_json()["ok"]
    assert not (project / "secrets.env").exists()
    sealed = (project / ".vault" / "secrets.enc").read_text()
    assert "API_TOKEN" not in sealed and plain.split("=")[1].split()[0] not in sealed
    assert client.post("/vault/unlock", json={"passphrase": "wrong"}).get_json()["ok"] is False
    assert client.post("/vault/unlock", json={"passphrase": DEFAULT_PASSPHRASE}).get_json()["ok"]
    assert (project / "secrets.env").read_text() == plain


def test_the_build_stream_run_lasts_as_long_as_its_stream(tmp_path: Path, live_server: Any,
                                                           collector: Any) -> None:
    delay = 0.4  # five steps of delay * 1.5 / 5 = 0.12 s each
    app = create_demo_app(tmp_path / "demo", delay=delay, failure_rate=0)
    server = live_server(app)
    with requests.post(server.url + "/pages/build-stream/docs", json={}, stream=True,
                       headers=SAME_ORIGIN, timeout=60) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        run_id = resp.headers[RUN_ID_HEADER]
        lines = resp.iter_lines(decode_unicode=True)
        first = next(line for line in lines if line)
        assert first.startswith("data: ")
        assert any(r.run_id == run_id for r in collector.started)
        assert all(r.run_id != run_id for r in collector.ended)  # still running mid-stream
        rest = [line for line in lines if line]
    assert rest[-2:] == ["event: done", 'data: {"ok": true, "segment": "docs"}']
    assert collector.wait_for(lambda: any(r.run_id == run_id for r in collector.ended))
    run = collector.by_id(run_id)
    assert run.status == "ok" and run.summary == "Streamed build of docs (5 steps)"
    assert run.duration_ms is not None and run.duration_ms >= 5 * delay * 1.5 / 5 * 1000
    assert [e["attributes"]["index"] for e in run.events if e["name"] == "step"] == [1, 2, 3, 4, 5]


def test_a_failing_stream_fails_its_run(demo: Any, collector: Any) -> None:
    resp = _client(demo).post("/pages/build-stream/docs", json={"fail": True})
    text = resp.get_data(as_text=True)
    assert "event: error" in text
    run_id = resp.headers[RUN_ID_HEADER]
    assert collector.wait_for(lambda: any(r.run_id == run_id for r in collector.ended))
    run = collector.by_id(run_id)
    assert run.status == "failed" and "failed at" in run.summary


def test_simulated_failures_are_deterministic(tmp_path: Path, collector: Any) -> None:
    def outcomes(where: str) -> list[bool]:
        app = create_demo_app(tmp_path / where, delay=0, failure_rate=0.5, seed=3)
        client = _client(app)
        return [client.post("/docker/pull", json={}).get_json()["ok"] for _ in range(12)]

    first, second = outcomes("a"), outcomes("b")
    assert first == second
    assert True in first and False in first
    always = _client(create_demo_app(tmp_path / "c", delay=0, failure_rate=0))
    body = always.post("/k8s/apply", json={"fail": True}).get_json()
    assert body["ok"] is False and "kubeconfig" in body["summary"]


def test_the_home_page_has_a_button_for_every_action_beside_the_live_page(
        demo: Any, live_server: Any) -> None:
    server = live_server(demo)
    page = requests.get(server.url + "/", timeout=30)
    assert page.status_code == 200
    for action in ACTIONS:
        assert f'data-route="{action.route.replace("<", "&lt;").replace(">", "&gt;")}"' in page.text
    assert '<iframe src="/runs"' in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert requests.get(server.url + "/runs", timeout=30).status_code == 200
    listed = requests.get(server.url + "/demo/actions", timeout=30).json()
    assert len(listed) == 79


def test_the_demo_app_passes_the_route_audit(demo: Any) -> None:
    assert untracked_routes(demo) == []


def test_the_demo_refuses_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DemoDirError, match="not empty"):
        create_demo_app(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_a_previous_demo_directory_is_reused(tmp_path: Path) -> None:
    app = create_demo_app(tmp_path / "d", delay=0, failure_rate=0)
    _client(app).post("/git/commit", json={"message": "first"})
    otel_runs.flush()
    otel_runs.shutdown()
    again = create_demo_app(tmp_path / "d", delay=0, failure_rate=0)
    log = _client(again).post("/docs/generate/changelog", json={}).get_json()
    assert log["ok"] and "from 2 commits" in log["summary"]
