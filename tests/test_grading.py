"""`make grade` end to end: full marks, zeros, every bad case with its status, partial credit, fair
scoring of warnings, the gradebook, collection rules, reruns that keep grades.

The attacks a class would try are in tests/test_cheating.py.
"""

from __future__ import annotations

import copy
import json
import os
import unicodedata
import zipfile
from pathlib import Path

import pytest

from gradekit import EX1, IDS, REPO, cell, extra_cell, nb, need_sandbox, rows, run_grader, with_answer, write

from autograder import collect as C
from autograder import report as P
from autograder.validate import check_submission
from preflab import wire

# ---------------------------------------------------------------- fast checks (no kernel)


def test_names_are_normalized():
    assert C.exercise_from_name(f"{EX1}.ipynb", IDS) == EX1
    assert C.exercise_from_name(f"Copy of {EX1} (1).ipynb", IDS) == EX1
    assert C.exercise_from_name(f"Copy of Copy of {EX1}.ipynb", IDS) == EX1
    assert C.exercise_from_name("12345_assignsubmission_file_ex04_mine.ipynb", IDS) == IDS[3]
    assert C.exercise_from_name("homework.ipynb", IDS) is None
    assert C.exercise_from_name("ex01_and_ex02.ipynb", IDS) is None


def _found(root: Path, tmp: Path, roster=None):
    got = C.collect(root, tmp, roster)
    return {(f.student, f.name): f for f in got.files}, got


def test_collect_accepts_folders_flat_files_and_zips(tmp_path):
    subs = tmp_path / "subs"
    write(subs / "alice" / f"{EX1}.ipynb", "{}")
    write(subs / f"bob_123_456_{EX1}.ipynb", "{}")
    with zipfile.ZipFile(subs / "lms.zip", "w") as z:
        z.writestr(f"export/carol/Copy of {EX1}.ipynb", "{}")
        z.writestr(f"export/dan_99_{IDS[1]}.ipynb", "{}")
        z.writestr("../evil.ipynb", "{}")
    (tmp_path / "x").mkdir()
    files, got = _found(subs, tmp_path / "x")
    assert ("alice", f"{EX1}.ipynb") in files
    assert ("bob", f"123_456_{EX1}.ipynb") in files
    assert ("carol", f"Copy of {EX1}.ipynb") in files
    assert ("dan", f"99_{IDS[1]}.ipynb") in files
    assert any("unsafe" in w for w in got.warnings)
    assert not (tmp_path / "evil.ipynb").exists()


def test_identity_comes_from_the_export_not_from_a_students_files(tmp_path):
    """A zip a student uploads is never opened, so it cannot carry another student's folder."""
    subs = tmp_path / "subs"
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr(f"victim/{EX1}.ipynb", "{}")
    write(subs / "mallory" / "mine.zip", inner.read_bytes())
    with zipfile.ZipFile(subs / "export.zip", "w") as z:
        z.writestr(f"export/eve_1_{EX1}.zip", inner.read_bytes())   # a student's archive inside the LMS export
        z.writestr(f"export/frank/{EX1}.ipynb", "{}")
    (tmp_path / "x").mkdir()
    files, _ = _found(subs, tmp_path / "x")
    assert not any(s == "victim" for s, _ in files)
    assert "archive" in files[("mallory", "mine.zip")].problem
    assert "archive" in files[("eve", f"1_{EX1}.zip")].problem
    assert ("frank", f"{EX1}.ipynb") in files


def test_links_are_not_followed_and_sizes_are_checked_before_reading(tmp_path):
    subs = tmp_path / "subs"
    (subs / "alice").mkdir(parents=True)
    os.symlink(REPO / "solutions" / EX1 / f"{EX1}.ipynb", subs / "alice" / f"{EX1}.ipynb")
    os.symlink("/nonexistent/unreadable", subs / "alice" / f"{IDS[1]}.ipynb")
    big = subs / "bob" / f"{EX1}.ipynb"
    big.parent.mkdir()
    with open(big, "wb") as fh:  # sparse: 3 GiB on paper, nothing on disk
        fh.truncate(3 << 30)
    with zipfile.ZipFile(subs / "export.zip", "w") as z:
        info = zipfile.ZipInfo(f"carol/{EX1}.ipynb")
        z.writestr(info, b"0" * (C.MAX_NOTEBOOK_BYTES + 10), compress_type=zipfile.ZIP_DEFLATED)
    (tmp_path / "x").mkdir()
    files, _ = _found(subs, tmp_path / "x")
    assert "symbolic link" in files[("alice", f"{EX1}.ipynb")].problem
    assert "symbolic link" in files[("alice", f"{IDS[1]}.ipynb")].problem
    assert "limit" in files[("bob", f"{EX1}.ipynb")].problem
    assert "limit" in files[("carol", f"{EX1}.ipynb")].problem
    with pytest.raises(OSError):
        C.read_bounded(subs / "alice" / f"{EX1}.ipynb")


