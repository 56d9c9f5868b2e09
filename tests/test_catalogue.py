"""The catalogue of plausible mistakes and correct variants keeps the exercises' tests honest.

Every variant in ``tests/catalogue/exNN.py`` is graded with the real grader (``python -m
autograder.grade``, sandboxed kernel, tests on the grader's side), all in one batch with two
workers. For each variant the test cells that depend on its answer cell are read from the
grader's report (``OUT/state.json``), and:

* every mistake loses points;
* no correct variant loses any;
* the visible checks alone catch at least three quarters of the mistakes. "Caught by the
  visible checks" means a visible check failed, or a visible statement raised, in a dependent
  test cell. The visible part of a test cell is exactly the released notebook's test cell (the
  part before ``### BEGIN HIDDEN TESTS``), so that is what the student's own kernel runs; the
  grader runs it first, before any hidden check, and records each check as visible or hidden.

Variants of one exercise whose answer cells feed disjoint sets of test cells share a notebook
(one variant per answer cell, mistakes and correct variants alike), which keeps the batch small; the test asserts that the test
cells outside those sets kept full marks, so no variant's effect is charged to another.
"""

from __future__ import annotations

import ast
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import os

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import catalogue  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODULES = catalogue.all_modules()
#: The visible checks must catch at least this share of the mistakes, over the whole catalogue
#: and in every exercise.
VISIBLE_SHARE = 0.75
REQUIRED_TAGS = ("float32", "stderr", "loops", "vectorized", "numpy", "torch")
#: PREFLAB_CATALOGUE=ex04,ex09 grades only those exercises' variants (while writing them).
ONLY = [x for x in os.environ.get("PREFLAB_CATALOGUE", "").split(",") if x]


def _nb(folder: str, aid: str) -> dict:
    return json.loads((REPO / folder / aid / f"{aid}.ipynb").read_text())


def _gid(cell: dict) -> str | None:
    return (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _cells(nb: dict, pred) -> dict[str, dict]:
    return {_gid(c): c for c in nb["cells"] if _gid(c) and pred(c.get("metadata", {}).get("nbgrader", {}), c)}


def answer_cells(aid: str) -> dict[str, str]:
    """grade id -> the solution's source, for every code answer cell."""
    return {g: _src(c) for g, c in _cells(_nb("solutions", aid), lambda m, c: m.get("solution") and c["cell_type"] == "code").items()}


def graded_cells(aid: str) -> list[str]:
    return list(_cells(_nb("solutions", aid), lambda m, c: m.get("grade") and not m.get("solution") and c["cell_type"] == "code"))


def entries() -> list[tuple[str, int, dict]]:
    return [(ex, k, e) for ex, mod in MODULES.items() for k, e in enumerate(mod.ENTRIES)]


# ---------------------------------------------------------------- the catalogue itself (fast)


def test_every_exercise_has_a_catalogue():
    ids = sorted(p.name for p in (REPO / "solutions").iterdir() if p.is_dir() and p.name.startswith("ex"))
    assert sorted(m.EXERCISE for m in MODULES.values()) == ids
    for ex, mod in MODULES.items():
        assert mod.EXERCISE == ex or mod.EXERCISE.startswith(ex + "_")


@pytest.mark.parametrize("ex", sorted(MODULES))
def test_catalogue_entries_are_well_formed(ex):
    mod = MODULES[ex]
    answers = answer_cells(mod.EXERCISE)
    tests = set(graded_cells(mod.EXERCISE))
    assert set(mod.DEPENDS) == set(answers), "DEPENDS names every code answer cell, and only those"
    for gid, deps in mod.DEPENDS.items():
        assert deps and set(deps) <= tests, (gid, deps)
    for e in mod.ENTRIES:
        assert set(e) <= {"cell", "kind", "name", "source", "tags", "solo"}, e.get("name")
        assert e["cell"] in answers, e["name"]
        assert e["kind"] in catalogue.KINDS, e["name"]
        ast.parse(e["source"])
        assert e["source"].strip() != answers[e["cell"]].strip(), f"{e['name']}: the solution itself"
    for gid in answers:
        kinds = {e["kind"] for e in mod.ENTRIES if e["cell"] == gid}
        assert "mistake" in kinds, f"{gid} has no catalogued mistake"
    assert any(e["kind"] == "correct" for e in mod.ENTRIES), "at least one correct variant"
    names = [(e["cell"], e["name"]) for e in mod.ENTRIES]
    assert len(names) == len(set(names)), "names are unique per cell"


def test_correct_variants_cover_the_kinds_that_must_pass():
    tags = {t for _, _, e in entries() if e["kind"] == "correct" for t in e.get("tags", ())}
    assert set(REQUIRED_TAGS) <= tags, set(REQUIRED_TAGS) - tags


# ---------------------------------------------------------------- grading every variant (slow)


def groups(ex: str) -> list[dict]:
    """Pack one exercise's variants into notebooks: at most one variant per answer cell, and only
    answer cells whose dependent test cells do not overlap (a variant marked ``solo`` alone)."""
    mod = MODULES[ex]
    out: list[dict] = []
    order = sorted(range(len(mod.ENTRIES)), key=lambda k: mod.ENTRIES[k]["kind"] != "mistake")
    for k in order:
        e = mod.ENTRIES[k]
        deps = set(mod.DEPENDS[e["cell"]])
        home = None
        if not e.get("solo"):
            home = next((g for g in out if not g["solo"] and e["cell"] not in g["cells"] and not (deps & g["deps"])), None)
        if home is None:
            home = dict(entries=[], cells=set(), deps=set(), solo=bool(e.get("solo")))
            out.append(home)
        home["entries"].append(k)
        home["cells"].add(e["cell"])
        home["deps"] |= deps
    for i, g in enumerate(out):
        g["student"] = f"{ex}-{i:02d}"
    return out


def notebook_for(ex: str, group: dict) -> dict:
    """The released notebook with every answer cell filled in with the solution, then the
    group's variants put in their cells."""
    mod = MODULES[ex]
    nb = copy.deepcopy(_nb("exercises", mod.EXERCISE))
    sol = answer_cells(mod.EXERCISE)
    replace = dict(sol)
    for k in group["entries"]:
        e = mod.ENTRIES[k]
        replace[e["cell"]] = e["source"].strip("\n")
    for c in nb["cells"]:
        if _gid(c) in replace:
            c["source"] = replace[_gid(c)]
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("catalogue")
    subs, out = base / "subs", base / "out"
    plan = {}
    for ex in (ONLY or MODULES):
        for g in groups(ex):
            aid = MODULES[ex].EXERCISE
            path = subs / g["student"] / f"{aid}.ipynb"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(notebook_for(ex, g), indent=1))
            plan[g["student"]] = (ex, g)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "autograder.grade", str(subs), "--out", str(out), "--workers", "2", "--extras"],
                       cwd=REPO, capture_output=True, text=True, timeout=1800)
    seconds = time.time() - t0
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    kept = {e["student"]: e["kept"] for e in state["entries"] if e.get("kept")}
    return dict(plan=plan, kept=kept, seconds=seconds, log=r.stderr)


