"""Grade a folder of submissions with nbgrader (``make grade SUBMISSIONS=dir OUT=dir``).

    python -m autograder.grade SUBMISSIONS --out OUT [--workers N] [--timeout S]

Accepted forms inside SUBMISSIONS (they can be mixed):

* ``<student_id>/<notebook>.ipynb``: one folder per student, as nbgrader's ``submitted/`` or
  an LMS "download all, one folder per student" gives it (deeper folders are searched too,
  e.g. ``<student_id>/<exercise>/<notebook>.ipynb``).
* ``<student_id>_<anything>_<notebook>.ipynb`` at the top level: the flat files Canvas and
  Moodle produce. The student id is everything before the first underscore; the rest must
  contain the exercise's ``exNN``.
* ``*.zip`` at the top level: an archive of either form (a single wrapping folder is fine).

Notebook names are matched after removing Colab's ``Copy of `` prefix and download suffixes
like `` (1)``; a name that still names no exercise is recognized by its nbgrader cells, and
is otherwise reported as ``invalid``.

Outputs: ``OUT/grades.csv`` (one row per student and exercise), ``OUT/feedback/<student>/
<exercise>.html`` (hidden-test results without their source or tracebacks), ``OUT/state.json``
(every grade given so far: a rerun never loses one), ``OUT/autograded/`` (graded notebooks,
for the instructor only: they contain the hidden tests) and ``OUT/grade.log``.

Statuses: ``ok`` (fully graded), ``needs_manual`` (autograded; a written answer awaits the
instructor), ``timeout`` (a cell ran past the limit), ``error`` (a cell raised, or the kernel
died), ``invalid`` (the file could not be graded as submitted), ``missing`` (no file). Only
``ok``, ``needs_manual`` and, when the notebook could still be scored, ``timeout`` and
``error`` carry a score; a failure is never written as a plain 0.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import fcntl
import hashlib
import html
import json
import logging
import multiprocessing as mp
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from . import release as rel

log = logging.getLogger("autograder")

FIELDS = ["student_id", "exercise", "score", "max_score", "status", "reason",
          "auto_score", "auto_max_score", "file", "graded_at"]
STATUSES = ("ok", "needs_manual", "timeout", "error", "invalid", "missing")
MAX_NOTEBOOK_BYTES = 20 * 1024 * 1024
MAX_ZIP_BYTES = 500 * 1024 * 1024
WRITTEN_STUB = "YOUR ANSWER HERE"
EXNUM_RE = re.compile(r"ex(\d\d)(?!\d)", re.IGNORECASE)
FLAT_RE = re.compile(r"^(?P<student>[^_/]+)_(?P<rest>.*ex\d\d.*)$", re.IGNORECASE)
SAFE_ID_RE = re.compile(r"[^A-Za-z0-9._@+-]+")


# --------------------------------------------------------------------------- collection


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def safe_id(s: str) -> str:
    s = SAFE_ID_RE.sub("_", s.strip()).strip("._")
    return s or "unknown"


def _extract_zip(zpath: Path, dest: Path) -> list[str]:
    """Extract safely (no absolute paths, no '..', no links, size-capped); return warnings."""
    warnings = []
    total = 0
    with zipfile.ZipFile(zpath) as z:
        for info in z.infolist():
            name = info.filename
            parts = Path(name).parts
            if name.startswith(("/", "\\")) or ".." in parts or (info.external_attr >> 16) & 0o170000 == 0o120000:
                warnings.append(f"{zpath.name}: skipped unsafe member {name!r}")
                continue
            if info.is_dir() or parts[:1] == ("__MACOSX",):
                continue
            total += info.file_size
            if total > MAX_ZIP_BYTES:
                warnings.append(f"{zpath.name}: stopped at {MAX_ZIP_BYTES >> 20} MiB")
                break
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mtime = time.mktime(info.date_time + (0, 0, -1))
            os.utime(target, (mtime, mtime))
    return warnings


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name == "__MACOSX" or ".ipynb_checkpoints" in p.parts


def collect(root: Path, tmp: Path) -> tuple[list[dict], list[str]]:
    """Find submitted files: dicts with student, path, name (file name), origin."""
    found, warnings = [], []

    def walk(base: Path, origin: str, depth: int = 0) -> None:
        entries = sorted(p for p in base.iterdir() if not _is_hidden(p))
        dirs = [p for p in entries if p.is_dir()]
        files = [p for p in entries if p.is_file()]
        # A single wrapping folder (e.g. an archive of "submissions/") is looked through.
        if depth < 2 and len(dirs) == 1 and not files:
            inner = [p for p in dirs[0].iterdir() if not _is_hidden(p)]
            if any(p.is_dir() for p in inner) or any(p.is_file() and FLAT_RE.match(p.name) for p in inner):
                walk(dirs[0], origin, depth + 1)
                return
        for d in dirs:
            for f in sorted(d.rglob("*")):
                if f.is_file() and not _is_hidden(f.relative_to(d)) and not any(_is_hidden(Path(x)) for x in f.relative_to(d).parts):
                    found.append(dict(student=d.name, path=f, name=f.name, origin=f"{origin}{d.name}/{f.relative_to(d)}"))
        for f in files:
            if f.suffix.lower() == ".zip":
                dest = tmp / f"zip{len(list(tmp.iterdir()))}"
                dest.mkdir()
                try:
                    warnings.extend(_extract_zip(f, dest))
                except zipfile.BadZipFile as e:
                    warnings.append(f"{f.name}: not a readable zip ({e})")
                    found.append(dict(student="unknown", path=f, name=f.name, origin=f"{origin}{f.name}", broken_zip=True))
                    continue
                walk(dest, f"{origin}{f.name}:", depth + 1)
            else:
                m = FLAT_RE.match(f.name)
                if m:
                    found.append(dict(student=m["student"], path=f, name=m["rest"], origin=f"{origin}{f.name}"))
                else:
                    found.append(dict(student="unknown", path=f, name=f.name, origin=f"{origin}{f.name}",
                                      no_student=True))

    walk(root, "")
    for f in found:
        f["student"] = safe_id(f["student"])
    return found, warnings


def exercise_from_name(name: str, ids: list[str]) -> str | None:
    base = name[:-6] if name.lower().endswith(".ipynb") else name
    base = re.sub(r"^(copy of\s+)+", "", base.strip(), flags=re.IGNORECASE)
    base = re.sub(r"\s*[\(\[]\d+[\)\]]$", "", base).strip()
    if base in ids:
        return base
    nums = {m.group(1) for m in EXNUM_RE.finditer(base)}
    cands = [i for i in ids if i[2:4] in nums]
    return cands[0] if len(cands) == 1 else None


# --------------------------------------------------------------------------- checking


def _cells_by_id(nb: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in nb.get("cells", []):
        meta = c.get("metadata", {}) if isinstance(c, dict) else {}
        g = meta.get("nbgrader") if isinstance(meta, dict) else None
        if isinstance(g, dict) and g.get("grade_id"):
            out.setdefault(str(g["grade_id"]), []).append(c)
    return out


def _src(c: dict) -> str:
    s = c.get("source", "")
    return "".join(s) if isinstance(s, list) else str(s)


def _exercise_of_cells(nb: dict) -> str | None:
    nums = [m.group(1) for gid in _cells_by_id(nb) for m in [re.match(r"ex(\d\d)_", gid)] if m]
    if not nums:
        return None
    best = max(set(nums), key=nums.count)
    return best


def check_submission(raw: bytes, aid: str, released: dict) -> dict:
    """Check a submission against its released notebook before nbgrader sees it.

    Returns dict(ok, reason, notes, notebook (repaired JSON dict), answered_written).
    nbgrader accepts several of these silently (stripped metadata, deleted test cells) or
    crashes on them (duplicated cells, broken JSON): each becomes a clear ``invalid``.
    """
    import nbformat

    bad = lambda reason: dict(ok=False, reason=reason, notes=[], notebook=None, answered_written=False)  # noqa: E731
    if len(raw) > MAX_NOTEBOOK_BYTES:
        return bad(f"file is {len(raw) >> 20} MiB; the limit is {MAX_NOTEBOOK_BYTES >> 20} MiB (clear outputs and resubmit)")
    try:
        text = raw.decode("utf-8-sig")
        data = json.loads(text)
    except UnicodeDecodeError:
        return bad("not a notebook: the file is not UTF-8 text")
    except json.JSONDecodeError as e:
        return bad(f"not a notebook: broken JSON ({e.msg} at line {e.lineno})")
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return bad("not a notebook: no list of cells")
    try:
        nb = nbformat.reads(text, as_version=4)
        for c in nb.cells:  # fill fields some editors drop
            c.setdefault("metadata", {})
            if c.cell_type == "code":
                c.setdefault("outputs", [])
                c.setdefault("execution_count", None)
        nbformat.validate(nb)
    except Exception as e:  # noqa: BLE001
        return bad(f"not a valid notebook ({type(e).__name__}: {str(e).splitlines()[0][:120]})")

    rel_cells = _cells_by_id(released)
    sub_cells = _cells_by_id(nb)
    notes = []
    if not sub_cells:
        other = None
        return bad("nbgrader metadata missing: no graded cells found (was the notebook rebuilt, "
                   "or its metadata stripped?); download the released notebook and copy your answers into it")
    if not set(sub_cells) & set(rel_cells):
        other = _exercise_of_cells(nb)
        return bad(f"the file holds the cells of exercise ex{other}, not {aid}" if other else
                   f"none of {aid}'s graded cells are in the file")
    dups = sorted(g for g, cs in sub_cells.items() if len(cs) > 1)
    if dups:
        return bad(f"cell '{dups[0]}' appears {len(sub_cells[dups[0]])} times (a copied cell keeps its "
                   "nbgrader id); delete the extra copy and resubmit")
    foreign = sorted(set(sub_cells) - set(rel_cells))
    if foreign:
        return bad(f"cell '{foreign[0]}' does not belong to {aid}")
    for gid, (rc,) in rel_cells.items():
        rmeta = rc["metadata"]["nbgrader"]
        if gid not in sub_cells:
            if rmeta.get("grade") and not rmeta.get("solution"):
                return bad(f"test cell '{gid}' was deleted")
            if rmeta.get("grade"):
                return bad(f"written answer cell '{gid}' was deleted")
            if rmeta.get("locked"):
                return bad(f"locked cell '{gid}' was deleted")
            notes.append(f"answer cell '{gid}' missing")
            continue
        (sc,) = sub_cells[gid]
        if sc.get("cell_type") != rc.get("cell_type"):
            return bad(f"cell '{gid}' was changed from {rc.get('cell_type')} to {sc.get('cell_type')}")
        smeta = sc["metadata"]["nbgrader"]
        if rmeta.get("locked") and _src(sc) != _src(rc):
            notes.append(f"edited locked cell '{gid}' restored from the release")
            sc["source"] = _src(rc)
        keys = ("grade", "solution", "locked", "points", "grade_id", "task")
        if any(smeta.get(k) != rmeta.get(k) for k in keys if k in rmeta):
            notes.append(f"nbgrader metadata of '{gid}' restored")
        sc["metadata"]["nbgrader"] = dict(rmeta)
    answered = False
    for gid, (rc,) in rel_cells.items():
        rmeta = rc["metadata"]["nbgrader"]
        if rmeta.get("grade") and rmeta.get("solution") and gid in sub_cells:
            if _src(sub_cells[gid][0]).strip() not in ("", WRITTEN_STUB):
                answered = True
    return dict(ok=True, reason="", notes=notes, notebook=nbformat.from_dict(nb), answered_written=answered)


# --------------------------------------------------------------------------- one job (worker)


def _execute_class():
    from nbgrader.preprocessors import Execute

    from .sandbox import SandboxKernelManager

    class SandboxExecute(Execute):
        """nbgrader's Execute with the sandboxed kernel manager and timeout bookkeeping."""

        def __init__(self, *args, **kwargs):
            kwargs["kernel_manager_class"] = SandboxKernelManager
            super().__init__(*args, **kwargs)

        async def _async_handle_timeout(self, timeout, cell=None):
            gid = None
            if cell is not None:
                gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
            _JOB["timeouts"].append(gid or (cell.get("id") if cell is not None else "?"))
            return await super()._async_handle_timeout(timeout, cell)

    return SandboxExecute


