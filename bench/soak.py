"""Soak: hundreds of thousands of runs through ``tracked_run``, then every one checked in git.

    python bench/soak.py [--runs 200000] [--procs 4 --per-proc 50000] [--seconds 900]

Two scenarios, each on a fresh git repository in a temp dir, each writer a fresh process
(``configure(repo)``, then ``tracked_run`` in a loop, then ``ledger_for(repo).flush()``):

  one process   ``--runs`` runs in one writer
  N processes   ``--procs`` writers at once, ``--per-proc`` runs each, one repository

For each it prints, with goals and PASS/FAIL:

* runs lost (goal 0): run ids the writers produced that are not on the branch tip
  (``git ls-tree -r``), plus tag problems (no tag, tag not on a commit of the branch, the
  tagged commit's tree without the run: ``git cat-file --batch-check`` of ``<tag>:<path>``
  for every run) and ``git fsck --strict --no-dangling``;
* sustained committed rate: runs / time from the first run until ``flush()`` returned; as
  ratios measured in the same run: the committed rate in the last quarter of the runs vs
  the first quarter (from polling the branch: commit titles ``otel-runs: record N runs``)
  and committed vs durable rate (runs journaled per second while recording: below 1 the
  committer falls behind and the backlog waits in the writer); printed for reference;
* the writer's RSS (``VmRSS`` of ``/proc/self/status``, read inside the writer) when
  ``flush()`` returned vs after 10,000 runs (goal <= 1.5x; with several writers, the worst).

Bounded: each writer stops at its run count or after ``--seconds`` (then ``flush()`` gets
what is left of ``--seconds``, at least 60 s). ``--procs 0`` / ``--runs 0`` skip a scenario.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BRANCH = "scp-ledger"
TAG_PREFIX = "refs/tags/scp-run/"
RSS_MARK = 10_000
_TITLE_RE = re.compile(r"^otel-runs: record (\d+) runs?$")


# -- the writer process ------------------------------------------------------------------------


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _say(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def writer_main(root: str, runs: int, ids_path: str, seconds: float) -> None:
    """One writer: ``runs`` runs (or ``seconds``), ids to ``ids_path``, flush; JSON events."""
    import otel_runs
    from otel_runs.ledger import ledger_for

    otel_runs.configure(root)
    ledger = ledger_for(root)
    mark = min(RSS_MARK, max(1, runs // 2))
    start = time.monotonic()
    deadline = start + seconds
    _say(e="start", t=start, kb=_rss_kb())
    n = 0
    # The ids go to a file as they come: a list of 200,000 ids (~17 MB) would be counted
    # in the writer's RSS, which is meant to measure what otel-runs keeps.
    with open(ids_path, "w") as ids:
        while n < runs and time.monotonic() < deadline:
            with otel_runs.tracked_run(root, "deploy", "deploy:k8s",
                                       summary=f"rolled out web #{n}", replicas=3,
                                       image="registry.local/web:1.4.2") as run:
                run.add_event("applied", objects=3)
            ids.write(run.run_id + "\n")
            n += 1
            if n == mark:
                _say(e="mark", runs=n, kb=_rss_kb())
    _say(e="recorded", runs=n, t=time.monotonic(), kb=_rss_kb())
    ok = ledger.flush(max(60.0, deadline - time.monotonic()))
    _say(e="flushed", ok=ok, t=time.monotonic(), kb=_rss_kb())


# -- the parent ---------------------------------------------------------------------------------


def git(repo: Path, *args: str, input: str | None = None) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com",
           "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True,
                          text=True, input=input).stdout


def new_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("bench\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "init")
    return path


class BranchPoller:
    """Polls the ledger branch (bounded by ``stop()``): (monotonic time, runs committed so
    far), counted from the commit titles of new commits."""

    def __init__(self, repo: Path, interval: float = 0.25) -> None:
        self.repo, self.interval = repo, interval
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last, total = None, 0
        while not self._stop.wait(self.interval):
            tip = subprocess.run(["git", "rev-parse", "-q", "--verify", f"refs/heads/{BRANCH}"],
                                 cwd=self.repo, capture_output=True, text=True).stdout.strip()
            if not tip or tip == last:
                continue
            span = tip if last is None else f"{last}..{tip}"
            titles = subprocess.run(["git", "log", "--format=%s", span], cwd=self.repo,
                                    capture_output=True, text=True).stdout.splitlines()
            total += sum(int(m.group(1)) for t in titles if (m := _TITLE_RE.match(t)))
            last = tip
            self.series.append((time.monotonic(), total))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def time_at(self, runs: float) -> float | None:
        """When at least ``runs`` runs were first seen committed (None: never)."""
        return next((t for t, n in self.series if n >= runs), None)


def run_path(run_id: str) -> str:
    """The run's file on the branch (docs/ledger-storage.md)."""
    digest = hashlib.sha1(run_id.encode("ascii")).hexdigest()
    return "/".join(["ledger", "runs", run_id[0:4], run_id[4:6], run_id[6:8], *digest[:4],
                     run_id, "run.json"])