def test_ids_keep_their_unicode_and_bad_ids_are_named():
    nfd = unicodedata.normalize("NFD", "José")
    assert C.normalize_id(nfd) == ("José", "")
    assert C.normalize_id("Jane Doe")[0] != C.normalize_id("Jane_Doe")[0]
    assert C.normalize_id("张伟")[1] == ""
    for bad in ("", ".hidden", "a\nb", "a\u202eb", "x" * 200):
        assert C.normalize_id(bad)[1], bad


def test_roster_maps_aliases_and_flat_names_with_underscores(tmp_path):
    r = tmp_path / "roster.csv"
    r.write_text("student_id,aliases\njane_doe,Jane Doe;JD\nbob,\n")
    roster = C.read_roster(r)
    assert roster["Jane Doe"] == "jane_doe" and roster["bob"] == "bob"
    assert C._flat_student(f"jane_doe_123_{EX1}.ipynb", roster) == ("jane_doe", f"123_{EX1}.ipynb")


def test_csv_cells_cannot_start_a_formula(tmp_path):
    for bad in ("=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "\tx"):
        assert P.csv_cell(bad).startswith("'")
    assert P.csv_cell("alice") == "alice" and P.csv_cell(8.0) == "8" and P.csv_cell(None) == ""
    P.write_csv(tmp_path / "g.csv", [P.Row(student_id="=cmd|' /C calc'!A0", exercise=EX1, status="ok", reason="-x")])
    text = (tmp_path / "g.csv").read_text()
    assert "'=cmd" in text and ",'-x," in text
    assert oct((tmp_path / "g.csv").stat().st_mode)[-3:] == "600"


def test_checks_before_grading():
    rel = nb("exercises", EX1)
    ok = check_submission(json.dumps(nb("solutions", EX1)).encode(), EX1, rel)
    assert ok["ok"] and ok["answered_written"]
    assert check_submission(json.dumps(rel).encode(), EX1, rel)["answered_written"] is False
    assert "broken JSON" in check_submission(b'{"cells": [', EX1, rel)["reason"]
    stripped = copy.deepcopy(rel)
    for c in stripped["cells"]:
        c["metadata"].pop("nbgrader", None)
    assert "metadata missing" in check_submission(json.dumps(stripped).encode(), EX1, rel)["reason"]
    deleted = copy.deepcopy(rel)
    deleted["cells"].remove(cell(deleted, "ex01_rule_tests"))
    assert "deleted" in check_submission(json.dumps(deleted).encode(), EX1, rel)["reason"]
    dup = copy.deepcopy(rel)
    dup["cells"].append(copy.deepcopy(cell(dup, "ex01_rule")))
    assert "appears 2 times" in check_submission(json.dumps(dup).encode(), EX1, rel)["reason"]
    other = json.dumps(nb("exercises", IDS[1])).encode()
    assert "ex02" in check_submission(other, EX1, rel)["reason"]
    retyped = copy.deepcopy(rel)
    rt = cell(retyped, "ex01_rule_tests")
    rt["cell_type"] = "markdown"
    rt.pop("outputs", None)
    rt.pop("execution_count", None)
    assert "changed from code" in check_submission(json.dumps(retyped).encode(), EX1, rel)["reason"]
    foreign = copy.deepcopy(rel)
    fake = copy.deepcopy(cell(foreign, "ex01_rule_tests"))
    fake["metadata"]["nbgrader"]["grade_id"] = "ex01_bonus_tests"
    fake["id"] = "bonus"
    foreign["cells"].append(fake)
    assert "does not belong" in check_submission(json.dumps(foreign).encode(), EX1, rel)["reason"]


def test_wire_refuses_what_it_cannot_trust():
    for bad in ['{"$t": "ndarray", "npy": "AAAA"}', "[" * 200 + "]" * 200, '{"plain": "dict"}',
                '{"$t": "function", "name": "os.system"}', '{"$t": "model", "kind": "gpt2_lm", '
                '"config": {"model_type": "gpt2", "n_layer": 1000}}', '{"$t": "float", "v": "1e999"}', b"\xff"]:
        with pytest.raises(wire.WireError):
            wire.loads(bad)
    import numpy as np

    obj = np.array([object()], dtype=object)
    with pytest.raises(wire.WireError):
        wire.dumps(obj)
    back = wire.loads(wire.dumps({"a": (1, 2.5, float("nan")), "b": np.arange(3.0)}))
    assert back["a"][:2] == (1, 2.5) and back["a"][2] != back["a"][2] and back["b"].tolist() == [0.0, 1.0, 2.0]


def test_keep_best_never_trades_a_score_for_a_failure():
    first, kept = P.keep_best(None, dict(score=6.0, status="ok"))
    assert kept
    second, kept = P.keep_best(first, dict(score=None, status="invalid"))
    assert not kept and second["kept"]["score"] == 6.0
    third, kept = P.keep_best(second, dict(score=7.0, status="ok"))
    assert kept and third["kept"]["score"] == 7.0 and len(third["history"]) == 3


# ---------------------------------------------------------------- the real grader, end to end

LOOP = "def pairwise_loss(r_chosen, r_rejected):\n    raise NotImplementedError()\nwhile True:\n    pass\n"
SWALLOW = ("import time\ndef pairwise_loss(r_chosen, r_rejected):\n    raise NotImplementedError()\n"
           "while True:\n    try:\n        time.sleep(0.2)\n    except KeyboardInterrupt:\n        pass\n")
SOLUTION_RULE = "\n".join(ln for ln in "".join(cell(nb("solutions", EX1), "ex01_rule")["source"]).splitlines()
                          if ln.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))