_JOB: dict = {"timeouts": []}


def _parse_autograded(nb: dict) -> dict:
    tests, raised = [], []
    for idx, c in enumerate(nb.get("cells", [])):
        if c.get("cell_type") != "code":
            continue
        meta = c.get("metadata", {}).get("nbgrader", {}) or {}
        errors = [o for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if meta.get("grade") and not meta.get("solution"):
            lines = []
            for o in c.get("outputs", []):
                if o.get("output_type") == "stream":
                    lines += [ln for ln in _src({"source": o.get("text", "")}).splitlines() if ln.startswith(("[PASS]", "[FAIL]"))]
            err = None
            if errors:
                e = errors[-1]
                err = f"{e.get('ename', 'Error')}: {str(e.get('evalue', '')).splitlines()[0][:300] if e.get('evalue') else ''}".strip()
            tests.append(dict(grade_id=meta.get("grade_id"), checks=lines[:200], error=err))
        elif errors:
            e = errors[0]
            raised.append(dict(cell=meta.get("grade_id") or f"cell {idx}", ename=e.get("ename", "Error"),
                               evalue=str(e.get("evalue", "")).splitlines()[0][:200] if e.get("evalue") else ""))
    return dict(tests=tests, raised=raised)


def grade_job(job: dict) -> dict:
    """Autograde one checked submission in a scratch course; never raises."""
    t0 = time.time()
    try:
        res = _grade_job(job)
    except Exception as e:  # noqa: BLE001 - one bad submission must not stop the batch
        log.exception("internal error grading %s/%s", job["student"], job["aid"])
        res = dict(status="error", score=None, reason=f"grader error: {type(e).__name__}: {str(e)[:200]}",
                   tests=[], auto_score=None, auto_max=None, max_score=job.get("max_score"))
    res["seconds"] = round(time.time() - t0, 2)
    return res


def _grade_job(job: dict) -> dict:
    import warnings

    warnings.filterwarnings("ignore", module="nbgrader")
    warnings.filterwarnings("ignore", message=".*not in session.*")
    from nbgrader.api import Gradebook
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, IgnorePattern,
                                        LimitOutput, SaveAutoGrades)
    from nbconvert.preprocessors import ClearMetadataPreprocessor

    from . import sandbox

    student, aid = job["student"], job["aid"]
    scratch = Path(tempfile.mkdtemp(prefix="job-", dir=job["work_root"]))
    os.chmod(scratch, 0o700)
    sbx = Path(tempfile.mkdtemp(prefix="k-", dir=job["sbx_root"]))
    try:
        course = scratch / "course"
        (course / "submitted" / student / aid).mkdir(parents=True)
        shutil.copy2(Path(job["template"]) / "gradebook.db", course / "gradebook.db")
        (course / "submitted" / student / aid / f"{aid}.ipynb").write_text(job["notebook"])
        isolate = job["isolate"]
        uid = random.randrange(1_950_000_000, 2_000_000_000)
        if isolate:
            os.chown(sbx, uid, uid)
        os.chmod(sbx, 0o700)
        sandbox.CURRENT.clear()
        sandbox.CURRENT.update(dir=str(sbx), isolate=isolate, uid=uid, gid=uid, hide=job["hide"],
                               limits=job.get("limits", {}))
        sandbox.STARTED.clear()
        _JOB["timeouts"] = []
        fired = threading.Event()

        def watchdog():
            fired.set()
            for km in list(sandbox.STARTED):
                km.kill_now()

        cfg = rel.load_config(course)
        cfg.Autograde.autograde_preprocessors = [_execute_class(), IgnorePattern, ClearMetadataPreprocessor,
                                                 LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
        cfg.Execute.timeout = job["timeout"]
        cfg.Execute.interrupt_on_timeout = True
        cfg.Execute.raise_on_iopub_timeout = True
        api = rel.make_api(cfg)
        timer = threading.Timer(job["job_timeout"], watchdog)
        timer.daemon = True
        timer.start()
        try:
            out = api.autograde(aid, student, force=True, create=True)
        finally:
            timer.cancel()
            for km in list(sandbox.STARTED):
                km.kill_now()
        timeouts = list(_JOB["timeouts"])
        graded_path = course / "autograded" / student / aid / f"{aid}.ipynb"

        if not out.get("success"):
            err = out.get("error") or ""
            logtxt = out.get("log") or ""
            if fired.is_set() or timeouts:
                what = f"cell '{timeouts[0]}'" if timeouts else "the notebook"
                reason = (f"{what} ran past {job['timeout']} s and ignored the interrupt (an endless loop?); "
                          "no score recorded" if timeouts and not fired.is_set() else
                          f"{what} ran past the {job['job_timeout']} s limit for the whole notebook; no score recorded")
                return dict(status="timeout", score=None, reason=reason, tests=[], auto_score=None, auto_max=None)
            if "DeadKernelError" in err or "Kernel died" in err or "DeadKernelError" in logtxt:
                return dict(status="error", score=None, tests=[], auto_score=None, auto_max=None,
                            reason="the kernel died while running the notebook (os._exit, a crash, or the memory limit); no score recorded")
            last = [ln for ln in (err or logtxt).strip().splitlines() if ln.strip()]
            return dict(status="error", score=None, tests=[], auto_score=None, auto_max=None,
                        reason=f"nbgrader could not grade it: {(last[-1] if last else 'unknown error')[:200]}")

        with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "preflab") as gb:
            nbsub = gb.find_submission_notebook(aid, aid, student)
            grades = [dict(name=g.name, auto=g.auto_score, manual=g.manual_score, max=g.max_score,
                           kind=g.cell.cell_type) for g in nbsub.grades]
        graded = json.loads(graded_path.read_text()) if graded_path.exists() else {"cells": []}
        parsed = _parse_autograded(graded)
        auto = [g for g in grades if g["kind"] == "code"]
        written = [g for g in grades if g["kind"] != "code"]
        auto_score = float(sum((g["auto"] or 0) for g in auto))
        auto_max = float(sum(g["max"] for g in auto))
        written_max = float(sum(g["max"] for g in written))
        by_id = {g["name"]: g for g in auto}
        for t in parsed["tests"]:
            g = by_id.get(t["grade_id"], {})
            t["points"] = g.get("auto")
            t["max_points"] = g.get("max")
        raised = [r for r in parsed["raised"] if r["ename"] not in ("NotImplementedError", "CellTimeoutError")]
        reasons = []
        if timeouts:
            status = "timeout"
            reasons.append(f"cell '{timeouts[0]}' ran past {job['timeout']} s and was interrupted; "
                           "the score counts the tests that still ran")
        elif raised:
            status = "error"
            r = raised[0]
            reasons.append(f"{r['cell']} raised {r['ename']}" + (f" ({r['evalue'][:80]})" if r["evalue"] else "")
                           + "; the score counts the tests that passed anyway")
        elif written_max and job["answered_written"]:
            status = "needs_manual"
        else:
            status = "ok"
        reasons.append(f"autograded {auto_score:g}/{auto_max:g}")
        if written_max:
            reasons.append(f"written answer ({written_max:g} points) awaits manual grading" if job["answered_written"]
                           else f"written answer left blank (0/{written_max:g})")
        if job.get("out_autograded"):
            dst = Path(job["out_autograded"])
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(graded_path, dst)
        return dict(status=status, score=auto_score, auto_score=auto_score, auto_max=auto_max,
                    max_score=auto_max + written_max, reason="; ".join(reasons), tests=parsed["tests"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(sbx, ignore_errors=True)


# --------------------------------------------------------------------------- template, state, output


def _solutions_hash(ids: list[str]) -> str:
    h = hashlib.sha256()
    for aid in ids:
        h.update(aid.encode())
        h.update((rel.SOLUTIONS / aid / f"{aid}.ipynb").read_bytes())
    h.update(rel.CONFIG_FILE.read_bytes())
    return h.hexdigest()[:16]


def template(ids: list[str]) -> Path:
    """A course folder with the gradebook and release built from solutions/ (cached by content)."""
    work = rel.REPO / "autograder" / "work"
    dest = work / f"template-{_solutions_hash(ids)}"
    if (dest / "ready").exists():
        return dest
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o700)
    tmp = Path(tempfile.mkdtemp(prefix="template-", dir=work))
    rel.generate(tmp, ids=ids)
    (tmp / "ready").write_text(_now())
    try:
        tmp.rename(dest)
    except OSError:  # another run built it first
        shutil.rmtree(tmp, ignore_errors=True)
    for old in work.glob("template-*"):
        if old != dest and (old / "ready").exists() and time.time() - old.stat().st_mtime > 3600:
            shutil.rmtree(old, ignore_errors=True)
    return dest


def _max_points(released: dict) -> float:
    return float(sum(c["metadata"]["nbgrader"].get("points", 0) for cs in _cells_by_id(released).values()
                     for c in cs if c["metadata"]["nbgrader"].get("grade")))


def merge(prev: dict | None, new: dict) -> tuple[dict, dict]:
    """(state entry, row result): keep the best scored result ever given for this student and exercise."""
    kept = (prev or {}).get("kept")
    history = ((prev or {}).get("history") or [])[-19:] + [
        {k: new.get(k) for k in ("graded_at", "status", "score", "sha256", "file")}]
    has_score = new.get("score") is not None
    if has_score and (kept is None or new["score"] >= kept["score"]):
        entry = dict(kept=new, history=history)
        row = dict(new)
        if kept is not None and new["score"] == kept["score"] and kept.get("sha256") != new.get("sha256"):
            pass
        return entry, row
    if kept is not None:
        row = dict(kept)
        this = f"{new['status']}" + (f" {new['score']:g}/{new.get('max_score') or 0:g}" if has_score else "")
        row["reason"] = (f"kept the earlier grade from {kept['graded_at']} (best so far); this run: {this}"
                         + (f": {new['reason']}" if new.get("reason") else ""))[:400]
        row["feedback_note"] = f"This run: {new['status']}. {new.get('reason', '')}"
        return dict(kept=kept, history=history), row
    return dict(kept=None, history=history), dict(new)


def _fmt(x) -> str:
    return "" if x is None else f"{x:g}"


def write_feedback(path: Path, row: dict) -> None:
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(row['exercise'])}: {e(row['student_id'])}</title>",
             "<style>body{font-family:sans-serif;max-width:50em;margin:2em auto}"
             ".pass{color:#17692e}.fail{color:#a4161a}td,th{padding:.2em .6em;text-align:left}</style>",
             f"<h1>{e(row['exercise'])}</h1><p>Student: <b>{e(row['student_id'])}</b></p>",
             f"<p>Score: <b>{e(_fmt(row.get('score')) or '-')}</b> of {e(_fmt(row.get('max_score')) or '-')}"
             f" &middot; status: <b>{e(row['status'])}</b></p><p>{e(row.get('reason') or '')}</p>"]
    if row.get("feedback_note"):
        parts.append(f"<p><i>{e(row['feedback_note'])}</i></p>")
    tests = row.get("tests") or []
    if tests:
        parts.append("<h2>Tests</h2><p>Hidden tests run other inputs and edge cases; their names and "
                     "results are listed, their code is not.</p>")
        for t in tests:
            pts = f"{_fmt(t.get('points')) or 0} / {_fmt(t.get('max_points'))}"
            ok = t.get("error") is None
            parts.append(f"<h3 class='{'pass' if ok else 'fail'}'>{e(str(t.get('grade_id')))}: {e(pts)} points</h3><ul>")
            for ln in t.get("checks", []):
                cls = "pass" if ln.startswith("[PASS]") else "fail"
                parts.append(f"<li class='{cls}'>{e(ln)}</li>")
            if t.get("error") and not any(ln.startswith("[FAIL]") for ln in t.get("checks", [])):
                parts.append(f"<li class='fail'>{e(t['error'])}</li>")
            parts.append("</ul>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n")