def batch_check(repo: Path, names: list[str]) -> list[str]:
    """``git cat-file --batch-check=%(objecttype)`` of every name, pipelined, split over one
    cat-file per core."""
    workers = max(1, min(4, os.cpu_count() or 1, len(names) // 1000 or 1))
    chunks = [names[i::workers] for i in range(workers)]
    procs = [subprocess.Popen(["git", "cat-file", "--batch-check=%(objecttype)"], cwd=repo,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in chunks]
    outs = [""] * workers

    def feed(i: int) -> None:
        outs[i] = procs[i].communicate("".join(f"{n}\n" for n in chunks[i]))[0]

    threads = [threading.Thread(target=feed, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answers = [""] * len(names)
    for i, out in enumerate(outs):
        lines = out.splitlines()
        if len(lines) != len(chunks[i]):
            raise RuntimeError(f"git cat-file answered {len(lines)} of {len(chunks[i])} names")
        answers[i::workers] = lines
    return answers


def check_git(repo: Path, produced: list[str]) -> dict[str, Any]:
    """What git says about the produced runs: counts of every kind of problem."""
    expected = set(produced)
    try:
        tip = git(repo, "rev-parse", "--verify", f"{BRANCH}^{{commit}}").strip()
    except subprocess.CalledProcessError:
        return {"lost": len(expected), "no branch": True}
    run_files = [p for p in git(repo, "ls-tree", "-r", "--name-only", tip, "--",
                                "ledger/runs").split() if p.endswith("/run.json")]
    on_branch = Counter(p.split("/")[-2] for p in run_files)
    commits = set(git(repo, "rev-list", tip).split())
    tags: dict[str, str] = {}
    for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname)",
                    TAG_PREFIX).splitlines():
        name, oid = line.split()
        tags[name.removeprefix(TAG_PREFIX)] = oid
    probe = sorted(expected & tags.keys())
    answers = batch_check(repo, [f"{tags[r]}:{run_path(r)}" for r in probe])
    fsck = subprocess.run(["git", "fsck", "--strict", "--no-dangling"], cwd=repo,
                          capture_output=True, text=True)
    return {
        "lost": len(expected - on_branch.keys()),
        "duplicated": sum(1 for n in on_branch.values() if n > 1),
        "unexpected": len(on_branch.keys() - expected),
        "misplaced": sum(1 for p in run_files if p != run_path(p.split("/")[-2])),
        "untagged": len(expected - tags.keys()),
        "tag off branch": sum(1 for r in probe if tags[r] not in commits),
        "tag without run": sum(1 for a in answers if a != "blob"),
        "commits": len(commits),
        "fsck": "clean" if fsck.returncode == 0 else (fsck.stdout + fsck.stderr).strip()[-500:],
    }


def scenario(base: Path, name: str, procs: int, per_proc: int, seconds: float) -> bool:
    """Run one scenario and print its figures; True if every goal was met."""
    repo = new_repo(base / name.replace(" ", "-"))
    print(f"\n== {name}: {procs} writer(s) x {per_proc:,} runs through tracked_run ==",
          flush=True)
    env = dict(os.environ)
    env.pop("OTEL_RUNS_COMMIT_INTERVAL", None)
    poller = BranchPoller(repo)
    writers = []
    for i in range(procs):
        ids_path = base / f"{repo.name}-ids-{i}.txt"
        proc = subprocess.Popen([sys.executable, __file__, "_writer", str(repo), str(per_proc),
                                 str(ids_path), str(seconds)], stdout=subprocess.PIPE,
                                text=True, env=env)
        writers.append((proc, ids_path))
    events: list[dict[str, dict[str, Any]]] = []
    ok = True
    for proc, _ in writers:
        out, _ = proc.communicate(timeout=2 * seconds + 300)
        events.append({e["e"]: e for e in map(json.loads, out.splitlines())})
        if proc.returncode != 0 or "flushed" not in events[-1]:
            print(f"  writer {proc.pid} failed (exit {proc.returncode})")
            ok = False
    poller.stop()
    if not ok:
        return False
    produced = [r for _, ids_path in writers for r in ids_path.read_text().split()]
    runs = len(produced)
    t0 = min(e["start"]["t"] for e in events)
    t_recorded = max(e["recorded"]["t"] for e in events)
    t_flushed = max(e["flushed"]["t"] for e in events)
    flushed = all(e["flushed"]["ok"] for e in events)
    t = time.perf_counter()
    found = check_git(repo, produced)
    check_s = time.perf_counter() - t

    durable = runs / (t_recorded - t0)
    committed = runs / (t_flushed - t0)
    quarter = [poller.time_at(runs * k / 4) for k in (1, 3)]
    first = runs / 4 / (quarter[0] - t0) if quarter[0] else None
    last = runs / 4 / (t_flushed - quarter[1]) if quarter[1] and t_flushed > quarter[1] else None
    rss = [(e["flushed"]["kb"], e["mark"]["kb"]) for e in events if "mark" in e]
    end_kb, mark_kb = max(rss, key=lambda p: p[0] / p[1]) if rss else (0, 0)
    mark = min(RSS_MARK, max(1, per_proc // 2))

    results = []

    def line(label: str, figure: str, goal: str, good: bool | None) -> None:
        verdict = "" if good is None else ("PASS" if good else "FAIL")
        results.append(good is not False)
        print(f"  {label:<44} {figure:>30}  ({goal})  {verdict}")

    print(f"  recorded {runs:,} runs in {t_recorded - t0:.1f} s; flush() returned "
          f"{flushed} after {t_flushed - t0:.1f} s; {found.get('commits', 0)} commits; "
          f"git check {check_s:.1f} s")
    problems = {k: v for k, v in found.items()
                if k not in ("lost", "commits", "fsck") and v}
    line("runs lost (not on the branch tip)", f"{found['lost']:,} of {runs:,}", "goal 0",
         found["lost"] == 0 and flushed)
    line("tags / duplicates / layout problems", ", ".join(f"{k} {v}" for k, v in
                                                         problems.items()) or "none",
         "goal none", not problems)
    line("git fsck --strict --no-dangling", "clean" if found["fsck"] == "clean" else "ERRORS",
         "goal clean", found["fsck"] == "clean")
    if found["fsck"] != "clean":
        print(f"    {found['fsck']}")
    line("durable rate (runs journaled / s)", f"{durable:,.0f} runs/s", "reference", None)
    line("sustained committed rate (until flush)", f"{committed:,.0f} runs/s", "reference", None)
    line("committed / durable rate", f"{committed / durable:.2f}", "reference", None)
    if first and last:
        line("committed rate, last / first quarter",
             f"{last:,.0f} / {first:,.0f} = {last / first:.2f}", "reference", None)
    else:
        line("committed rate, last / first quarter", "not measured", "reference", None)
    if rss:
        line(f"writer RSS at end / after {mark:,} runs",
             f"{end_kb / 1024:.0f} / {mark_kb / 1024:.0f} MB = {end_kb / mark_kb:.2f}",
             "goal <= 1.5", end_kb / mark_kb <= 1.5)
    return all(results)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_writer":
        root, runs, ids_path, seconds = sys.argv[2:6]
        writer_main(root, int(runs), ids_path, float(seconds))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000, help="runs in the one-process case")
    parser.add_argument("--procs", type=int, default=4, help="writers at once in the second case")
    parser.add_argument("--per-proc", type=int, default=50_000, help="runs per writer there")
    parser.add_argument("--seconds", type=float, default=900.0,
                        help="bound on each writer's recording loop (and on its flush)")
    parser.add_argument("--keep", action="store_true", help="keep the temp repositories")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="otel-runs-soak-"))
    all_ok = True
    try:
        if args.runs > 0:
            all_ok &= scenario(base, "one process", 1, args.runs, args.seconds)
        if args.procs > 0 and args.per_proc > 0:
            all_ok &= scenario(base, f"{args.procs} processes", args.procs, args.per_proc,
                               args.seconds)
    finally:
        if args.keep:
            print(f"\nrepositories kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print("\nall goals met" if all_ok else "\nsome goals FAILED (see above)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
