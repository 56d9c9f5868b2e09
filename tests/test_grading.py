"""`make grade` end to end: full marks, zeros, and every bad case with its status; reruns keep grades."""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from autograder import grade as G
from autograder import release as R

REPO = Path(__file__).resolve().parent.parent
IDS = R.exercise_ids()
EX1 = IDS[0]


def _nb(folder: str, aid: str) -> dict:
    return json.loads((REPO / folder / aid / f"{aid}.ipynb").read_text())


def _cell(nb: dict, gid: str) -> dict:
    return next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == gid)


def _with_answer(nb: dict, gid: str, source: str) -> dict:
    nb = copy.deepcopy(nb)
    _cell(nb, gid)["source"] = source
    return nb


def _extra_cell(nb: dict, after_gid: str, source: str) -> dict:
    nb = copy.deepcopy(nb)
    k = nb["cells"].index(_cell(nb, after_gid))
    nb["cells"].insert(k + 1, {"cell_type": "code", "execution_count": None, "id": "extra", "metadata": {},
                               "outputs": [], "source": source})
    return nb


def _write(path: Path, nb_or_text) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nb_or_text if isinstance(nb_or_text, str) else json.dumps(nb_or_text, indent=1))


def _rows(out: Path) -> dict[tuple[str, str], dict]:
    with open(out / "grades.csv", newline="") as fh:
        return {(r["student_id"], r["exercise"]): r for r in csv.DictReader(fh)}


