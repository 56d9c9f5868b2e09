"""Grading time per submission against an earlier grader: ``make grade`` of this checkout against
``make grade`` of a git revision (issue 13: the sandboxed grader within 1.2x of the grader it
replaced, per submission).

    python -m benchmarks.grading_vs_revision d1203a8^ [--workers 1] [--students 4] [--rounds 3]

The revision is checked out into a scratch worktree. Each grader grades ITS OWN solutions of the
exercises named by ``--exercises`` (default: ex02, ex05 and ex06, numpy exercises whose work
changed least between the two; the torch parts added later would make the comparison one of
different work), each solution copied to ``--students`` students. Both run with this
environment's Python (``PYTHONPATH`` set to their own tree, so each imports its own ``preflab``
and ``autograder``), ``--fresh`` each time, after one untimed warm-up each (which builds each
grader's cached template). Interleaved rounds, the order reversed each round; reported: seconds
per submission for each (median over rounds), the per-round ratio, and the per-submission job
times each grader logs (the time inside grading, without start-up).

Run it alone on an idle machine: it measures wall-clock time.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, load_average, machine, machine_line

DEFAULT_IDS = ("ex02_reward_models_as_proxies", "ex05_noisy_but_valuable_preferences", "ex06_the_preference_pair")
JOB_LINE = re.compile(r"^\S+\s+(ex\d\d\S*)\s+(\S+)\s+\S+\s+([0-9.]+)s$", re.M)


def make_subs(tree: Path, ids, students: int, dest: Path) -> int:
    """Copy ``tree``'s solution of each exercise to ``students`` students; return the count."""
    shutil.rmtree(dest, ignore_errors=True)
    for k in range(students):
        for aid in ids:
            (dest / f"student{k}").mkdir(parents=True, exist_ok=True)
            shutil.copy(tree / "solutions" / aid / f"{aid}.ipynb", dest / f"student{k}" / f"{aid}.ipynb")
    return students * len(ids)


def grade(tree: Path, subs: Path, out: Path, workers: int) -> dict:
    """One timed ``python -m autograder.grade`` of ``tree`` on ``subs``."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "autograder.grade", str(subs), "--out", str(out), "--workers",
                        str(workers), "--fresh"], cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    jobs = JOB_LINE.findall(r.stdout + r.stderr)
    return {"seconds": seconds, "returncode": r.returncode, "jobs": [float(j[2]) for j in jobs],
            "statuses": sorted({j[1] for j in jobs}), "load": load_average()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("revision", help="the git revision of the earlier grader (e.g. d1203a8^)")
    ap.add_argument("--exercises", default=",".join(DEFAULT_IDS))
    ap.add_argument("--students", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    ids = [x for x in args.exercises.split(",") if x]
    scratch = Path(tempfile.mkdtemp(prefix="bench-grade-rev-"))
    old = scratch / "old"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.revision], cwd=REPO, check=True,
                   capture_output=True)
    try:
        trees = {"earlier": old, "this": REPO}
        n = {k: make_subs(t, ids, args.students, scratch / f"subs-{k}") for k, t in trees.items()}
        print(machine_line(machine()))
        for k, t in trees.items():  # untimed warm-up: each builds its cached template
            w = grade(t, scratch / f"subs-{k}", scratch / f"out-{k}", args.workers)
            print(f"warm-up {k}: {w['seconds']:.1f} s, exit {w['returncode']}, statuses {w['statuses']}")
            if w["returncode"] != 0 or len(w["jobs"]) != n[k]:
                print(f"the {k} grader did not grade every submission", file=sys.stderr)
                return 1
        runs = {k: [] for k in trees}
        order = list(trees)
        for r in range(args.rounds):
            order = order[::-1]
            for k in order:
                res = grade(trees[k], scratch / f"subs-{k}", scratch / f"out-{k}", args.workers)
                runs[k].append(res)
                print(f"round {r + 1} {k}: {res['seconds']:.1f} s (jobs {sum(res['jobs']):.1f} s), load {res['load']}")
        for k in trees:
            secs = [x["seconds"] for x in runs[k]]
            jobs = [j for x in runs[k] for j in x["jobs"]]
            print(f"{k:8s}: {statistics.median(secs) / n[k]:.2f} s per submission (median of {args.rounds} runs of "
                  f"{n[k]}), job time mean {statistics.mean(jobs):.2f} s, median {statistics.median(jobs):.2f} s")
        ratios = [b["seconds"] / a["seconds"] for a, b in zip(runs["earlier"], runs["this"])]
        print(f"this / earlier, per round: {', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f}"
              f" (issue 13: <= 1.2)")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
