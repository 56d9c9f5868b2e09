"""Grade a folder of submissions with nbgrader (``make grade SUBMISSIONS=dir OUT=dir``).

    python -m autograder.grade SUBMISSIONS --out OUT [--workers N] [--timeout S] [--roster CSV]
    python -m autograder.grade --export --out OUT      # grades.csv again, with manual grades merged

The stages, each a module of its own:

1. **collect** (:mod:`autograder.collect`): find the files and whose they are;
2. **classify**: which exercise each file is, and the newest gradable file per student and exercise;
3. **check** (:mod:`autograder.validate`): is it a gradable copy of the release? (else ``invalid``);
4. **grade** (:mod:`autograder.job`): nbgrader autograde, student code in the sandbox
   (:mod:`autograder.sandbox`), tests on the grader's side (:mod:`autograder.execute`,
   :mod:`autograder.checker`), in parallel workers;
5. **merge** (:mod:`autograder.gradebook`): keep the best grade ever given, into the course
   gradebook that formgrader opens (manual grades are never overwritten);
6. **write** (:mod:`autograder.report`): ``OUT/grades.csv``, ``OUT/feedback/<student>/<exercise>.html``.

OUT (private to the instructor) also holds ``course/`` (the nbgrader course: gradebook, kept
submissions, graded notebooks with the hidden tests), ``state.json`` (every grade kept and the
history of runs) and ``grade.log``.

Statuses: ``ok``, ``needs_manual`` (a written answer awaits the instructor), ``timeout``,
``error`` (a cell raised, or the kernel died: the score counts what passed), ``invalid`` (not
gradable as submitted), ``missing`` (no file). A failure is never a plain 0: its status and
reason say what happened.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import release as rel
from .collect import Found, collect, exercise_from_name, normalize_id, read_bounded, read_roster
from .gradebook import Course, CourseMismatch
from .job import Job, JobResult, grade_job
from .report import STATUSES, Row, fmt, keep_best, load_state, save_state, write_csv, write_feedback
from .sandbox import INSTALL_HELP, Limits, SandboxSpec, probe, readonly_paths
from .validate import _cells_by_id, _exercise_of_cells, check_submission

log = logging.getLogger("autograder")
__all__ = ["main", "STATUSES"]


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


@dataclass
class Submission:
    """The file chosen for one student and exercise."""

    student: str
    exercise: str
    raw: bytes
    file: str
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the template course
def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    d = base / "preflab" / "grade-templates"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def _solutions_hash(ids: list[str]) -> str:
    h = hashlib.sha256()
    for aid in ids:
        h.update(aid.encode())
        h.update((rel.SOLUTIONS / aid / f"{aid}.ipynb").read_bytes())
    h.update(rel.CONFIG_FILE.read_bytes())
    return h.hexdigest()[:16]


def _content_hash(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != "ready":
            h.update(str(p.relative_to(d)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def template(ids: list[str]) -> tuple[Path, str]:
    """(course folder with the gradebook, source and release built from solutions/, its hash).
    Cached by content in the user's cache; a copy whose files changed since is rebuilt."""
    work, key = _cache_dir(), _solutions_hash(ids)
    dest = work / f"template-{key}"
    if (dest / "ready").exists() and (dest / "ready").read_text().strip() == _content_hash(dest):
        return dest, key
    if dest.exists():
        log.warning("the cached grading template %s changed since it was built: rebuilding it", dest)
        shutil.rmtree(dest, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix="template-", dir=work))
    rel.generate(tmp, ids=ids)
    shutil.rmtree(tmp / "exchange", ignore_errors=True)
    (tmp / "ready").write_text(_content_hash(tmp))
    try:
        tmp.rename(dest)
    except OSError:  # another run built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, key


def _max_points(released: dict) -> float:
    return float(sum(c["metadata"]["nbgrader"].get("points", 0) for cs in _cells_by_id(released).values()
                     for c in cs if c["metadata"]["nbgrader"].get("grade")))