WARNS = ("import sys, warnings\n" + SOLUTION_RULE.replace(
    "def pairwise_loss(r_chosen, r_rejected):\n",
    "def pairwise_loss(r_chosen, r_rejected):\n    warnings.warn('a deprecation I cannot fix')\n"
    "    print('a note to stderr', file=sys.stderr)\n", 1))
HALF = SOLUTION_RULE.replace("def pairwise_loss(r_chosen, r_rejected):\n",
                             "def pairwise_loss(r_chosen, r_rejected):\n    r_chosen = np.asarray(r_chosen, dtype=float)\n"
                             "    if r_chosen.size > 8:\n        return np.zeros(r_chosen.size)\n", 1)

SLOW_ONCE = SOLUTION_RULE.replace("def pairwise_loss(r_chosen, r_rejected):\n",
                                  "def pairwise_loss(r_chosen, r_rejected):\n    import time\n    global _slept\n"
                                  "    if np.asarray(r_chosen).size > 8 and not globals().get('_slept'):\n"
                                  "        _slept = True\n        time.sleep(60)\n", 1)

@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    need_sandbox()
    base = tmp_path_factory.mktemp("grading")
    subs, out = base / "subs", base / "out"
    sol1, rel1 = nb("solutions", EX1), nb("exercises", EX1)
    for aid in IDS:
        write(subs / "alice" / f"{aid}.ipynb", nb("solutions", aid))   # the solutions as a student
        write(subs / "bob" / f"{aid}.ipynb", nb("exercises", aid))     # the release, untouched
    write(subs / "carol" / f"{EX1}.ipynb", with_answer(rel1, "ex01_rule", LOOP))
    write(subs / "dave" / f"{EX1}.ipynb", with_answer(rel1, "ex01_rule", SWALLOW))
    write(subs / "erin" / f"{EX1}.ipynb", extra_cell(sol1, "ex01_rule_tests", "raise RuntimeError('boom')"))
    write(subs / "frank" / f"{EX1}.ipynb", extra_cell(sol1, "ex01_rule", "import os\nos._exit(1)"))
    deleted = copy.deepcopy(sol1)
    deleted["cells"].remove(cell(deleted, "ex01_edge_tests"))
    write(subs / "gina" / f"{EX1}.ipynb", deleted)
    edited = copy.deepcopy(rel1)
    cell(edited, "ex01_rule_tests")["source"] = "pass  # tests removed by the student"
    cell(edited, "ex01_rule_tests")["metadata"]["nbgrader"]["points"] = 100
    write(subs / "hank" / f"{EX1}.ipynb", edited)
    stripped = copy.deepcopy(sol1)
    for c in stripped["cells"]:
        c["metadata"].pop("nbgrader", None)
    write(subs / "ivy" / f"{EX1}.ipynb", stripped)
    dup = copy.deepcopy(sol1)
    dup["cells"].insert(5, copy.deepcopy(cell(dup, "ex01_rule")))
    write(subs / "jack" / f"{EX1}.ipynb", dup)
    write(subs / "kim" / f"{EX1}.ipynb", json.dumps(sol1)[:-200])
    write(subs / "leo" / "homework.ipynb", sol1)                        # wrong name, right cells
    write(subs / "mia" / "notes.ipynb", {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    write(subs / "nina" / f"Copy of {EX1} (1).ipynb", sol1)              # Colab's "Save a copy"
    write(subs / "olga" / f"{EX1}.ipynb", with_answer(sol1, "ex01_rule", WARNS))   # right, but warns
    write(subs / "paul" / f"{EX1}.ipynb", with_answer(sol1, "ex01_rule", HALF))    # right on small inputs only
    write(subs / "rosa" / f"{EX1}.ipynb", with_answer(sol1, "ex01_rule", SLOW_ONCE))  # one call runs past the limit
    write(subs / "Jane Doe" / f"{EX1}.ipynb", sol1)
    write(subs / "Jane_Doe" / f"{EX1}.ipynb", rel1)
    write(subs / unicodedata.normalize("NFD", "José") / f"{EX1}.ipynb", sol1)
    with zipfile.ZipFile(subs / "canvas.zip", "w") as z:                  # LMS archive, flat names
        z.writestr(f"quinn_4711_99_{IDS[2]}.ipynb", json.dumps(nb("solutions", IDS[2])))
    # --timeout 6 keeps carol's and dave's loops short; the course's locked cells get their own
    # SETUP_TIMEOUT (a loaded CI machine once took more than 6 s to load the tiny GPT-2 in ex01's
    # setup cell, and every ex01 here lost points for it), and 300 s per notebook leaves ex07's
    # 16 s idle room for the same load.
    r = run_grader(subs, out, "--workers", "2", "--timeout", "6", "--notebook-timeout", "300")
    return dict(subs=subs, out=out, rows=rows(out), log=r.stderr)


def _max(aid: str) -> float:
    return float(sum(c["metadata"]["nbgrader"].get("points", 0) for c in nb("solutions", aid)["cells"]
                     if c["metadata"].get("nbgrader", {}).get("grade")))


def _auto_max(aid: str) -> float:
    return float(sum(c["metadata"]["nbgrader"].get("points", 0) for c in nb("solutions", aid)["cells"]
                     if c["metadata"].get("nbgrader", {}).get("grade") and c["cell_type"] == "code"))


@pytest.mark.slow
def test_solutions_get_full_marks(batch):
    for aid in IDS:
        r = batch["rows"][("alice", aid)]
        assert r["status"] == "needs_manual", (aid, r["status"], r["reason"])
        assert float(r["auto_score"]) == float(r["auto_max_score"]) == _auto_max(aid), (aid, r["reason"])
        assert float(r["max_score"]) == _max(aid)


@pytest.mark.slow
def test_released_notebooks_get_zero_with_status_ok(batch):
    for aid in IDS:
        r = batch["rows"][("bob", aid)]
        assert (r["status"], float(r["score"]), float(r["auto_score"])) == ("ok", 0.0, 0.0), (aid, r["reason"])


@pytest.mark.slow
@pytest.mark.parametrize("student,status,has_score,words", [
    ("carol", "timeout", True, "interrupted"),
    ("dave", "timeout", True, "ignored the interrupt"),
    ("erin", "error", True, "RuntimeError"),
    ("frank", "error", True, "kernel died"),
    ("gina", "invalid", False, "test cell 'ex01_edge_tests' was deleted"),
    ("ivy", "invalid", False, "metadata missing"),
    ("jack", "invalid", False, "appears 2 times"),
    ("kim", "invalid", False, "broken JSON"),
])
def test_bad_submissions_get_their_status(batch, student, status, has_score, words):
    r = batch["rows"][(student, EX1)]
    assert r["status"] == status, r
    assert bool(r["score"]) == has_score, r
    assert words in r["reason"], r
    assert (batch["out"] / "feedback" / student / f"{EX1}.html").exists()


@pytest.mark.slow
def test_a_dead_kernel_keeps_the_points_earned_before(batch):
    """erin's extra cell raises after the first test cell; frank's kernel dies before any test."""
    assert float(batch["rows"][("erin", EX1)]["score"]) == _auto_max(EX1)
    assert float(batch["rows"][("frank", EX1)]["score"]) == 0.0


@pytest.mark.slow
def test_edited_test_cells_are_restored(batch):
    r = batch["rows"][("hank", EX1)]
    assert r["status"] == "ok" and float(r["score"]) == 0 and float(r["max_score"]) == _max(EX1), r
    assert "restored" in r["reason"]


@pytest.mark.slow
def test_names_colab_copies_and_archives(batch):
    rs = batch["rows"]
    full = _auto_max(EX1)
    assert float(rs[("leo", EX1)]["score"]) == full and "recognized" in rs[("leo", EX1)]["reason"]
    assert rs[("mia", "unrecognized:notes.ipynb")]["status"] == "invalid"
    assert rs[("mia", EX1)]["status"] == "missing" and rs[("mia", EX1)]["score"] == ""
    assert float(rs[("nina", EX1)]["score"]) == full
    assert float(rs[("quinn", IDS[2])]["score"]) == _auto_max(IDS[2])
    assert rs[("bob", IDS[2])]["status"] == "ok"


@pytest.mark.slow
def test_ids_are_kept_as_written(batch):
    rs = batch["rows"]
    assert float(rs[("Jane Doe", EX1)]["score"]) == _auto_max(EX1)
    assert float(rs[("Jane_Doe", EX1)]["score"]) == 0.0
    assert float(rs[("José", EX1)]["score"]) == _auto_max(EX1)


@pytest.mark.slow
def test_a_warning_costs_no_points_and_is_named(batch):
    r = batch["rows"][("olga", EX1)]
    assert float(r["auto_score"]) == _auto_max(EX1), r
    page = (batch["out"] / "feedback" / "olga" / f"{EX1}.html").read_text()
    assert "a deprecation I cannot fix" in page and "no points lost" in page


@pytest.mark.slow
def test_a_call_past_its_limit_costs_that_check_only(batch):
    """rosa's first call on a large input sleeps past --timeout: that check is interrupted and
    fails with the reason; the calls after it, in the same test cell and in later ones, still answer."""
    r = batch["rows"][("rosa", EX1)]
    rule = cell(nb("solutions", EX1), "ex01_rule_tests")["metadata"]["nbgrader"]["points"]
    assert _auto_max(EX1) - rule < float(r["auto_score"]) < _auto_max(EX1), r["reason"]
    page = (batch["out"] / "feedback" / "rosa" / f"{EX1}.html").read_text()
    assert "ran past 6 s and was interrupted" in page, page[-2000:]


@pytest.mark.slow
def test_partial_credit_and_feedback_says_why(batch):
    """paul's pairwise_loss is right on the visible inputs and wrong on larger ones."""
    r = batch["rows"][("paul", EX1)]
    rule = next(c for c in nb("solutions", EX1)["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == "ex01_rule_tests")
    assert 0 < float(r["auto_score"]) < _auto_max(EX1), r
    page = (batch["out"] / "feedback" / "paul" / f"{EX1}.html").read_text()
    assert "ex01_rule_tests: " in page and f" of {rule['metadata']['nbgrader']['points']:g} points" in page
    assert "class='fail'" in page and "class='part'" in page   # never shown as passed
    hidden_fails = [ln for ln in page.splitlines() if ln.startswith("<li class='fail'>hidden")]
    assert hidden_fails and not any("expected" in ln for ln in hidden_fails), hidden_fails


@pytest.mark.slow
def test_no_failure_is_a_plain_zero_and_feedback_hides_tests(batch):
    for r in batch["rows"].values():
        assert r["status"] in P.STATUSES
        if r["status"] in ("invalid", "missing"):
            assert r["score"] == ""
    for page in (batch["out"] / "feedback").rglob("*.html"):
        text = page.read_text()
        for secret in ("BEGIN HIDDEN", "sc.rng(", "Traceback", "_exp = ", "def pairwise_loss"):
            assert secret not in text, (page, secret)


@pytest.mark.slow
def test_out_is_private_and_keeps_an_nbgrader_gradebook(batch):
    out = batch["out"]
    assert oct(out.stat().st_mode)[-3:] == "700"
    assert (out / "course" / "gradebook.db").exists() and (out / "course" / "nbgrader_config.py").exists()
    assert (out / "course" / "autograded" / "alice" / EX1 / f"{EX1}.ipynb").exists()
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'course' / 'gradebook.db'}", "preflab") as gb:
        sub = gb.find_submission_notebook(EX1, EX1, "alice")
        written = [g for g in sub.grades if g.cell.cell_type == "markdown"]
        assert written and all(g.needs_manual_grade and g.manual_score is None for g in written)
        code = [g for g in sub.grades if g.cell.cell_type == "code"]
        assert sum(g.auto_score for g in code) == pytest.approx(_auto_max(EX1))


@pytest.mark.slow
def test_the_log_says_what_the_sandbox_exposes(batch):
    assert "sandbox: bubblewrap" in batch["log"] and "read-only:" in batch["log"] and "no network" in batch["log"]


@pytest.mark.slow
def test_manual_grades_merge_and_survive_reruns(batch, tmp_path):
    """A written answer graded in the gradebook (as formgrader does) lands in grades.csv, and a
    rerun keeps it; a changed answer is marked for review again, its points kept."""
    from nbgrader.api import Gradebook

    out = batch["out"]
    with Gradebook(f"sqlite:///{out / 'course' / 'gradebook.db'}", "preflab") as gb:
        sub = gb.find_submission_notebook(IDS[4], IDS[4], "alice")
        for g in sub.grades:
            if g.cell.cell_type == "markdown":
                g.manual_score = g.max_score
                g.needs_manual_grade = False
        gb.db.commit()
    run_grader(None, out, "--export")
    r = rows(out)[("alice", IDS[4])]
    assert r["status"] == "ok" and float(r["score"]) == _max(IDS[4]) and float(r["manual_score"]) > 0, r
    (tmp_path / "empty").mkdir()
    run_grader(tmp_path / "empty", out, "--workers", "1")          # a rerun with nothing new keeps it
    assert rows(out)[("alice", IDS[4])]["manual_score"] == r["manual_score"]
    sol = nb("solutions", IDS[4])
    changed = copy.deepcopy(sol)
    wid = next(c for c in sol["cells"] if c["metadata"].get("nbgrader", {}).get("grade")
               and c["cell_type"] == "markdown")["metadata"]["nbgrader"]["grade_id"]
    cell(changed, wid)["source"] = "A different answer, written after the grade was given."
    write(tmp_path / "subs" / "alice" / f"{IDS[4]}.ipynb", changed)
    run_grader(tmp_path / "subs", out, "--workers", "1")
    r = rows(out)[("alice", IDS[4])]
    assert r["status"] == "needs_manual" and "graded by hand: review it" in r["reason"], r
    with Gradebook(f"sqlite:///{out / 'course' / 'gradebook.db'}", "preflab") as gb:
        sub = gb.find_submission_notebook(IDS[4], IDS[4], "alice")
        assert all(g.manual_score == g.max_score for g in sub.grades if g.cell.cell_type == "markdown")


@pytest.mark.slow
def test_a_rerun_never_loses_a_grade(batch, tmp_path):
    subs = tmp_path / "subs"
    write(subs / "alice" / f"{EX1}.ipynb", "{ broken")                       # a worse resubmission
    write(subs / "bob" / f"{EX1}.ipynb", nb("solutions", EX1))               # a better one
    run_grader(subs, batch["out"], "--workers", "1")
    rs = rows(batch["out"])
    a = rs[("alice", EX1)]
    assert float(a["score"]) == _auto_max(EX1) and a["status"] == "needs_manual" and "kept the earlier grade" in a["reason"], a
    assert float(rs[("bob", EX1)]["score"]) == _auto_max(EX1)
    assert float(rs[("alice", IDS[5])]["score"]) == _auto_max(IDS[5]), "grades not in this batch are kept"
    assert rs[("carol", EX1)]["status"] == "timeout"


def test_make_grade_is_wired():
    text = (REPO / "Makefile").read_text()
    assert "-m autograder.grade \"$(SUBMISSIONS)\" --out \"$(OUT)\"" in text
    assert "-m autograder.grade --export --out \"$(OUT)\"" in text
    assert "-m autograder.release" in text
    assert "formgrader" in text


def test_frames_larger_than_a_pipe_buffer_arrive_whole():
    """The checker reads its requests through an unbuffered pipe, where one read returns only what
    the pipe holds (64 KiB): a large result must still arrive as one frame."""
    import subprocess
    import sys

    from autograder.checker import recv, send

    echo = ("import os, sys; sys.path.insert(0, %r); from autograder.checker import recv, send; "
            "i = os.fdopen(os.dup(0), 'rb', buffering=0); o = os.fdopen(os.dup(1), 'wb', buffering=0); "
            "send(o, recv(i))" % str(REPO))
    child = subprocess.Popen([sys.executable, "-c", echo], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    big = {"text": "y" * 5_000_000}
    send(child.stdin, big)
    assert recv(child.stdout) == big
    child.wait(timeout=30)


@pytest.mark.slow
def test_the_extra_exercise_is_graded_only_on_request(tmp_path):
    """The optional extra (solutions/extra_grpo) is released like the ten; `make grade` leaves it
    out, with a row that says how to include it, and grades it with --extras (make grade EXTRAS=1)."""
    need_sandbox()
    from autograder import release as R

    (extra,) = [a for a in R.exercise_ids(extras=True) if a not in IDS]
    subs = tmp_path / "subs"
    write(subs / "alice" / f"{extra}.ipynb", nb("solutions", extra))
    write(subs / "bob" / f"{extra}.ipynb", nb("exercises", extra))
    write(subs / "alice" / f"{EX1}.ipynb", nb("solutions", EX1))
    plain = rows(run_grader(subs, tmp_path / "plain", "--workers", "2") and tmp_path / "plain")
    assert ("alice", extra) not in plain and float(plain[("alice", EX1)]["auto_score"]) > 0
    row = plain[("alice", f"unrecognized:{extra}.ipynb")]
    assert "EXTRAS=1" in row["reason"], row
    asked = rows(run_grader(subs, tmp_path / "asked", "--workers", "2", "--extras") and tmp_path / "asked")
    assert asked[("alice", extra)]["status"] == "ok", asked[("alice", extra)]
    assert float(asked[("alice", extra)]["auto_score"]) == float(asked[("alice", extra)]["auto_max_score"]) == 10
    assert float(asked[("bob", extra)]["auto_score"]) == 0 and asked[("bob", extra)]["status"] == "ok"


def test_the_courses_locked_cells_get_their_own_time():
    """`--timeout` bounds the student's cells; the course's locked setup cells (ex01 loads the tiny
    GPT-2) get at least SETUP_TIMEOUT, so a busy grading machine does not cost a student points."""
    from nbformat import from_dict

    from autograder.execute import SETUP_TIMEOUT, ExecJob, GradedExecute, source_cells

    sol = nb("solutions", EX1)
    ex = GradedExecute(job=ExecJob(sandbox=None, source=source_cells(sol), names=[], cell_timeout=6,
                                   notebook_timeout=90, checker_log=os.devnull))
    got = {c["metadata"]["nbgrader"]["grade_id"]: ex._get_timeout(from_dict(c)) for c in sol["cells"]
           if c["cell_type"] == "code" and c["metadata"].get("nbgrader", {}).get("grade_id")}
    assert got["ex01_model_setup"] == got["ex01_imports"] == SETUP_TIMEOUT >= 60
    assert got["ex01_rule"] == got["ex01_model"] == 6              # the student's code: --timeout
    assert ex._get_timeout(from_dict({"cell_type": "code", "metadata": {}, "source": "while True: pass"})) == 6
    slow = GradedExecute(job=ExecJob(sandbox=None, source=source_cells(sol), names=[], cell_timeout=500,
                                     notebook_timeout=900, checker_log=os.devnull))
    assert slow._get_timeout(from_dict(cell(sol, "ex01_model_setup"))) == 500  # never below --timeout
