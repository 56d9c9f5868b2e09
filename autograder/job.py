"""Grade: one checked submission, autograded by nbgrader in a scratch course of its own.

:func:`grade_job` never raises: whatever the submission does, it returns a :class:`JobResult`
with a status and a reason. The scratch course (a copy of the template's gradebook and source,
plus this one submission) keeps parallel jobs apart; the merge stage copies what is kept into
the instructor's course gradebook.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import release as rel
from .checker import student_names
from .execute import ExecJob, GradedExecute, source_cells
from .sandbox import SandboxSpec, prepare_job_dirs

log = logging.getLogger("autograder")


@dataclass
class Job:
    """One submission to grade."""

    student: str
    exercise: str
    notebook: str
    """The checked notebook (JSON text)."""
    template: str
    """The template course (gradebook.db, source/, release/) built from solutions/."""
    work_root: str
    """Where this job's scratch folder goes (private to the instructor)."""
    sandbox: SandboxSpec
    cell_timeout: float = 30.0
    notebook_timeout: float = 180.0
    answered_written: bool = False
    max_score: float = 0.0


@dataclass
class JobResult:
    status: str
    score: float | None
    reason: str
    auto_score: float | None = None
    auto_max: float | None = None
    max_score: float | None = None
    tests: list = field(default_factory=list)
    """One report per test cell: grade_id, points, max_points, results (checks), errors."""
    grades: dict = field(default_factory=dict)
    """nbgrader grade id -> auto score (None: awaits a person), for the merge into the gradebook."""
    comments: dict = field(default_factory=dict)
    """nbgrader grade id -> nbgrader's auto comment ("No response." for an untouched answer)."""
    autograded: str = ""
    """The graded notebook (JSON text, instructor only: it holds the hidden tests)."""
    seconds: float = 0.0
    events: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def grade_job(job: Job) -> JobResult:
    """Autograde one submission; never raises (a grader fault is an ``error`` row that says so)."""
    t0 = time.time()
    try:
        res = _grade(job)
    except Exception as e:  # noqa: BLE001 - one bad submission must not stop the batch
        log.exception("internal error grading %s/%s", job.student, job.exercise)
        res = JobResult(status="error", score=None, max_score=job.max_score,
                        reason=f"grader error: {type(e).__name__}: {str(e)[:200]}")
    res.seconds = round(time.time() - t0, 2)
    return res


def _execute_class(exec_job: ExecJob):
    from traitlets import Any as TAny

    return type("JobExecute", (GradedExecute,), {"job": TAny(exec_job)})


