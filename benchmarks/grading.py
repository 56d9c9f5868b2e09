"""Benchmark 4: grading throughput, ``make grade`` against a plain loop of ``nbgrader autograde``.

A batch of generated submissions (one folder per student, as an LMS download gives them):

* correct: copies of ``solutions/exNN`` (full marks),
* unattempted / wrong: copies of the released ``exercises/exNN`` (stubs that raise),
* bad ones: an endless loop in an answer cell, and a notebook cut short (broken JSON).

(``--quick`` keeps only the broken notebook: it checks the plumbing, not the speed.)

The same batch is graded three ways, each timed from the command's start to its exit:

1. ``python -m autograder.grade SUBS --out OUT --workers 1 --fresh``
2. the same with ``--workers 2``
3. the plain loop an instructor would script: a scratch nbgrader course (``nbgrader_config.py``
   with the same per-cell timeout, ``source/`` = solutions/, ``nbgrader generate_assignment``
   run once before the timer), then one ``nbgrader autograde <exercise> --student <id> --force``
   call per submission, in a shell-like loop.

Both sides get the same per-cell timeout (``--timeout``, 10 s by default), so the endless loop
costs each the same wait. The plain loop has no sandbox, no watchdog and no feedback files;
``make grade`` does all of that and still is measured against it. Seconds per submission =
wall time / number of submissions (bad ones included). The CPU seconds of the child processes
(``getrusage(RUSAGE_CHILDREN)``, kernels included) are recorded beside each wall time.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, load_average, row

LOOP = "while True:\n    pass\n"


def _nb(folder: str, aid: str) -> dict:
    return json.loads((REPO / folder / aid / f"{aid}.ipynb").read_text())


def _with_endless_loop(nb: dict) -> dict:
    """The released notebook with its first answer cell replaced by an endless loop."""
    nb = copy.deepcopy(nb)
    for c in nb["cells"]:
        meta = c.get("metadata", {}).get("nbgrader", {})
        if c["cell_type"] == "code" and meta.get("solution"):
            c["source"] = LOOP
            return nb
    raise ValueError("no answer cell to put the loop in")


def make_submissions(dest: Path, n_exercises: int = 3) -> list[tuple[str, str, str]]:
    """Write the batch under ``dest/<student>/<exercise>.ipynb``; return (student, exercise, kind)."""
    from autograder.release import exercise_ids

    ids = exercise_ids()[:n_exercises]
    subs = []

    def write(student, aid, kind, content):
        p = dest / student / f"{aid}.ipynb"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content if isinstance(content, str) else json.dumps(content, indent=1))
        subs.append((student, aid, kind))

    for aid in ids:
        write("alice", aid, "correct", _nb("solutions", aid))
    for aid in ids[:2]:
        write("bob", aid, "unattempted", _nb("exercises", aid))
    write("carol", ids[0], "endless loop", _with_endless_loop(_nb("exercises", ids[0])))
    write("dave", ids[0], "broken JSON", json.dumps(_nb("solutions", ids[0]))[:-300])
    return subs


def _children_cpu() -> float:
    """CPU seconds (user + system) of finished child processes and their waited-for descendants:
    a load-independent companion to the wall time on a shared machine."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _env() -> dict:
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def time_make_grade(subs: Path, out: Path, workers: int, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "autograder.grade", str(subs), "--out", str(out), "--workers", str(workers),
           "--timeout", str(timeout), "--fresh"]
    load = load_average()
    c0, t0 = _children_cpu(), time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env())
    seconds, cpu = time.perf_counter() - t0, _children_cpu() - c0
    statuses = {}
    if (out / "grades.csv").exists():
        import csv

        with open(out / "grades.csv", newline="") as fh:
            for rec in csv.DictReader(fh):
                statuses[f"{rec['student_id']}/{rec['exercise']}"] = rec["status"]
    return {"seconds": seconds, "cpu_s": cpu, "returncode": r.returncode, "load_average": load, "statuses": statuses,
            "stderr_tail": r.stderr[-800:] if r.returncode else ""}


