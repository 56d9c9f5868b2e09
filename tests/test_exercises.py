"""The ten exercises: solutions run, releases hold no answers, self-checks resist monkeypatching."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted(REPO.glob("solutions/ex[0-9]*/ex[0-9]*.ipynb"))
EXERCISES = sorted(REPO.glob("exercises/ex[0-9]*/ex[0-9]*.ipynb"))
#: The optional extra exercises (graded only with `make grade EXTRAS=1`): no written part, but
#: the same rules for their tests, their release and their grading.
EXTRA_SOLUTIONS = sorted(REPO.glob("solutions/extra_*/extra_*.ipynb"))
EXTRA_EXERCISES = sorted(REPO.glob("exercises/extra_*/extra_*.ipynb"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def test_ten_exercises_in_both_folders():
    assert len(SOLUTIONS) == 10
    assert [p.name for p in SOLUTIONS] == [p.name for p in EXERCISES]
    for p in SOLUTIONS:
        assert p.parent.name == p.stem, "nbgrader layout: solutions/<id>/<id>.ipynb"


def test_the_extra_exercises_are_released_and_named_apart():
    assert EXTRA_SOLUTIONS, "the GRPO extra (solutions/extra_grpo) is missing"
    assert [p.name for p in EXTRA_SOLUTIONS] == [p.name for p in EXTRA_EXERCISES]
    for p in EXTRA_EXERCISES:
        text = p.read_text()
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "hidden:"):
            assert marker not in text, f"{p.name} leaks {marker!r}"
        assert "raise NotImplementedError()" in text
        cells = _cells(p)
        assert "make grade EXTRAS=1" in _src(cells[1]) and "**Builds on:** lesson" in _src(cells[1])
        assert sum(_nbg(c).get("points", 0) for c in cells if _nbg(c).get("grade")) == 10


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_released_notebook_holds_no_solution_or_hidden_test(path):
    text = path.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "Rubric", "hidden:"):
        assert marker not in text, f"{path.name} leaks {marker!r}"
    assert "raise NotImplementedError()" in text
    assert "YOUR ANSWER HERE" in text


@pytest.mark.parametrize("path", SOLUTIONS + EXERCISES + EXTRA_SOLUTIONS + EXTRA_EXERCISES,
                         ids=lambda p: f"{p.parts[-3]}/{p.stem}")
def test_notebooks_committed_clean_with_setup_cell_first(path):
    from tools.colab import setup_cell_source

    cells = _cells(path)
    assert _src(cells[0]) == setup_cell_source(), "first cell must be the Colab setup cell"
    for c in cells:
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, "clear outputs before committing"


#: The exercises with parts on the tiny GPT-2 (or in torch), and their extra graded parts.
MODEL_PARTS = {"ex01": ("model",), "ex03": ("model",), "ex04": ("model", "train"), "ex07": ("model", "train"),
               "ex08": ("model",), "ex09": ("model",), "ex10": ("model",)}


def _nbg(cell: dict) -> dict:
    return cell["metadata"].get("nbgrader", {})


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_has_the_common_structure(path):
    cells = _cells(path)
    ids = [_nbg(c).get("grade_id") for c in cells]
    n = path.stem[:4]
    parts = ["imports", "rule", "rule_tests", "edge", "edge_tests", "written", "metric", "metric_tests", "selfcheck"]
    for extra in MODEL_PARTS.get(n, ()):
        parts += [extra, f"{extra}_tests"]
    if n in MODEL_PARTS:
        parts.append("model_setup")
    for part in parts:
        assert f"{n}_{part}" in ids, part
    tests = [c for c in cells if _nbg(c).get("grade") and c["cell_type"] == "code"]
    assert all("### BEGIN HIDDEN TESTS" in _src(c) for c in tests), "every test cell has hidden tests"
    written = [c for c in cells if _nbg(c).get("grade_id") == f"{n}_written"][0]
    assert "Rubric" in _src(written), "the written part carries its rubric in the source"
    assert sum(_nbg(c).get("points", 0) for c in cells if _nbg(c).get("grade")) == 10, "ten points per exercise"
    assert _nbg(written)["points"] == 2
    intro = _src(cells[1])
    assert "**Builds on:** lesson" in intro, "the exercise names the lessons it builds on"
    assert f"({_fmt(sum(_nbg(c).get('points', 0) for c in cells if _nbg(c).get('grade')))} points)" in intro


def _fmt(x: float) -> str:
    return f"{x:g}"


@pytest.mark.parametrize("path", SOLUTIONS + EXTRA_SOLUTIONS, ids=lambda p: p.stem)
def test_test_cells_say_what_their_hidden_checks_are_worth(path):
    """The visible part of each test cell ends with a comment naming the hidden checks' points,
    and those points plus the visible checks' make the cell's points (checked when graded by
    tests/test_catalogue.py; here the comment's number is compared with the cell's points minus
    the visible checks' points, read from their literal points=...)."""
    import ast
    import re

    for c in _cells(path):
        g = _nbg(c)
        if not (g.get("grade") and c["cell_type"] == "code"):
            continue
        visible = _src(c).split("### BEGIN HIDDEN TESTS")[0]
        comment = [ln for ln in visible.strip().splitlines() if ln.startswith("# Hidden tests (")]
        assert comment, f"{g['grade_id']}: the visible part ends by saying what the hidden tests are worth"
        worth = float(re.match(r"# Hidden tests \(([0-9.]+) points?\)", comment[0]).group(1))
        pts = 0.0
        for node in ast.walk(ast.parse(visible)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "sc":
                kw = {k.arg: k.value for k in node.keywords}
                if node.func.attr in ("close", "equal", "true", "finite", "raises", "kind", "unchanged"):
                    assert "points" in kw and isinstance(kw["points"], ast.Constant), f"{g['grade_id']}: a check without literal points"
                    pts += kw["points"].value
        assert abs(pts + worth - g["points"]) < 1e-6, f"{g['grade_id']}: visible {pts:g} + hidden {worth:g} != {g['points']}"


@pytest.mark.parametrize("path", SOLUTIONS + EXTRA_SOLUTIONS, ids=lambda p: p.stem)
def test_solution_executes_and_passes_its_checks(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.time() - t0
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "[FAIL]" not in text
    assert "Self-check: " in text and ", 0 failed." in text
    assert seconds < 60, f"{path.stem} took {seconds:.1f} s"


@pytest.mark.slow
def test_nbgrader_release_matches_exercises_folder():
    """exercises/ must be exactly what `make release` would generate from solutions/."""
    r = subprocess.run([sys.executable, "-m", "autograder.release", "--check"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- the self-check helper


def test_selfcheck_passes_and_fails_plainly():
    from preflab import selfcheck as sc

    sc.close([1.0, 2.0], [1.0, 2.0 + 1e-12], name="close")
    with pytest.raises(sc.CheckFailed):
        sc.close([1.0, float("nan")], [1.0, 2.0], name="nan is never close")
    with pytest.raises(sc.CheckFailed):
        sc.close([1.0], [1.0, 2.0], name="shape")
    with pytest.raises(sc.CheckFailed):
        sc.raises(ValueError, lambda: None, name="nothing raised")
    assert sc.softplus(1e4) == 1e4 and sc.softplus(-1e4) == 0.0
    assert isinstance(sc.CheckFailed("x"), AssertionError)


def test_an_input_check_needs_a_function_that_works():
    """Grader side: a raises-check passes only once a call of the same student function returned."""
    from autograder.checker import Remote
    from preflab import selfcheck as sc

    class Channel:  # what autograder.checker.Channel does with a call's reply, without a kernel
        def __init__(self, works):
            self.works, self.returned = works, set()

        def request(self, payload):
            ok = self.works and bool(payload["args"][0])
            if ok:
                self.returned.add(payload["fn"])
            return {"ok": True, "value": 0.0} if ok else \
                {"ok": False, "error": {"type": "ValueError", "base": "ValueError", "message": "no pairs"}}

    grader = sc.grader_mode()
    try:
        always = Remote("loss", Channel(works=False))
        sc.raises(ValueError, always, [], name="raises before any call returned", points=1)
        honest = Remote("loss", Channel(works=True))
        honest([1.0])
        sc.raises(ValueError, honest, [], name="raises after a call returned", points=1)
    finally:
        sc.GRADER = None
    (first, second) = grader.results
    assert not first["ok"] and "works on valid input" in first["message"]
    assert second["ok"]


def test_selfcheck_is_not_fooled_by_monkeypatching(monkeypatch):
    import numpy as np
    import torch

    from preflab import selfcheck as sc

    always = lambda *a, **k: True  # noqa: E731
    monkeypatch.setattr(np, "isclose", always)
    monkeypatch.setattr(np, "allclose", always)
    monkeypatch.setattr(np, "array_equal", always)
    monkeypatch.setattr(np.testing, "assert_allclose", lambda *a, **k: None)
    monkeypatch.setattr(torch, "allclose", always)
    monkeypatch.setattr(torch, "isclose", always)
    monkeypatch.setattr(torch, "equal", always)
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: [0.5])
    monkeypatch.setattr(torch.Tensor, "__eq__", lambda self, other: True)
    wrong_np = np.array([0.0, 0.0])
    wrong_t = torch.tensor([0.0, 0.0])
    for wrong in (wrong_np, wrong_t, [0.0, 0.0]):
        with pytest.raises(sc.CheckFailed):
            sc.close(wrong, [0.5, 0.5], name="a wrong answer under patched helpers")
        with pytest.raises(sc.CheckFailed):
            sc.equal(wrong, [0.5, 0.5], name="a wrong answer under patched helpers")
    sc.close(torch.tensor([0.5, 0.25]), [0.5, 0.25], name="a right tensor still passes")


def test_selfcheck_in_a_kernel_after_a_student_patch(tmp_path):
    """The same inside a notebook: the helper is imported (locked cell) before student code."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import numpy as np\nfrom preflab import selfcheck as sc"),
        nbformat.v4.new_code_cell("np.isclose = lambda *a, **k: True\nnp.allclose = lambda *a, **k: True\n"
                                  "import math\nmath.isclose = lambda *a, **k: True\n"
                                  "def pairwise_loss(c, r):\n    return np.zeros(len(c))"),
        nbformat.v4.new_code_cell("try:\n    sc.close(pairwise_loss([2.0], [0.0]), [0.12692801104297263])\n"
                                  "    print('FOOLED')\nexcept AssertionError:\n    print('CAUGHT')"),
    ]
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "CAUGHT" in out and "FOOLED" not in out


def test_selfcheck_tells_colab_users_how_to_submit(monkeypatch, capsys):
    from preflab import selfcheck as sc

    monkeypatch.setitem(sys.modules, "google.colab", object())
    sc.summary()
    assert "File → Download → Download .ipynb" in capsys.readouterr().out


# ---------------------------------------------------------------- every check depends on the student's code

_LOCAL_GRADE = r'''
import ast, json, sys
from preflab import selfcheck
grader = selfcheck.grader_mode()
nb = json.load(open(sys.argv[1]))
source = {(c["metadata"].get("nbgrader") or {}).get("grade_id"): "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
          for c in json.load(open(sys.argv[2]))["cells"]}
ns = {"__name__": "__main__"}
out = {}
for c in nb["cells"]:
    if c["cell_type"] != "code" or c["metadata"].get("tags") == ["setup"]:
        continue
    g = c["metadata"].get("nbgrader") or {}
    src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
    if g.get("grade") and not g.get("solution"):
        start = len(grader.results)
        for stmt in ast.parse(source[g["grade_id"]].replace("### BEGIN HIDDEN TESTS", "").replace("### END HIDDEN TESTS", "")).body:
            try:
                exec(compile(ast.Module([stmt], []), g["grade_id"], "exec"), ns)
            except Exception:
                pass
        res = grader.results[start:]
        out[g["grade_id"]] = dict(points=g["points"], passed=sum(r["points"] or 0 for r in res if r["ok"]),
                                  declared=sum(r["points"] or 0 for r in res), names=[r["name"] for r in res if r["ok"]])
    else:
        try:
            exec(compile(src, g.get("grade_id", "cell"), "exec"), ns)
        except Exception:
            pass
print(json.dumps(out))
'''


@pytest.mark.parametrize("path", SOLUTIONS + EXTRA_SOLUTIONS, ids=lambda p: p.stem)
def test_release_scores_zero_and_solution_full_marks_in_grader_mode(path):
    """Every check must depend on the student's code: run the test cells as the grader does
    (grader mode, hidden checks included, statement by statement) against the untouched release
    (nothing may pass) and against the solution (everything passes, the points add up). In this
    process, without the sandbox: a quick guard; `make grade` is the real thing."""
    import os

    release = REPO / "exercises" / path.parent.name / path.name
    env = dict(os.environ, OMP_NUM_THREADS="1", PREFLAB_SCALE="tiny")
    reports = {}
    for which, nb in (("release", release), ("solution", path)):
        r = subprocess.run([sys.executable, "-c", _LOCAL_GRADE, str(nb), str(path)], capture_output=True, text=True,
                           timeout=600, cwd=REPO, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        reports[which] = json.loads(r.stdout.strip().splitlines()[-1])
    for gid, rep in reports["release"].items():
        assert rep["passed"] == 0, f"{gid}: checks pass on the untouched release: {rep['names']}"
    for gid, rep in reports["solution"].items():
        assert abs(rep["passed"] - rep["points"]) < 1e-6 and abs(rep["declared"] - rep["points"]) < 1e-6, (gid, rep)
