"""Secrets never leave the process: the scrubber's rules (a corpus of positives and
negatives) and every output — the git ledger, the API, the live feed, a real OTLP receiver.

Every secret below holds the marker ``Zq9Xv`` (in some case), so one case-insensitive
search finds any of them, or a piece of one, wherever it got to."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otlp_receiver import OTLPHttpReceiver

import otel_runs
from otel_runs.exporters import ScrubbingSpanExporter
from otel_runs.flask import RunTracking
from otel_runs.live import get_hub
from otel_runs.redaction import REDACTED, clean_metadata, is_secret_key, scrub_text

MARK = re.compile("zq9xv", re.I)
GH = "ghp_Zq9Xv" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.Zq9XvSflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV"
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAZq9Xv0yx\nQk2mB9LT3e\n"
       "-----END RSA PRIVATE KEY-----")

# -- key names ---------------------------------------------------------------------------

SECRET_KEYS = [
    "password", "db_password", "db.password", "DB_PASSWORD", "PGPASSWORD", "passwd", "pwd",
    "pass", "passphrase", "vault_passphrase", "secret", "client_secret", "SECRET_KEY",
    "secretKey", "token", "GITHUB_TOKEN", "GitHub-Token", "x-auth-token", "accesstoken",
    "refresh_token", "auth", "authHeader", "Authorization", "http.request.header.authorization",
    "api_key", "apiKey", "APIKey", "x-api-key", "apikey", "private_key", "privateKey",
    "private", "key", "access_key_id", "signing_key", "ssh_keys", "signature",
    "X-Hub-Signature-256", "sig", "dsn", "SENTRY_DSN", "cookie", "set-cookie", "session",
    "session_id", "sessionToken", "credentials", "aws_creds", "jwt", "otp", "hmac",
]
PUBLIC_KEYS = [
    "max_tokens", "prompt_tokens", "tokenizer", "secretary", "passenger", "keyboard",
    "cookie_count", "token_count", "token_type", "password_length", "secret_name",
    "auth_url", "auth_method", "public_key", "publicKey", "keys", "key_name", "monkey",
    "author", "bypass", "compass", "username", "user", "namespace", "replicas", "is_private",
    "has_password", "session_timeout", "num_passwords", "token_expires_at", "keyspace",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_key_names(key: str) -> None:
    assert is_secret_key(key)
    assert clean_metadata({key: "Zq9Xv-1"}) == {key: REDACTED}


@pytest.mark.parametrize("key", PUBLIC_KEYS)
def test_key_names_that_are_not_secrets(key: str) -> None:
    assert not is_secret_key(key)
    assert clean_metadata({key: "plain value"}) == {key: "plain value"}


# -- credential shapes in text: (text, what must stay) -------------------------------------

TEXT_POSITIVES = [
    ("password=Zq9Xv-1 user=me", ["password=***", "user=me"]),
    ("https://deploy:Zq9Xv-pw@git.example.com/r.git", ["https://deploy:***@git.example.com/r.git"]),
    ("redis://:Zq9Xv@cache:6379/0", ["redis://:***@cache:6379/0"]),
    ("/cb?code=1&access_token=Zq9Xv&state=ok", ["code=1", "access_token=***", "state=ok"]),
    ("GET /hook?api_key=Zq9Xv HTTP/1.1", ["api_key=*** HTTP/1.1"]),
    ("https://s3/x?X-Amz-Signature=Zq9Xvab12&X-Amz-Date=1", ["X-Amz-Signature=***", "X-Amz-Date=1"]),
    ("Authorization: Bearer Zq9Xv.abc-123", ["Authorization: ***"]),
    ("calling with Bearer Zq9Xv_0123456789", ["Bearer ***"]),
    ("-H 'Authorization: Basic dXNlcjpaq9Xv0=' x", ["Authorization: ***", " x"]),
    ("Basic dXNlcjpZq9XvcGFzcw==", ["Basic ***"]),
    ("deploy --password Zq9Xv-1 --user me", ["--password ***", "--user me"]),
    ("psql --db-password=Zq9Xv", ["--db-password=***"]),
    ("app -token Zq9Xv -v", ["-token ***", "-v"]),
    ("export GITHUB_TOKEN=Zq9Xv1", ["GITHUB_TOKEN=***"]),
    ('{"client_secret": "Zq9Xv", "client_id": "app"}', ['"client_secret": "***"', '"app"']),
    ("{'password': 'Zq9Xv', 'user': 'me'}", ["'password': '***'", "'me'"]),
    ('{\\"password\\": \\"Zq9Xv\\"}', ['\\"password\\": \\"***\\"']),
    ("ALTER USER app WITH PASSWORD 'Zq9Xv''x' VALID", ["PASSWORD '***' VALID"]),
    ('CREATE USER bob IDENTIFIED BY "Zq9Xv"', ['IDENTIFIED BY "***"']),
    ("Server=db;User Id=sa;Password=Zq9Xv;Database=app", ["User Id=sa", "Password=***;"]),
    ("set-cookie: session=Zq9Xv; Path=/", ["set-cookie: ***"]),
    ("x-auth-token: Zq9Xv", ["x-auth-token: ***"]),
    ("pwd:Zq9Xv", ["pwd:***"]),
    (f"key is {GH}, keep it", ["key is ***, keep it"]),
    ("github_pat_11ABCZq9Xv0123456789_abcdefghijklmnop", ["***"]),
    ("aws AKIAZQ9XV00000000000 done", ["aws *** done"]),
    ("xoxb-1234-Zq9Xv-abcdefgh", ["***"]),
    (f"jwt {JWT}.", ["jwt ***."]),
    ("AIzaZq9Xv123456789012345678901234567890", ["***"]),
    ("sk_live_Zq9Xv1234567890abcd", ["***"]),
    ("glpat-Zq9Xv1234567890abcdef", ["***"]),
    ("npm_Zq9Xv1234567890abcdefghijklmnopqrst", ["***"]),
    ("sk-proj-Zq9Xv1234567890abcdefghij", ["***"]),
    (f"key:\n{PEM}\nend", ["key:\n***\nend"]),
    (PEM[:60], ["***"]),  # cut before its END line
]
TEXT_NEGATIVES = [
    "prod", "deploy:k8s", "2026-11-27T10:15:00.123456Z", "applied 3 objects",
    "postgres://demo@localhost:5432/demo", "https://example.com/a?page=2&sort=asc",
    "basic configuration done", "the bearer of bad news", "max_tokens=4096",
    "tokenizer: bpe", "token_type=Bearer", "see --help for options", "ssh -p 2222 host",
    "SELECT * FROM users WHERE name = 'bob'", "echo 'hello'", "eyJ is how JSON in base64 starts",
    "AKIA", "ghp_short", "sk-learn", "https://user@host/", "keys: API_TOKEN, DB_PASSWORD",
    "password_length=12", "--password", "cookie_count: 3", "passenger=Bob",
    "20261127T101500123Z-3fa9c2d1e5", "registry.example.com/web:1.2.3",
]


@pytest.mark.parametrize(("text", "kept"), TEXT_POSITIVES)
def test_credential_shapes_in_text(text: str, kept: list[str]) -> None:
    out = scrub_text(text)
    assert not MARK.search(out), out
    for part in kept:
        assert part in out, (out, part)
    assert scrub_text(out) == out  # idempotent: exits scrub again


@pytest.mark.parametrize("text", TEXT_NEGATIVES)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert scrub_text(text) == text


def test_metadata_structures() -> None:
    meta = {
        "argv": ["deploy", "--password", "Zq9Xv-1", "--token=Zq9Xv-2", "-v", "--api-key", "Zq9Xv"],
        "env": {"DB_PASSWORD": "Zq9Xv", "HOME": "/root", "nested": [{"auth": "Zq9Xv"}]},
        "unset": {"password": None, "auth": False, "token": ""},
        "url": "https://ci:Zq9Xv@ci.example.com/job", "n": 3, "ok": True,
        "credentials": {"user": "me", "password": "Zq9Xv"},
    }
    out = clean_metadata(meta)
    assert not MARK.search(json.dumps(out)), out
    assert out["argv"] == ["deploy", "--password", "***", "--token=***", "-v", "--api-key", "***"]
    assert out["env"] == {"DB_PASSWORD": "***", "HOME": "/root", "nested": [{"auth": "***"}]}
    assert out["unset"] == {"password": None, "auth": False, "token": ""}  # they say nothing
    assert out["url"] == "https://ci:***@ci.example.com/job" and out["n"] == 3
    assert out["credentials"] == "***"


def test_registered_values_patterns_and_key_parts() -> None:
    otel_runs.add_secret_values("correct horse Zq9Xv staple", "abc")  # "abc": too short, ignored
    assert scrub_text("unlocked with correct horse Zq9Xv staple!") == "unlocked with ***!"
    assert scrub_text("abc") == "abc"
    otel_runs.add_secret_patterns(r"\bacme_[0-9a-f]{8}\b", anchors=["acme_"])
    assert scrub_text("id acme_0123abcd ok") == "id *** ok"
    assert not is_secret_key("vault_pin")
    otel_runs.add_secret_key_parts("pin", "tenant_code")
    assert is_secret_key("vault_pin") and is_secret_key("pinCode") and not is_secret_key("spinner")
    assert is_secret_key("tenant_code_v2") and not is_secret_key("tenant")
    assert scrub_text("pin=1234") == "pin=***"


def test_secret_keys_from_the_environment(tmp_path: Path) -> None:
    code = ("from otel_runs.redaction import is_secret_key as s; "
            "print(s('vault_pin'), s('x_tenant_code'), s('tenant'))")
    env = {"OTEL_RUNS_SECRET_KEYS": "pin, tenant_code", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert out.stdout.split() == ["True", "True", "False"], out.stderr


def test_the_demo_registers_its_vault_passphrase() -> None:
    pytest.importorskip("cryptography")
    from otel_runs.demo._vault import decrypt, encrypt

    passphrase = "demo vault Zq9Xv phrase"
    assert decrypt(encrypt(b"x", passphrase), passphrase) == b"x"
    assert scrub_text(f"note: {passphrase}") == "note: ***"


def test_scrubbing_exporter_hands_over_scrubbed_copies() -> None:
    sink = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ScrubbingSpanExporter(sink)))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span(f"GET /x?token={GH}", attributes={
            "db.password": "Zq9Xv", "url.query": "a=1&api_key=Zq9Xv", "n": 2, "blob": "b" * 10_000,
            "process.command_args": ("app", "--password", "Zq9Xv")}) as span:
        span.add_event("login", {"note": f"with {JWT}"})
        span.set_status(trace.Status(trace.StatusCode.ERROR, "bad password=Zq9Xv"))
        original = span
    (copy,) = sink.get_finished_spans()
    assert copy is not original and not MARK.search(copy.to_json())
    assert (copy.context, copy.start_time, copy.end_time) == (
        original.context, original.start_time, original.end_time)
    assert copy.attributes["url.query"] == "a=1&api_key=***" and copy.attributes["n"] == 2
    assert copy.attributes["blob"].endswith("…[truncated 5904 chars]")
    assert list(copy.attributes["process.command_args"]) == ["app", "--password", "***"]
    assert MARK.search(original.attributes["db.password"])  # the SDK's span is untouched
    provider.shutdown()


# -- through every output --------------------------------------------------------------------

#: Metadata keys whose values are secrets, and keys whose values must stay.
LEAKY = {"auth": "Zq9Xv-a", "pass": "Zq9Xv-b", "pwd": "Zq9Xv-c", "private": "Zq9Xv-d",
         "key": "Zq9Xv-e", "signature": "Zq9Xv-f", "dsn": "https://Zq9Xv@sentry.example/1",
         "authHeader": "Bearer Zq9Xv.0123456789", "repo": "https://bot:Zq9Xv@git.example/r",
         "argv": ["kubectl", "--password", "Zq9Xv-g"], "note": f"token {GH}"}
KEPT = {"max_tokens": 4096, "tokenizer": "bpe", "secretary": "Ann", "cookie_count": 3,
        "db": "postgres://demo@localhost:5432/demo"}
REGISTERED = "registered Zq9Xv value"


def _app(root: Path, endpoint: str) -> Flask:
    app = Flask("secrets_app")
    app.config["PROJECT_ROOT"] = str(root)
    tracer = trace.get_tracer("test.secrets")

    @app.post("/deploy")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def deploy() -> Any:
        run = otel_runs.current_run()
        assert run is not None
        run.metadata.update(LEAKY, **KEPT)
        run.add_event(f"rotated {GH}", password="Zq9Xv", detail=f"with {JWT}")
        with tracer.start_as_current_span("db query", attributes={
                "db.password": "Zq9Xv-h", "db.statement": "ALTER USER app PASSWORD 'Zq9Xv-i'",
                "db.connection_string": "Server=db;Password=Zq9Xv-j;"}):
            pass
        return {"ok": True, "summary": f"deployed with {REGISTERED} and password=Zq9Xv-k"}

    @app.post("/fail")
    @otel_runs.run_tracked("deploy", "deploy:k8s")
    def fail() -> Any:
        with tracer.start_as_current_span("connect"):
            raise RuntimeError(f"cannot connect to {LEAKY['repo']} with {GH} ({REGISTERED})")

    RunTracking(app, otlp_endpoint=endpoint)
    return app


def test_no_secret_reaches_the_ledger_the_api_the_feed_or_otlp(
        git_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    otel_runs.add_secret_values(REGISTERED)
    receiver = OTLPHttpReceiver()
    try:
        app = _app(git_repo, receiver.endpoint)
        sub = get_hub(app).subscribe()
        client = app.test_client()
        ok = client.post(f"/deploy?token={GH}&api_key=Zq9Xv-l&page=2")
        failed = client.post("/fail?access_token=Zq9Xv-m")
        assert ok.status_code == 200 and failed.status_code == 500
        ids = [ok.headers["X-Run-Id"], failed.headers["X-Run-Id"]]
        assert otel_runs.flush()

        # the API (and through it the ledger's reads)
        bodies = [client.get(f"/api/runs/{run_id}").get_json() for run_id in ids]
        assert all(b and "run" in b for b in bodies), bodies
        text = json.dumps(bodies)
        assert not MARK.search(text), MARK.search(text)
        run = bodies[0]["run"]
        assert {k: run["metadata"][k] for k in KEPT} == KEPT
        assert run["metadata"]["argv"] == ["kubectl", "--password", "***"]
        assert run["summary"] == "deployed with *** and password=***"
        assert [s["name"] for s in bodies[0]["spans"]] == ["db query"]
        failed_run = bodies[1]["run"]
        assert failed_run["status"] == "failed" and "cannot connect" in failed_run["summary"]
        (exc,) = [e for e in failed_run["events"] if e["name"] == "exception"]
        assert "RuntimeError" in exc["attributes"]["exception.stacktrace"]

        # the ledger branch itself, every file of it
        out = git(git_repo, "grep", "-I", "-i", "-c", "zq9xv", "scp-ledger", check=False)
        assert out == "", out
        assert git(git_repo, "grep", "-I", "-c", "cannot connect", "scp-ledger").strip()

        # the live feed: what the hub holds for replay
        events = sub.next_batch(1.0)
        sub.close()
        assert len(events) >= 4 and not MARK.search("".join(e.data for e in events))

        # OTLP: every span, the Flask request spans included
        spans = receiver.wait_for(lambda got: len(got) >= 6 and got)
        names = {s["name"] for s in spans}
        assert {"POST /deploy", "POST /fail", "db query", "connect"} <= names, names
        exported = json.dumps(spans)
        assert not MARK.search(exported), MARK.search(exported)
        request = next(s for s in spans if s["name"] == "POST /deploy")
        targets = [v for k, v in request["attributes"].items()
                   if k in ("http.url", "url.full", "http.target", "url.query")]
        assert targets and all("token=***" in v and "page=2" in v for v in targets), targets
    finally:
        otel_runs.shutdown()
        receiver.stop()