# --------------------------------------------------------------------------- stage 2: classify
def classify(found, ids: list[str], roster: dict[str, str] | None) -> tuple[list[Submission], list[dict]]:
    """The newest gradable file per (student, exercise), and a row for every file that is not."""
    rows: list[dict] = []
    groups: dict[tuple[str, str], list[tuple[Found, bytes | None, str]]] = {}
    casefold: dict[str, set[str]] = {}
    every_id = rel.exercise_ids(extras=True)  # the optional extras too, to say why one is not graded
    for f in found.unknown:
        rows.append(dict(student="(unknown)", exercise=f"unrecognized:{f.name}", file=f.origin,
                         reason=f"top-level file '{f.name}' names no student: use <student>/<notebook>.ipynb "
                                "or <student>_..._<notebook>.ipynb"))
    for f in found.files:
        sid, bad_id = normalize_id(f.student)
        if bad_id:
            rows.append(dict(student=sid or "(unknown)", exercise=f"unrecognized:{f.name}", file=f.origin,
                             reason=f"{bad_id}: {f.student!r}"))
            continue
        if roster is not None:
            if sid not in roster:
                rows.append(dict(student=sid, exercise=f"unrecognized:{f.name}", file=f.origin,
                                 reason=f"'{sid}' is not on the roster"))
                continue
            sid = roster[sid]
        casefold.setdefault(sid.casefold(), set()).add(sid)
        aid, note, raw = exercise_from_name(f.name, ids), "", None
        if not f.problem and aid is None and f.name.lower().endswith(".ipynb"):
            try:
                raw = read_bounded(f.path)
                other = _exercise_of_cells(json.loads(raw.decode("utf-8-sig")))
            except Exception:  # noqa: BLE001
                other = None
            cand = [i for i in ids if other and i.startswith(f"ex{other}_")]
            if cand:
                aid, note = cand[0], f"file named '{f.name}' was recognized as {cand[0]} by its cells"
        extra = exercise_from_name(f.name, every_id) if aid is None else None
        if extra is not None and extra not in ids:
            rows.append(dict(student=sid, exercise=f"unrecognized:{f.name}", file=f.origin,
                             reason=f"'{f.name}' is the optional exercise {extra}: it is graded only when the "
                                    "instructor asks for it (make grade EXTRAS=1, or --extras)"))
            continue
        if aid is None:
            rows.append(dict(student=sid, exercise=f"unrecognized:{f.name}", file=f.origin,
                             reason=f.problem and f"'{f.name}' {f.problem}" or
                             f"file name '{f.name}' matches no exercise (expected e.g. {ids[0]}.ipynb) and its cells match none either"))
            continue
        groups.setdefault((sid, aid), []).append((f, raw, note))
    subs: list[Submission] = []
    for (sid, aid), items in sorted(groups.items()):
        good = [it for it in items if not it[0].problem]
        skipped = [it[0] for it in items if it[0].problem]
        notes = [f"skipped '{s.origin}': it {s.problem}" for s in skipped][:3]
        if len(casefold.get(sid.casefold(), ())) > 1:
            others = sorted(casefold[sid.casefold()] - {sid})
            notes.append(f"another student id differs from '{sid}' only in case ({', '.join(others)}): check it is "
                         "not the same person")
        if not good:
            rows.append(dict(student=sid, exercise=aid, file=skipped[0].origin, status="invalid",
                             reason="; ".join([f"'{skipped[0].name}' {skipped[0].problem}"] + notes[1:])))
            continue
        good.sort(key=lambda it: (it[0].mtime, it[0].origin))
        f, raw, note = good[-1]
        if note:
            notes.insert(0, note)
        if len(good) > 1:
            notes.append(f"{len(good)} files for this exercise; graded the newest, '{f.name}'")
        if f.name != f"{aid}.ipynb" and not note:
            notes.append(f"file '{f.name}' taken as {aid}.ipynb")
        try:
            raw = raw if raw is not None else read_bounded(f.path)
        except OSError as e:
            rows.append(dict(student=sid, exercise=aid, file=f.origin, reason=f"could not read '{f.name}': {e}"))
            continue
        subs.append(Submission(student=sid, exercise=aid, raw=raw, file=f.origin, notes=notes))
    return subs, rows