def _grade(job: Job) -> JobResult:
    import warnings

    warnings.filterwarnings("ignore", module="nbgrader")
    warnings.filterwarnings("ignore", message=".*not in session.*")
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.api import Gradebook
    from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, IgnorePattern, LimitOutput, SaveAutoGrades

    student, aid, tpl = job.student, job.exercise, Path(job.template)
    scratch = Path(tempfile.mkdtemp(prefix="job-", dir=job.work_root))
    scratch.chmod(0o700)
    try:
        course = scratch / "course"
        sub_dir = course / "submitted" / student / aid
        sub_dir.mkdir(parents=True)
        shutil.copy2(tpl / "gradebook.db", course / "gradebook.db")
        shutil.copytree(tpl / "source" / aid, course / "source" / aid)
        (sub_dir / f"{aid}.ipynb").write_text(job.notebook)
        source_nb = json.loads((tpl / "source" / aid / f"{aid}.ipynb").read_text())
        cells = source_cells(source_nb)
        names = student_names([c.source for c in cells.values() if c.cell_type == "code" and c.solution])
        spec = prepare_job_dirs(copy.deepcopy(job.sandbox), scratch / "sbx")
        ej = ExecJob(sandbox=spec, source=cells, names=names, cell_timeout=job.cell_timeout,
                     notebook_timeout=job.notebook_timeout, checker_log=str(scratch / "checker.log"))
        cfg = rel.load_config(course)
        cfg.Autograde.autograde_preprocessors = [_execute_class(ej), IgnorePattern, ClearMetadataPreprocessor,
                                                 LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
        cfg.Execute.timeout = int(job.cell_timeout)
        cfg.Execute.interrupt_on_timeout = True
        cfg.Execute.raise_on_iopub_timeout = True
        api = rel.make_api(cfg)
        out = api.autograde(aid, student, force=True, create=True)
        graded_path = course / "autograded" / student / aid / f"{aid}.ipynb"
        if not out.get("success"):
            last = [ln for ln in (out.get("error") or out.get("log") or "").strip().splitlines() if ln.strip()]
            return JobResult(status="error", score=None, max_score=job.max_score, events=ej.events,
                             reason=f"nbgrader could not grade it: {(last[-1] if last else 'unknown error')[:200]}")
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "preflab") as gb:
            nbsub = gb.find_submission_notebook(aid, aid, student)
            grades = {g.name: dict(auto=g.auto_score, max=g.max_score, kind=g.cell.cell_type) for g in nbsub.grades}
            comments = {c.name: c.auto_comment for c in nbsub.comments}
        return _result(job, ej, grades, comments, graded_path.read_text() if graded_path.exists() else "")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _result(job: Job, ej: ExecJob, grades: dict, comments: dict, graded_text: str) -> JobResult:
    graded = json.loads(graded_text) if graded_text else {"cells": []}
    auto = {k: g for k, g in grades.items() if g["kind"] == "code"}
    written = {k: g for k, g in grades.items() if g["kind"] != "code"}
    auto_score = float(sum(g["auto"] or 0 for g in auto.values()))
    auto_max = float(sum(g["max"] for g in auto.values()))
    written_max = float(sum(g["max"] for g in written.values()))
    tests = []
    for gid, g in auto.items():
        rep = ej.results.get(gid, {})
        tests.append(dict(grade_id=gid, points=g["auto"], max_points=g["max"], results=rep.get("results", []),
                          errors=rep.get("errors", []), warnings=rep.get("warnings", []),
                          grader_error=bool(rep.get("grader_error"))))
    raised = _raised(graded, ej)
    events = ej.events
    reasons = []
    dead = next((e for e in events if e["kind"] == "dead"), None)
    timeouts = [e for e in events if e["kind"] == "timeout"]
    if any(t["grader_error"] for t in tests):
        status = "error"
        reasons.append("the grader failed on a test cell (see grade.log); no score was lost to it on a rerun")
    elif dead:
        status = "timeout" if "ran past" in dead["detail"] or "time limit" in dead["detail"] else "error"
        reasons.append(f"{dead['detail']}; later cells did not run, the score counts the tests that passed")
    elif timeouts:
        status = "timeout"
        reasons.append(f"cell '{timeouts[0]['cell']}' {timeouts[0]['detail']}; "
                       "the score counts the tests that still ran")
    elif raised:
        status = "error"
        r = raised[0]
        reasons.append(f"{r['cell']} raised {r['ename']}" + (f" ({r['evalue'][:80]})" if r["evalue"] else "")
                       + "; the score counts the tests that passed anyway")
    elif written_max and job.answered_written:
        status = "needs_manual"
    else:
        status = "ok"
    reasons.append(f"autograded {auto_score:g}/{auto_max:g}")
    if written_max:
        reasons.append(f"written answer ({written_max:g} points) awaits manual grading" if job.answered_written
                       else f"written answer left blank (0/{written_max:g})")
    return JobResult(status=status, score=auto_score, auto_score=auto_score, auto_max=auto_max,
                     max_score=auto_max + written_max, reason="; ".join(reasons), tests=tests,
                     grades={k: g["auto"] for k, g in grades.items()}, comments=comments,
                     autograded=graded_text, events=events)


def _raised(graded: dict, ej: ExecJob) -> list[dict]:
    """Errors the student's own cells raised (not the test cells, not 'not implemented yet')."""
    out = []
    for idx, c in enumerate(graded.get("cells", [])):
        if c.get("cell_type") != "code":
            continue
        gid = (c.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
        if gid in ej.results:
            continue
        for o in c.get("outputs", []):
            if o.get("output_type") == "error" and o.get("ename") not in ("NotImplementedError", "CellTimeoutError",
                                                                           "DeadKernelError"):
                ev = str(o.get("evalue", "")).splitlines()
                out.append(dict(cell=gid or f"cell {idx}", ename=o.get("ename", "Error"), evalue=ev[0][:200] if ev else ""))
                break
    return out