def _scratch_course(root: Path, ids: list[str], timeout: int) -> None:
    (root / "source").mkdir(parents=True)
    for aid in ids:
        (root / "source" / aid).mkdir()
        shutil.copy2(REPO / "solutions" / aid / f"{aid}.ipynb", root / "source" / aid / f"{aid}.ipynb")
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        "c.CourseDirectory.course_id = 'bench'\n"
        "c.ClearSolutions.code_stub = {'python': '# YOUR CODE HERE\\nraise NotImplementedError()'}\n"
        "c.ClearSolutions.text_stub = 'YOUR ANSWER HERE'\n"
        f"c.Execute.timeout = {timeout}\n"
        "c.Execute.interrupt_on_timeout = True\n"
        f"c.Exchange.root = {str(root / 'exchange')!r}\n")
    (root / "exchange").mkdir()


def time_plain_loop(subs_dir: Path, subs: list[tuple[str, str, str]], work: Path, timeout: int) -> dict:
    """One ``nbgrader autograde`` call per submission in a scratch nbgrader course."""
    ids = sorted({aid for _, aid, _ in subs})
    root = work / "course"
    _scratch_course(root, ids, timeout)
    env = _env()
    nbgrader = [sys.executable, "-m", "nbgrader"]
    for aid in ids:  # setup, before the timer
        r = subprocess.run(nbgrader + ["generate_assignment", aid, "--force"], cwd=root, capture_output=True,
                           text=True, env=env)
        if r.returncode:
            return {"error": f"nbgrader generate_assignment {aid} failed: {r.stderr[-400:]}"}
    for student, aid, _ in subs:
        dst = root / "submitted" / student / aid
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy2(subs_dir / student / f"{aid}.ipynb", dst / f"{aid}.ipynb")
    load = load_average()
    per, codes = [], []
    c0, t0 = _children_cpu(), time.perf_counter()
    for student, aid, _ in subs:
        t1 = time.perf_counter()
        r = subprocess.run(nbgrader + ["autograde", aid, "--student", student, "--force"], cwd=root,
                           capture_output=True, text=True, env=env)
        per.append(time.perf_counter() - t1)
        codes.append(r.returncode)
    return {"seconds": time.perf_counter() - t0, "cpu_s": _children_cpu() - c0, "per_submission_s": per, "returncodes": codes, "load_average": load}


def run(quick: bool = False, timeout: int = 10, n_exercises: int | None = None) -> dict:
    n_exercises = n_exercises or (1 if quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as tmp:
        tmp = Path(tmp)
        subs_dir = tmp / "subs"
        subs = make_submissions(subs_dir, n_exercises)
        if quick:  # one broken notebook: both commands run end to end without starting a kernel
            keep = [s for s in subs if s[2] == "broken JSON"]
            for student, aid, kind in subs:
                if (student, aid, kind) not in keep:
                    (subs_dir / student / f"{aid}.ipynb").unlink()
            subs = keep
        n = len(subs)
        res = {"submissions": [{"student": s, "exercise": a, "kind": k} for s, a, k in subs],
               "per_cell_timeout_s": timeout}
        res["make_grade_1_worker"] = time_make_grade(subs_dir, tmp / "out1", 1, timeout)
        if not quick:
            res["make_grade_2_workers"] = time_make_grade(subs_dir, tmp / "out2", 2, timeout)
        res["nbgrader_loop"] = time_plain_loop(subs_dir, subs, tmp / "loop", timeout)
    loop_s = res["nbgrader_loop"].get("seconds")
    rows = []
    for key, label in (("make_grade_1_worker", "make grade, 1 worker"), ("make_grade_2_workers", "make grade, 2 workers")):
        if key not in res:
            continue
        s = res[key]["seconds"]
        res[key]["s_per_submission"] = s / n
        speed = loop_s / s if loop_s else None
        res[key]["speedup_vs_loop"] = speed
        rows.append(row("grading", f"{label}: s/submission ({n} subs)", f"{s / n:.1f}"
                        + (f" ({speed:.2f}x loop)" if speed else ""), ">= 2x loop",
                        None if speed is None else speed >= 2.0))
    if loop_s:
        res["nbgrader_loop"]["s_per_submission"] = loop_s / n
        rows.append(row("grading", "nbgrader autograde loop: s/submission", f"{loop_s / n:.1f}"))
    else:
        rows.append(row("grading", "nbgrader autograde loop", res["nbgrader_loop"].get("error", "failed")[:60]))
    res["rows"] = rows
    return res