# --------------------------------------------------------------------------- stage 4: grade, in parallel
def grade_all(jobs: list[Job], workers: int, done) -> None:
    """Run every job, ``workers`` at a time; ``done(job, result)`` for each. A crashed worker
    costs no grade: the jobs it held are graded again one by one."""
    if workers <= 1 or len(jobs) <= 1:
        for j in jobs:
            done(j, grade_job(j))
        return
    # fork (where available) shares the already imported nbgrader with the workers
    import nbconvert.preprocessors  # noqa: F401
    import nbgrader.apps  # noqa: F401
    import nbgrader.preprocessors  # noqa: F401
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pending = list(jobs)
    try:
        with ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx) as pool:
            futs = {pool.submit(grade_job, j): j for j in pending}
            for fut in as_completed(futs):
                done(futs[fut], fut.result())
                pending.remove(futs[fut])
    except Exception as e:  # noqa: BLE001
        log.warning("a grading worker crashed (%s); grading %d submissions again one by one", e, len(pending))
        for j in pending:
            done(j, grade_job(j))


# --------------------------------------------------------------------------- stage 6: rows
def _row(student: str, aid: str, entry: dict | None, course: Course, max_points: float) -> Row:
    kept = (entry or {}).get("kept")
    last = (entry or {}).get("last")
    if kept is None:
        if last:
            return Row(student_id=student, exercise=aid, status=last["status"], reason=last.get("reason", ""),
                       max_score=last.get("max_score") or max_points, file=last.get("file", ""),
                       graded_at=last.get("graded_at", ""), tests=last.get("tests", []))
        return Row(student_id=student, exercise=aid, status="missing", reason="no file for this exercise",
                   max_score=max_points, graded_at=_now())
    row = Row(student_id=student, exercise=aid, status=kept["status"], reason=kept.get("reason", ""),
              score=kept.get("score"), max_score=kept.get("max_score") or max_points,
              auto_score=kept.get("auto_score"), auto_max_score=kept.get("auto_max"),
              file=kept.get("file", ""), graded_at=kept.get("graded_at", ""), tests=kept.get("tests", []))
    man = course.manual(student, aid)
    if man.total is not None:
        row.score = man.total
        row.manual_score = man.written
        if man.written is not None and row.status == "needs_manual":
            row.status = "ok"
            row.reason += f"; written answer graded by hand: {man.written:g} points"
        elif man.pending and row.status == "ok" and kept.get("answered_written"):
            row.status = "needs_manual"
        if man.overridden:
            row.reason += f"; scores changed by hand in formgrader: {', '.join(man.overridden)}"
    if last and last.get("sha256") != kept.get("sha256") or last and last.get("graded_at") != kept.get("graded_at"):
        this = last["status"] + (f" {fmt(last.get('score'))}/{fmt(last.get('max_score'))}" if last.get("score") is not None else "")
        row.reason = (f"kept the earlier grade from {kept.get('graded_at')} (best so far); this run: {this}"
                      + (f": {last.get('reason')}" if last.get("reason") else "") + f" | {row.reason}")[:600]
        row.note = f"This run: {last['status']}. {last.get('reason', '')}"
    return row


# --------------------------------------------------------------------------- main
def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m autograder.grade", description=__doc__.splitlines()[0])
    ap.add_argument("submissions", type=Path, nargs="?")
    ap.add_argument("--out", type=Path, default=Path("build/grades"))
    ap.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4))
    ap.add_argument("--timeout", type=int, default=30, help="seconds per student cell and per test call (default 30); the course's "
                    "locked setup cells get at least 120")
    ap.add_argument("--notebook-timeout", type=int, default=180, help="seconds per submission (default 180)")
    ap.add_argument("--exercises", default="", help="comma-separated exercise ids or 'all' (default: those seen)")
    ap.add_argument("--extras", action="store_true", help="grade the optional extra exercises (extra_*) too")
    ap.add_argument("--memory-mb", type=int, default=Limits.rss_mb,
                    help=f"memory one submission may hold, all its processes together (default {Limits.rss_mb} MiB)")
    ap.add_argument("--roster", type=Path, help="CSV with a student_id column (and optional aliases): only these ids")
    ap.add_argument("--unsafe", action="store_true",
                    help="grade WITHOUT a sandbox where bubblewrap cannot run (graded code then has your rights)")
    ap.add_argument("--export", action="store_true", help="write grades.csv and feedback from OUT's gradebook only")
    ap.add_argument("--fresh", action="store_true", help="forget grades from earlier runs in OUT (manual ones too)")
    args = ap.parse_args(argv)
    if args.submissions is None and not args.export:
        ap.error("give the SUBMISSIONS folder (or --export)")
    return args