def _verdicts(graded) -> list[dict]:
    rows = []
    for student, (ex, g) in graded["plan"].items():
        mod = MODULES[ex]
        res = graded["kept"].get(student)
        assert res is not None and res.get("status") not in ("error", "timeout", "invalid"), (student, res and res.get("reason"))
        tests = {t["grade_id"]: t for t in res["tests"]}
        assert set(tests) == set(graded_cells(mod.EXERCISE)), student
        for gid, t in tests.items():
            if not t["errors"]:
                declared = sum(r["points"] or 0.0 for r in t["results"])
                assert abs(declared - t["max_points"]) < 1e-4, f"{student}: {gid}'s checks carry {declared:g} points, the cell {t['max_points']:g}"
                assert all(r["points"] is not None for r in t["results"]), f"{student}: a check in {gid} has no points"
        outside = [gid for gid in tests if gid not in g["deps"]]
        for gid in outside:
            t = tests[gid]
            assert t["points"] >= t["max_points"] - 1e-6, (f"{student}: {gid} lost points although no variant in "
                                                            f"this notebook feeds it: {_failed(t)}")
        for k in g["entries"]:
            e = mod.ENTRIES[k]
            deps = [tests[gid] for gid in mod.DEPENDS[e["cell"]]]
            lost = sum(t["max_points"] - t["points"] for t in deps)
            failed_visible = [r["name"] for t in deps for r in t["results"] if not r["ok"] and not r["hidden"]]
            errors_visible = [m for t in deps for err in t["errors"] if not err.get("hidden")
                              for m in (err.get("checks") or [err.get("message", "")])]
            rows.append(dict(exercise=ex, cell=e["cell"], kind=e["kind"], name=e["name"], student=student,
                             lost=round(lost, 6), visible=bool(failed_visible or errors_visible),
                             failed=_failed_all(deps), seconds=res.get("seconds")))
    return rows


def _failed(t: dict) -> list[str]:
    return [r["name"] for r in t["results"] if not r["ok"]] + [e["message"][:120] for e in t["errors"]]


def _failed_all(ts: list[dict]) -> list[str]:
    return [n for t in ts for n in _failed(t)]


@pytest.mark.slow
def test_catalogue_grades_as_labelled(graded):
    rows = _verdicts(graded)
    report = REPO / "build" / "catalogue.json"
    report.parent.mkdir(exist_ok=True)
    summary = {}
    for ex in (ONLY or MODULES):
        mine = [r for r in rows if r["exercise"] == ex]
        mistakes = [r for r in mine if r["kind"] == "mistake"]
        summary[ex] = dict(mistakes=len(mistakes), caught=sum(r["lost"] > 0 for r in mistakes),
                           caught_visible=sum(r["visible"] for r in mistakes),
                           correct=sum(r["kind"] == "correct" for r in mine),
                           correct_full=sum(r["kind"] == "correct" and r["lost"] == 0 for r in mine),
                           notebooks=len({r["student"] for r in mine}))
    report.write_text(json.dumps(dict(seconds=round(graded["seconds"], 1), summary=summary, rows=rows), indent=1))
    print(f"\ncatalogue graded in {graded['seconds']:.0f} s ({len(graded['plan'])} notebooks)")
    for ex, s in summary.items():
        print(f"{ex}: {s['mistakes']} mistakes, {s['caught']} lose points, {s['caught_visible']} caught by visible checks; "
              f"{s['correct_full']}/{s['correct']} correct variants keep full marks ({s['notebooks']} notebooks)")
    missed = [f"{r['exercise']} {r['cell']}: {r['name']}" for r in rows if r["kind"] == "mistake" and r["lost"] <= 0]
    assert not missed, "mistakes that lose no points:\n" + "\n".join(missed)
    wrong = [f"{r['exercise']} {r['cell']}: {r['name']} lost {r['lost']} ({r['failed']})" for r in rows
             if r["kind"] == "correct" and r["lost"] > 0]
    assert not wrong, "correct variants that lost points:\n" + "\n".join(wrong)
    mistakes = [r for r in rows if r["kind"] == "mistake"]
    share = sum(r["visible"] for r in mistakes) / len(mistakes)
    assert share >= VISIBLE_SHARE, f"the visible checks catch only {share:.0%} of the mistakes"
    for ex, s in summary.items():
        assert s["caught_visible"] >= VISIBLE_SHARE * s["mistakes"], (ex, s)