def _run(subs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """Through the Makefile's own command line (what `make grade` runs)."""
    cmd = [sys.executable, "-m", "autograder.grade", str(subs), "--out", str(out), *extra]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


# ---------------------------------------------------------------- fast checks (no kernel)


def test_names_are_normalized():
    assert G.exercise_from_name(f"{EX1}.ipynb", IDS) == EX1
    assert G.exercise_from_name(f"Copy of {EX1} (1).ipynb", IDS) == EX1
    assert G.exercise_from_name(f"Copy of Copy of {EX1}.ipynb", IDS) == EX1
    assert G.exercise_from_name("12345_assignsubmission_file_ex04_mine.ipynb", IDS) == IDS[3]
    assert G.exercise_from_name("homework.ipynb", IDS) is None
    assert G.exercise_from_name("ex01_and_ex02.ipynb", IDS) is None


def test_collect_accepts_folders_flat_files_and_zips(tmp_path):
    subs = tmp_path / "subs"
    _write(subs / "alice" / f"{EX1}.ipynb", "{}")
    _write(subs / f"bob_123_456_{EX1}.ipynb", "{}")
    with zipfile.ZipFile(subs / "lms.zip", "w") as z:
        z.writestr(f"export/carol/Copy of {EX1}.ipynb", "{}")
        z.writestr(f"export/dan_99_{IDS[1]}.ipynb", "{}")
        z.writestr("../evil.ipynb", "{}")
    (tmp_path / "x").mkdir()
    found, warnings = G.collect(subs, tmp_path / "x")
    got = sorted((f["student"], f["name"]) for f in found)
    assert ("alice", f"{EX1}.ipynb") in got
    assert ("bob", f"123_456_{EX1}.ipynb") in got
    assert ("carol", f"Copy of {EX1}.ipynb") in got
    assert ("dan", f"99_{IDS[1]}.ipynb") in got
    assert any("unsafe" in w for w in warnings)
    assert not (tmp_path / "evil.ipynb").exists()


def test_checks_before_grading():
    rel = _nb("exercises", EX1)
    ok = G.check_submission(json.dumps(_nb("solutions", EX1)).encode(), EX1, rel)
    assert ok["ok"] and ok["answered_written"]
    assert G.check_submission(json.dumps(rel).encode(), EX1, rel)["answered_written"] is False
    assert "broken JSON" in G.check_submission(b'{"cells": [', EX1, rel)["reason"]
    stripped = copy.deepcopy(rel)
    for c in stripped["cells"]:
        c["metadata"].pop("nbgrader", None)
    assert "metadata missing" in G.check_submission(json.dumps(stripped).encode(), EX1, rel)["reason"]
    deleted = copy.deepcopy(rel)
    deleted["cells"].remove(_cell(deleted, "ex01_rule_tests"))
    assert "deleted" in G.check_submission(json.dumps(deleted).encode(), EX1, rel)["reason"]
    dup = copy.deepcopy(rel)
    dup["cells"].append(copy.deepcopy(_cell(dup, "ex01_rule")))
    assert "appears 2 times" in G.check_submission(json.dumps(dup).encode(), EX1, rel)["reason"]
    other = json.dumps(_nb("exercises", IDS[1])).encode()
    assert "ex02" in G.check_submission(other, EX1, rel)["reason"]


# ---------------------------------------------------------------- the real grader, end to end

LOOP = "def pairwise_loss(r_chosen, r_rejected):\n    raise NotImplementedError()\nwhile True:\n    pass\n"
SWALLOW = ("import time\ndef pairwise_loss(r_chosen, r_rejected):\n    raise NotImplementedError()\n"
           "while True:\n    try:\n        time.sleep(0.2)\n    except KeyboardInterrupt:\n        pass\n")
SNOOP = r'''
import os, socket, glob
REPO = %r
probes = {
    "solutions": lambda: os.listdir(os.path.join(REPO, "solutions")),
    "solution file": lambda: open(os.path.join(REPO, "solutions", %r, %r)).read(),
    "git objects": lambda: os.listdir(os.path.join(REPO, ".git")),
    "autograder work": lambda: os.listdir(os.path.join(REPO, "autograder", "work")),
    "gradebook files": lambda: [p for p in glob.glob("/tmp/**/gradebook.db", recursive=True)] or 1 / 0,
    "parent folder": lambda: os.listdir(".."),
    "network": lambda: socket.create_connection(("1.1.1.1", 80), timeout=2),
    "loopback": lambda: socket.create_connection(("127.0.0.1", 22), timeout=2),
}
for name, fn in probes.items():
    try:
        fn()
        print("LEAK", name)
    except Exception as e:
        print("BLOCKED", name, type(e).__name__)
print("uid", os.getuid())
''' % (str(REPO), EX1, f"{EX1}.ipynb")


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    base = tmp_path_factory.mktemp("grading")
    subs, out = base / "subs", base / "out"
    sol1, rel1 = _nb("solutions", EX1), _nb("exercises", EX1)
    for aid in IDS:
        _write(subs / "alice" / f"{aid}.ipynb", _nb("solutions", aid))   # the solutions as a student
        _write(subs / "bob" / f"{aid}.ipynb", _nb("exercises", aid))     # the release, untouched
    _write(subs / "carol" / f"{EX1}.ipynb", _with_answer(rel1, "ex01_rule", LOOP))
    _write(subs / "dave" / f"{EX1}.ipynb", _with_answer(rel1, "ex01_rule", SWALLOW))
    _write(subs / "erin" / f"{EX1}.ipynb", _extra_cell(sol1, "ex01_rule_tests", "raise RuntimeError('boom')"))
    _write(subs / "frank" / f"{EX1}.ipynb", _extra_cell(sol1, "ex01_rule", "import os\nos._exit(1)"))
    deleted = copy.deepcopy(sol1)
    deleted["cells"].remove(_cell(deleted, "ex01_edge_tests"))
    _write(subs / "gina" / f"{EX1}.ipynb", deleted)
    edited = copy.deepcopy(rel1)
    _cell(edited, "ex01_rule_tests")["source"] = "pass  # tests removed by the student"
    _cell(edited, "ex01_rule_tests")["metadata"]["nbgrader"]["points"] = 100
    _write(subs / "hank" / f"{EX1}.ipynb", edited)
    stripped = copy.deepcopy(sol1)
    for c in stripped["cells"]:
        c["metadata"].pop("nbgrader", None)
    _write(subs / "ivy" / f"{EX1}.ipynb", stripped)
    dup = copy.deepcopy(sol1)
    dup["cells"].insert(5, copy.deepcopy(_cell(dup, "ex01_rule")))
    _write(subs / "jack" / f"{EX1}.ipynb", dup)
    _write(subs / "kim" / f"{EX1}.ipynb", json.dumps(sol1)[:-200])
    _write(subs / "leo" / "homework.ipynb", sol1)                        # wrong name, right cells
    _write(subs / "mia" / "notes.ipynb", {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    _write(subs / "nina" / f"Copy of {EX1} (1).ipynb", sol1)              # Colab's "Save a copy"
    _write(subs / "oscar" / f"{EX1}.ipynb", _extra_cell(sol1, "ex01_rule", SNOOP))
    patched = _with_answer(rel1, "ex01_rule", "np.isclose = lambda *a, **k: True\nnp.allclose = lambda *a, **k: True\n"
                                             "def pairwise_loss(r_chosen, r_rejected):\n    return np.zeros(len(r_chosen))")
    _write(subs / "pat" / f"{EX1}.ipynb", patched)
    with zipfile.ZipFile(subs / "canvas.zip", "w") as z:                  # LMS archive, flat names
        z.writestr(f"quinn_4711_99_{IDS[2]}.ipynb", json.dumps(_nb("solutions", IDS[2])))
    r = _run(subs, out, "--workers", "2", "--timeout", "6", "--notebook-timeout", "60")
    return dict(subs=subs, out=out, rows=_rows(out), log=r.stderr)


@pytest.mark.slow
def test_solutions_get_full_marks(batch):
    for aid in IDS:
        r = batch["rows"][("alice", aid)]
        assert r["status"] == "needs_manual", r
        assert r["auto_score"] == r["auto_max_score"] == "8", r
        assert r["score"] == "8" and r["max_score"] == "10"


@pytest.mark.slow
def test_released_notebooks_get_zero_with_status_ok(batch):
    for aid in IDS:
        r = batch["rows"][("bob", aid)]
        assert (r["status"], r["score"], r["auto_score"]) == ("ok", "0", "0"), r


@pytest.mark.slow
@pytest.mark.parametrize("student,status,has_score,words", [
    ("carol", "timeout", True, "interrupted"),
    ("dave", "timeout", False, "ignored the interrupt"),
    ("erin", "error", True, "RuntimeError"),
    ("frank", "error", False, "kernel died"),
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
def test_edited_test_cells_are_restored(batch):
    r = batch["rows"][("hank", EX1)]
    assert r["status"] == "ok" and r["score"] == "0" and r["max_score"] == "10", r
    assert "restored" in r["reason"]


@pytest.mark.slow
def test_names_colab_copies_and_archives(batch):
    rows = batch["rows"]
    assert rows[("leo", EX1)]["score"] == "8" and "recognized" in rows[("leo", EX1)]["reason"]
    assert rows[("mia", "unrecognized:notes.ipynb")]["status"] == "invalid"
    assert rows[("mia", EX1)]["status"] == "missing" and rows[("mia", EX1)]["score"] == ""
    assert rows[("nina", EX1)]["score"] == "8"
    assert rows[("quinn", IDS[2])]["score"] == "8"
    assert rows[("bob", IDS[2])]["status"] == "ok"


@pytest.mark.slow
def test_monkeypatching_numpy_does_not_pass_hidden_tests(batch):
    r = batch["rows"][("pat", EX1)]
    assert r["score"] == "0", r
    assert "[FAIL]" in (batch["out"] / "feedback" / "pat" / f"{EX1}.html").read_text()


@pytest.mark.slow
def test_no_failure_is_a_plain_zero_and_feedback_hides_tests(batch):
    for r in batch["rows"].values():
        assert r["status"] in G.STATUSES
        if r["status"] in ("invalid", "missing"):
            assert r["score"] == ""
    for html in (batch["out"] / "feedback").rglob("*.html"):
        text = html.read_text()
        for secret in ("BEGIN HIDDEN", "sc.rng(", "Traceback", "_exp = ", "def pairwise_loss"):
            assert secret not in text, (html, secret)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (the grader falls back with a warning)")
def test_graded_code_cannot_read_answers_or_reach_the_network(batch):
    assert "WITHOUT the sandbox" not in batch["log"]
    nb = json.loads((batch["out"] / "autograded" / "oscar" / f"{EX1}.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "BLOCKED solutions" in text and "BLOCKED network" in text and "BLOCKED gradebook files" in text
    assert "LEAK" not in text, text
    assert "uid 0" not in text
    assert batch["rows"][("oscar", EX1)]["score"] == "8"


@pytest.mark.slow
def test_a_rerun_never_loses_a_grade(batch, tmp_path):
    subs = tmp_path / "subs"
    _write(subs / "alice" / f"{EX1}.ipynb", "{ broken")                       # a worse resubmission
    _write(subs / "bob" / f"{EX1}.ipynb", _nb("solutions", EX1))               # a better one
    _run(subs, batch["out"], "--workers", "1")
    rows = _rows(batch["out"])
    a = rows[("alice", EX1)]
    assert a["score"] == "8" and a["status"] == "needs_manual" and "kept the earlier grade" in a["reason"], a
    assert rows[("bob", EX1)]["score"] == "8"
    assert rows[("alice", IDS[5])]["score"] == "8", "grades not in this batch are kept"
    assert rows[("carol", EX1)]["status"] == "timeout"


def test_make_grade_is_wired():
    text = (REPO / "Makefile").read_text()
    assert "-m autograder.grade \"$(SUBMISSIONS)\" --out \"$(OUT)\"" in text
    assert "-m autograder.release" in text