# --------------------------------------------------------------------------- main


def _hide_paths(submissions: Path, out: Path, work_root: Path, sbx_root: Path) -> list[str]:
    cands = [rel.REPO / "solutions", rel.REPO / "autograder", rel.REPO / ".git", submissions, out, work_root,
             Path("/root"), Path.home()]
    hide = []
    for p in cands:
        p = p.resolve()
        if str(p) in ("/", "/tmp") or not p.exists() or str(p) in hide:
            continue
        if sbx_root.resolve().is_relative_to(p) or rel.REPO.resolve() == p or (rel.REPO / "preflab").resolve().is_relative_to(p) \
                or Path(sys.executable).resolve().is_relative_to(p):
            if p.stat().st_mode & 0o005:  # readable by others: say so
                log.warning("cannot hide %s from graded code: the kernel needs something inside it", p)
            continue
        hide.append(str(p))
    return hide


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autograder.grade", description=__doc__.splitlines()[0])
    ap.add_argument("submissions", type=Path)
    ap.add_argument("--out", type=Path, default=Path("build/grades"))
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    ap.add_argument("--timeout", type=int, default=30, help="seconds per cell (default 30)")
    ap.add_argument("--notebook-timeout", type=int, default=180, help="seconds per submission (default 180)")
    ap.add_argument("--exercises", default="", help="comma-separated exercise ids or 'all' (default: those seen)")
    ap.add_argument("--no-sandbox", action="store_true", help="run kernels without isolation (not recommended)")
    ap.add_argument("--fresh", action="store_true", help="forget grades from earlier runs in OUT")
    args = ap.parse_args(argv)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s",
                        handlers=[logging.StreamHandler(sys.stderr), logging.FileHandler(out / "grade.log")])
    lock = open(out / ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    t_start = time.time()
    if not args.submissions.is_dir():
        log.error("%s is not a folder", args.submissions)
        return 2
    ids = rel.exercise_ids()
    tpl = template(ids)
    released = {aid: json.loads((tpl / "release" / aid / f"{aid}.ipynb").read_text()) for aid in ids}
    max_points = {aid: _max_points(nb) for aid, nb in released.items()}

    from .sandbox import probe
    isolate, why = (False, "--no-sandbox given") if args.no_sandbox else probe()
    if not isolate:
        log.warning("WARNING: kernels run WITHOUT the sandbox (%s): graded code runs with the grader's "
                    "rights and network, and could read the solutions and the gradebook.", why)

    state_path = out / "state.json"
    state = {} if args.fresh or not state_path.exists() else json.loads(state_path.read_text())

    tmp = Path(tempfile.mkdtemp(prefix="preflab-grade-"))
    os.chmod(tmp, 0o700)
    sbx_root = Path(tempfile.mkdtemp(prefix="preflab-sbx-"))
    os.chmod(sbx_root, 0o711)
    try:
        (tmp / "unzipped").mkdir()
        (tmp / "work").mkdir()
        found, warnings = collect(args.submissions, tmp / "unzipped")
        for w in warnings:
            log.warning(w)
        hide = _hide_paths(args.submissions, out, tmp, sbx_root) + [str(tpl.parent)]
        results: dict[tuple[str, str], dict] = {}
        jobs = []
        by_key: dict[tuple[str, str], list[tuple[dict, str]]] = {}
        for f in found:
            raw = b"" if f.get("broken_zip") else f["path"].read_bytes()
            base = dict(student_id=f["student"], file=f["origin"], graded_at=_now(),
                        sha256=hashlib.sha256(raw).hexdigest(), tests=[])
            aid = None if f.get("broken_zip") else exercise_from_name(f["name"], ids)
            note = ""
            if f.get("broken_zip"):
                results[(f["student"], f"unrecognized:{f['name']}")] = dict(base, exercise=f"unrecognized:{f['name']}", status="invalid",
                                                                          score=None, max_score=None, reason="a .zip that cannot be opened")
                continue
            if aid is None and f["name"].lower().endswith(".ipynb"):
                try:
                    other = _exercise_of_cells(json.loads(raw.decode("utf-8-sig")))
                except Exception:  # noqa: BLE001
                    other = None
                cand = [i for i in ids if other and i.startswith(f"ex{other}_")]
                if cand:
                    aid = cand[0]
                    note = f"file named '{f['name']}' was recognized as {aid} by its cells"
            if f.get("no_student"):
                ex = aid or f"unrecognized:{f['name']}"
                results[("unknown", ex + ":" + f["name"])] = dict(base, exercise=ex, status="invalid", score=None, max_score=None,
                                                               reason=f"top-level file '{f['name']}' names no student: use <student>/<notebook>.ipynb or <student>_..._<notebook>.ipynb")
                continue
            if aid is None:
                ex = f"unrecognized:{f['name']}"
                results[(f["student"], ex)] = dict(base, exercise=ex, status="invalid", score=None, max_score=None,
                                                   reason=f"file name '{f['name']}' matches no exercise (expected e.g. {ids[0]}.ipynb) and its cells match none either")
                continue
            by_key.setdefault((f["student"], aid), []).append((dict(base, exercise=aid, raw=raw, note=note, mtime=f["path"].stat().st_mtime), f["name"]))

        for (student, aid), items in sorted(by_key.items()):
            items.sort(key=lambda it: it[0]["mtime"])
            sub, name = items[-1]
            notes = [sub.pop("note")] if sub.get("note") else []
            raw = sub.pop("raw")
            sub.pop("mtime")
            if len(items) > 1:
                notes.append(f"{len(items)} files for this exercise; graded the newest, '{name}'")
            if name != f"{aid}.ipynb" and not any("recognized" in n for n in notes):
                notes.append(f"file '{name}' taken as {aid}.ipynb")
            chk = check_submission(raw, aid, released[aid])
            if not chk["ok"]:
                results[(student, aid)] = dict(sub, status="invalid", score=None, max_score=max_points[aid],
                                               reason="; ".join([chk["reason"]] + notes))
                continue
            import nbformat
            jobs.append(dict(student=student, aid=aid, notebook=nbformat.writes(chk["notebook"]),
                             template=str(tpl), work_root=str(tmp / "work"), sbx_root=str(sbx_root), hide=hide,
                             isolate=isolate, timeout=args.timeout, job_timeout=args.notebook_timeout,
                             limits={"nproc": 512, "memory-mb": 8192, "fsize-mb": 200},
                             answered_written=chk["answered_written"], max_score=max_points[aid],
                             out_autograded=str(out / "autograded" / student / f"{aid}.ipynb"),
                             _sub=sub, _notes=notes + chk["notes"]))

        log.info("grading %d submissions (%d rejected before grading) with %d worker(s)",
                 len(jobs), len(results), max(1, min(args.workers, len(jobs) or 1)))

        def finish(job, res):
            sub = job["_sub"]
            r = dict(sub, **res)
            r.setdefault("max_score", job["max_score"])
            if r.get("max_score") is None:
                r["max_score"] = job["max_score"]
            if job["_notes"]:
                r["reason"] = "; ".join([r.get("reason") or ""] + job["_notes"]).strip("; ")
            results[(job["student"], job["aid"])] = r
            log.info("%-20s %-40s %-12s %6s  %.1fs", job["student"], job["aid"], r["status"],
                     _fmt(r.get("score")), res.get("seconds", 0))

        clean = lambda j: {k: v for k, v in j.items() if not k.startswith("_")}  # noqa: E731
        if args.workers <= 1 or len(jobs) <= 1:
            for j in jobs:
                finish(j, grade_job(clean(j)))
        else:
            # fork (where available) shares the already imported nbgrader with the workers;
            # spawn would import it again in each (seconds on a busy machine).
            import nbconvert.preprocessors  # noqa: F401
            import nbgrader.apps  # noqa: F401
            import nbgrader.preprocessors  # noqa: F401
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            pending = list(jobs)
            while pending:
                try:
                    with ProcessPoolExecutor(max_workers=min(args.workers, len(pending)),
                                             mp_context=ctx) as pool:
                        futs = {pool.submit(grade_job, clean(j)): j for j in pending}
                        for fut in as_completed(futs):
                            finish(futs[fut], fut.result())
                            pending.remove(futs[fut])
                except Exception as e:  # noqa: BLE001 - a crashed worker: grade the rest again
                    log.warning("a grading worker crashed (%s); regrading %d submissions one by one", e, len(pending))
                    for j in pending:
                        finish(j, grade_job(clean(j)))
                    pending = []

        # ---- merge with earlier runs, fill in missing, write everything
        students = sorted({s for s, _ in results} | {k.split("\t")[0] for k in state})
        if args.exercises == "all":
            scope = list(ids)
        elif args.exercises:
            scope = [i for i in ids if i in args.exercises.split(",") or i[:4] in args.exercises.split(",")]
        else:
            scope = sorted({a for _, a in results if a in ids} | {k.split("\t")[1] for k in state if k.split("\t")[1] in ids})
        rows = []
        for student in students:
            for aid in scope if student != "unknown" else []:
                key = f"{student}\t{aid}"
                new = results.get((student, aid)) or dict(student_id=student, exercise=aid, status="missing", score=None,
                                                           max_score=max_points[aid], reason="no file for this exercise",
                                                           file="", graded_at=_now(), tests=[])
                entry, row = merge(state.get(key), new)
                state[key] = entry
                rows.append(row)
            rows += [r for (s, a), r in sorted(results.items()) if s == student and a not in ids]
        for r in rows:
            ex = r["exercise"].replace("/", "_")
            write_feedback(out / "feedback" / r["student_id"] / f"{safe_id(ex)}.html", r)
        tmp_state = state_path.with_suffix(".tmp")
        tmp_state.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp_state.replace(state_path)
        with open(out / "grades.csv.tmp", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow(dict(r, score=_fmt(r.get("score")), max_score=_fmt(r.get("max_score")),
                                auto_score=_fmt(r.get("auto_score")), auto_max_score=_fmt(r.get("auto_max"))))
        (out / "grades.csv.tmp").replace(out / "grades.csv")
        counts = {s: sum(1 for r in rows if r["status"] == s) for s in STATUSES}
        secs = time.time() - t_start
        log.info("wrote %s: %d rows (%s) in %.1f s", out / "grades.csv", len(rows),
                 ", ".join(f"{k} {v}" for k, v in counts.items() if v), secs)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(sbx_root, ignore_errors=True)
        fcntl.flock(lock, fcntl.LOCK_UN)


if __name__ == "__main__":
    sys.exit(main())