@dataclass
class Run:
    """What every stage of one run reads: the exercises, the release, OUT's gradebook and state."""

    args: argparse.Namespace
    ids: list[str]
    template: Path
    released: dict[str, dict]
    max_points: dict[str, float]
    course: Course
    state: dict
    roster: dict[str, str] | None
    tmp: Path
    rejected: list[dict] = field(default_factory=list)
    """Rows for files that never reached nbgrader (collect, classify and check say why)."""
    seen: set[str] = field(default_factory=set)


def _open_out(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    os.umask(0o077)
    handler = logging.FileHandler(out / "grade.log")
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[logging.StreamHandler(sys.stderr), handler],
                        force=True)
    lock = open(out / ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def _sandbox(args) -> SandboxSpec | None:
    ok, why = probe()
    if ok:
        spec = SandboxSpec(enabled=True, readonly=readonly_paths(), limits=Limits(rss_mb=args.memory_mb))
        log.info("sandbox: %s", spec.describe())
        return spec
    if not args.unsafe:
        log.error("cannot grade safely: %s. Graded notebooks run student code; without a sandbox it could read the "
                  "solutions and other students' work, and change grades. To fix it, %s. To grade anyway, with "
                  "the graded code running under your own account, pass --unsafe (make grade UNSAFE=1).", why, INSTALL_HELP)
        return None
    spec = SandboxSpec(enabled=False, readonly=[], limits=Limits(rss_mb=args.memory_mb))
    log.warning("WARNING: %s. Kernels run WITHOUT the sandbox (--unsafe): %s", why, spec.describe())
    return spec


def _setup(args, tmp: Path) -> Run | None:
    ids = rel.exercise_ids(extras=args.extras)
    tpl, tpl_hash = template(ids)
    released = {aid: json.loads((tpl / "release" / aid / f"{aid}.ipynb").read_text()) for aid in ids}
    try:
        course = Course.open(args.out / "course", tpl, tpl_hash, fresh=args.fresh)
    except CourseMismatch as e:
        log.error("%s", e)
        return None
    return Run(args=args, ids=ids, template=tpl, released=released,
               max_points={aid: _max_points(nb) for aid, nb in released.items()}, course=course,
               state={} if args.fresh else load_state(args.out / "state.json"),
               roster=read_roster(args.roster) if args.roster else None, tmp=tmp)


def check(run: Run, subs: list[Submission], spec: SandboxSpec) -> tuple[list[Job], dict[tuple[str, str], Submission]]:
    """Stage 3: a job for every submission that is a gradable copy of its release; a row for the rest."""
    import nbformat

    jobs, by_key = [], {}
    for s in subs:
        chk = check_submission(s.raw, s.exercise, run.released[s.exercise])
        run.seen.add(s.exercise)
        if not chk["ok"]:
            run.rejected.append(dict(student=s.student, exercise=s.exercise, file=s.file, status="invalid",
                                     sha256=hashlib.sha256(s.raw).hexdigest(), reason="; ".join([chk["reason"]] + s.notes)))
            continue
        s.notes += chk["notes"]
        by_key[(s.student, s.exercise)] = s
        jobs.append(Job(student=s.student, exercise=s.exercise, notebook=nbformat.writes(chk["notebook"]),
                        template=str(run.template), work_root=str(run.tmp), sandbox=spec,
                        cell_timeout=run.args.timeout, notebook_timeout=run.args.notebook_timeout,
                        answered_written=chk["answered_written"], max_score=run.max_points[s.exercise]))
    return jobs, by_key


def merger(run: Run, subs: dict[tuple[str, str], Submission]):
    """Stage 5, for each result as it comes: keep the best grade, and store a kept one in the gradebook."""
    def done(job: Job, res: JobResult) -> None:
        s = subs[(job.student, job.exercise)]
        new = res.to_dict()
        autograded, grades, comments = new.pop("autograded"), new.pop("grades"), new.pop("comments")
        new.update(file=s.file, graded_at=_now(), sha256=hashlib.sha256(s.raw).hexdigest(),
                   answered_written=job.answered_written)
        if s.notes:
            new["reason"] = "; ".join([new.get("reason") or ""] + s.notes).strip("; ")
        entry, kept_new = keep_best(run.state.get((job.student, job.exercise)), new)
        entry["last"] = new
        run.state[(job.student, job.exercise)] = entry
        if kept_new and autograded and run.course.record(job.student, job.exercise, grades, comments, job.notebook,
                                                         autograded):
            new["reason"] += "; the written answer changed since it was graded by hand: review it in formgrader"
        log.info("%-20s %-40s %-12s %6s  %.1fs", job.student, job.exercise, res.status, fmt(res.score), res.seconds)
    return done


def record_rejected(run: Run) -> None:
    """Stage 5 for files that never reached nbgrader: a row, and never the loss of a kept grade."""
    for r in run.rejected:
        if r["exercise"] in run.ids:
            new = dict(status=r.get("status", "invalid"), score=None, max_score=run.max_points[r["exercise"]],
                       reason=r["reason"], file=r.get("file", ""), graded_at=_now(), sha256=r.get("sha256"))
            entry, _ = keep_best(run.state.get((r["student"], r["exercise"])), new)
            entry["last"] = new
            run.state[(r["student"], r["exercise"])] = entry
    save_state(run.args.out / "state.json", run.state)


def write(run: Run) -> list[Row]:
    """Stage 6: grades.csv and one feedback page per row."""
    args = run.args
    if args.exercises == "all":
        scope = list(run.ids)
    elif args.exercises:
        want = args.exercises.split(",")
        scope = [i for i in run.ids if i in want or i[:4] in want]
    else:
        scope = sorted(run.seen | {a for (_, a) in run.state if a in run.ids})
    students = sorted({s for (s, _) in run.state} | set((run.roster or {}).values()) |
                      {r["student"] for r in run.rejected if r["student"] != "(unknown)"})
    rows = [_row(s, a, run.state.get((s, a)), run.course, run.max_points[a]) for s in students for a in scope]
    rows += [Row(student_id=r["student"], exercise=r["exercise"], status="invalid", reason=r["reason"],
                 file=r.get("file", ""), graded_at=_now()) for r in run.rejected if r["exercise"] not in run.ids]
    for r in rows:
        write_feedback(args.out / "feedback" / r.student_id / f"{r.exercise.replace('/', '_')[:150]}.html", r)
    write_csv(args.out / "grades.csv", rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    import warnings

    # nbgrader's gradebook warns about its own SQLAlchemy sessions on every submission
    warnings.filterwarnings("ignore", message=".*not in session.*")
    args = _parse(argv)
    lock = _open_out(args.out)
    t_start = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="pfg-"))  # short: the kernels' socket paths live below it
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.submissions is not None and not args.submissions.is_dir():
            log.error("%s is not a folder", args.submissions)
            return 2
        run = _setup(args, tmp)
        if run is None:
            return 2
        if not args.export:
            spec = _sandbox(args)
            if spec is None:
                return 2
            log.info("scratch: %s (removed at the end)", tmp)
            (tmp / "unzipped").mkdir()
            found = collect(args.submissions, tmp / "unzipped", run.roster)              # 1. collect
            for w in found.warnings:
                log.warning(w)
            subs, run.rejected = classify(found, run.ids, run.roster)                     # 2. classify
            jobs, by_key = check(run, subs, spec)                                         # 3. check
            log.info("grading %d submissions (%d rejected before grading) with %d worker(s)",
                     len(jobs), len(run.rejected), max(1, min(args.workers, len(jobs) or 1)))
            grade_all(jobs, args.workers, merger(run, by_key))                            # 4. grade, 5. merge
            record_rejected(run)
        rows = write(run)                                                                 # 6. write
        counts = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
        log.info("wrote %s: %d rows (%s) in %.1f s", args.out / "grades.csv", len(rows),
                 ", ".join(f"{k} {v}" for k, v in counts.items() if v), time.time() - t_start)
        return 0
    finally:
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(tmp, ignore_errors=True)
        fcntl.flock(lock, fcntl.LOCK_UN)


if __name__ == "__main__":
    sys.exit(main())
