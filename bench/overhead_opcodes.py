"""Bytecode instructions per request of ``bench/overhead.py``'s cases: a noise-free proxy.

    python bench/overhead_opcodes.py [--requests 20] [--top 25]

Timing on a shared machine moves by several percent from run to run; the number of
Python bytecode instructions a request executes does not (it changes only with the
code). Here, per-request time grows roughly in proportion to the instructions
added to case a (an extra plain span: ~1,200 instructions, ~1.08x), so this shows
where case b's added time goes, module by module and function by function, and
whether a change to the request path made it shorter. It counts with
``sys.settrace`` opcode events (slow, so few requests); C code (json, regex, the
GIL, the kernel) is not counted. A diagnostic, not a goal.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from flask import Flask

import otel_runs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (the cases)

Counts = collections.Counter[tuple[str, str]]


def _where(path: str) -> str:
    """A short name for a code file: the package path below site-packages or the repo."""
    for marker in ("site-packages/", str(Path(__file__).resolve().parents[1]) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def opcodes_per_request(app: Flask, requests: int) -> dict[tuple[str, str], float]:
    """Instructions per request of POST /k8s/apply, by (file, function)."""
    client = app.test_client()
    for _ in range(20):  # warm: first-request work is not what is measured
        client.post("/k8s/apply")
    counts: Counts = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            code = frame.f_code
            counts[(code.co_filename, code.co_name)] += 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(requests):
            client.post("/k8s/apply")
    finally:
        sys.settrace(None)
    return {key: n / requests for key, n in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--top", type=int, default=25, help="functions to list for b - a")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    root = Path(tempfile.mkdtemp(prefix="otel-runs-opcodes-")) / "not-a-repo"
    root.mkdir()
    otel_runs.configure(root, ledger=False, processors=[overhead.NothingProcessor(root)])
    apps = {"a": overhead.instrumented_only(), "b": overhead.tracked(root, "b"),
            "s": overhead.nested_span()}
    counts = {name: opcodes_per_request(app, args.requests) for name, app in apps.items()}
    total = {name: sum(c.values()) for name, c in counts.items()}
    for name in apps:
        added = total[name] - total["a"]
        print(f"{name}  {total[name]:8.0f} instructions/request  (+{added:.0f} over a)")
    added_b = {key: counts["b"].get(key, 0) - counts["a"].get(key, 0)
               for key in counts["b"].keys() | counts["a"].keys()}
    by_module: collections.Counter[str] = collections.Counter()
    for (path, _), n in added_b.items():
        where = _where(path)
        by_module[where if where.startswith("otel_runs") else where.split("/", 1)[0]] += n
    print("\nb - a by module:")
    for module, n in by_module.most_common():
        if n >= 1:
            print(f"  {n:7.0f}  {module}")
    print(f"\nb - a, top {args.top} functions:")
    for (path, fn), n in sorted(added_b.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {n:7.0f}  {_where(path)}:{fn}")
    otel_runs.shutdown()


if __name__ == "__main__":
    main()
