"""What the demo's actions are made of: real commands, simulated tools, failures."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app, request
from opentelemetry import trace

from .._tracking import current_run

__all__ = ["DemoState", "demo_state", "fail_requested", "payload", "run_command", "simulate"]

_tracer = trace.get_tracer("otel_runs.demo")
#: Harmless, read-only commands used to tell whether a tool is installed.
_PROBES = {
    "kubectl": ["kubectl", "version", "--client"],
    "helm": ["helm", "version", "--short"],
    "terraform": ["terraform", "version"],
    "docker": ["docker", "--version"],
    "gh": ["gh", "--version"],
    "npm": ["npm", "--version"],
    "ruff": ["ruff", "--version"],
    "mypy": ["mypy", "--version"],
    "coverage": [sys.executable, "-m", "coverage", "--version"],
    "pip": [sys.executable, "-m", "pip", "--version"],
}


@dataclass
class DemoState:
    """Per-app demo state (in ``app.extensions["otel_runs_demo"]``)."""

    base: Path
    project: Path
    remote: Path
    teammate: Path
    delay: float
    failure_rate: float
    rng: random.Random
    lock: threading.RLock = field(default_factory=threading.RLock)
    tools: dict[str, str | None] = field(default_factory=dict)
    last_ciphertext: str | None = None
    counter: int = 0

    def next_number(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def roll_failure(self) -> bool:
        """Deterministic for a given seed and request order."""
        with self.lock:
            return self.rng.random() < self.failure_rate


def demo_state() -> DemoState:
    return current_app.extensions["otel_runs_demo"]  # type: ignore[no-any-return]


def payload() -> dict[str, Any]:
    """The request's JSON object body, or form fields, or {}."""
    data = request.get_json(silent=True)
    if isinstance(data, dict):
        return data
    return dict(request.form.items())


def fail_requested() -> bool:
    value = payload().get("fail")
    return value is True or str(value).lower() in ("1", "true", "yes", "on")


def _note(**metadata: Any) -> None:
    run = current_run()
    if run is not None:
        run.metadata.update(metadata)


def _event(name: str, **attributes: Any) -> None:
    run = current_run()
    if run is not None:
        run.add_event(name, **attributes)


def run_command(argv: list[str], cwd: Path, *, timeout: float = 60.0,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a real command as a child span of the current run (exit code and the
    tail of its output recorded as a run event)."""
    name = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv[:3]))
    with _tracer.start_as_current_span(name) as span:
        span.set_attribute("process.command_args", argv)
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, **(env or {})})
        except (OSError, subprocess.TimeoutExpired) as exc:
            span.set_attribute("process.exit.code", -1)
            _event("command", command=name, exit_code=-1, error=str(exc))
            return subprocess.CompletedProcess(argv, -1, "", str(exc))
        span.set_attribute("process.exit.code", proc.returncode)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        _event("command", command=name, exit_code=proc.returncode,
               seconds=round(time.monotonic() - started, 3), output=" | ".join(tail)[:300])
        return proc


def tool_status(tool: str) -> str | None:
    """The installed tool's version line, or None (probed once, read-only)."""
    state = demo_state()
    with state.lock:
        if tool in state.tools:
            return state.tools[tool]
    probe = _PROBES.get(tool, [tool, "--version"])
    version: str | None = None
    if probe[0] == sys.executable or shutil.which(probe[0]):
        try:
            proc = subprocess.run(probe, capture_output=True, text=True, timeout=5)
            if proc.returncode == 0:
                version = (proc.stdout or proc.stderr).strip().splitlines()[0][:80]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            version = None
    with state.lock:
        state.tools[tool] = version
    return version


def simulate(tool: str, command: str, steps: list[str], *, weight: float = 1.0,
             ok_summary: str, fail_summary: str, **details: Any) -> dict[str, Any]:
    """Play an action of ``tool`` without touching any real system: ``steps`` as
    run events over ``weight * delay`` seconds in a child span; fails when the
    request asks (``{"fail": true}``) or the seeded dice say so."""
    state = demo_state()
    version = tool_status(tool)
    mode = (f"{tool} found ({version}); the demo never acts on real systems, simulated"
            if version else f"{tool} not installed here: simulated")
    _note(tool=tool, mode=mode, command=command, **details)
    total = max(0.0, state.delay * weight)
    failing = fail_requested() or state.roll_failure()
    fail_at = len(steps) - 1 if failing else -1
    output: list[str] = []
    with _tracer.start_as_current_span(command) as span:
        span.set_attribute("demo.simulated", True)
        for i, step in enumerate(steps):
            if total:
                time.sleep(total / len(steps))
            if i == fail_at:
                output.append(f"error: {fail_summary}")
                _event("step", step=step, outcome="error")
                span.set_status(trace.Status(trace.StatusCode.ERROR, fail_summary))
                break
            output.append(step)
            _event("step", step=step)
    ok = not failing
    return {"ok": ok, "summary": ok_summary if ok else fail_summary, "tool": tool,
            "simulated": True, "output": output, **details}
