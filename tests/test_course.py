"""Tests for tools.course (`make course`) on two tiny notebooks made here, not on the real lessons.

Lesson 01 draws a figure (with a caption cell after it) and passes its claims, which also check
that the seed and the working directory reach the kernel; lesson 02's claim fails. Together they
run two real kernels (about 10 s).
"""

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tools.course import find_lessons, format_table, main, LessonResult

PASSING = [
    new_markdown_cell("# 01 · A lesson that holds\nTwo lines of summary."),
    new_code_cell("import os\nfrom pathlib import Path\nimport matplotlib.pyplot as plt\n"
                  "from preflab.claims import check\n"
                  "Path('written_by_kernel.txt').write_text('cwd is the lessons folder')"),
    new_code_cell("fig, ax = plt.subplots(figsize=(3, 2))\nax.plot([0, 1, 2], [0, 1, 4])\n"
                  "ax.set_xlabel('x'); ax.set_ylabel('y'); ax.set_title('a parabola')\nplt.show()"),
    new_markdown_cell("The curve bends upwards: the slope grows with x."),
    new_code_cell("import ipywidgets as widgets\n"
                  "def line(slope=1.0):\n    plt.figure(figsize=(2, 2)); plt.plot([0, 1], [0, slope]); plt.show()\n"
                  "widgets.interact(line, slope=widgets.FloatSlider(value=1.0, min=0.0, max=2.0, description='slope'));"),
    new_markdown_cell("**A slider** redraws the line."),
    new_code_cell("from preflab.model import load_policy, generate\nfrom preflab.world import make_world\n"
                  "model, tok = load_policy()\nsample = generate(model, tok, make_world(0).sample_prompts(4, rng=0))"),
    new_code_cell("seed = os.environ.get('PREFLAB_SEED')\n"
                  "check('the seed reaches the kernel', seed == '7', f'PREFLAB_SEED={seed}')\n"
                  "check('two plus two', 2 + 2 == 4, 'measured 4')"),
]
FAILING = [
    new_markdown_cell("# 02 · A lesson whose claim fails"),
    new_code_cell("from preflab.claims import check\nacc = 0.41"),
    new_code_cell("check('accuracy above one half', acc > 0.5, f'accuracy {acc:.2f}')"),
    new_code_cell("print('never reached')"),
]


def write(path, cells):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def course_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    lessons = root / "lessons"
    lessons.mkdir()
    write(lessons / "01_holds.ipynb", PASSING)
    write(lessons / "02_fails.ipynb", FAILING)
    (lessons / "notes.ipynb").write_text("{}")  # not NN_name: ignored
    out = root / "build"
    return root, out


@pytest.fixture(scope="module")
def full(course_run):
    root, out = course_run
    import contextlib
    import io

    buf_out, buf_err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf_out), contextlib.redirect_stderr(buf_err):
        code = main(["--lessons", str(root / "lessons"), "--out", str(out), "--seed", "7", "--timeout", "120"])
    return code, buf_out.getvalue(), buf_err.getvalue(), out, root


def test_exit_code_and_table(full):
    code, stdout, stderr, out, root = full
    assert code == 1, "a failing lesson must make the exit code non-zero"
    lines = stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("lesson"))
    assert "runtime s" in header and "peak MB" in header and "check" in header
    row1 = next(ln for ln in lines if ln.startswith("01_holds"))
    row2 = next(ln for ln in lines if ln.startswith("02_fails"))
    assert "passed" in row1 and "2/2 claims" in row1
    assert "failed" in row2 and "0/1 claims" in row2
    assert any(ln.startswith("total") and "1/2 passed" in ln for ln in lines)
    assert "02_fails" in stderr  # the failing lesson is named


def test_course_json(full):
    code, stdout, stderr, out, root = full
    report = json.loads((out / "course.json").read_text())
    assert report["seed"] == "7" and report["passed"] is False
    by = {item["lesson"]: item for item in report["lessons"]}
    assert list(by) == ["01_holds", "02_fails"]  # in number order, notes.ipynb ignored
    a, b = by["01_holds"], by["02_fails"]
    assert a["status"] == "passed" and b["status"] == "failed"
    assert "ClaimFailed" in b["error"] and "accuracy above one half" in b["error"]
    assert "\x1b[" not in b["error"]  # no terminal colour codes in the report
    assert (out / "lessons" / "02_fails.kernel.log").exists()
    for item in (a, b):
        assert 0 < item["runtime_s"] < 120
        assert 20 < item["peak_mb"] < 4000  # a python kernel with matplotlib: tens to hundreds of MB
    assert [c["status"] for c in a["claims"]] == ["PASS", "PASS"]
    assert a["claims"][0] == {"status": "PASS", "name": "the seed reaches the kernel", "detail": "PREFLAB_SEED=7",
                            "asserted": True}
    assert b["claims"] == [{"status": "FAIL", "name": "accuracy above one half", "detail": "accuracy 0.41", "asserted": True}]
    assert a["title"] == "01 · A lesson that holds"
    # the kernel ran in the lessons folder
    assert (root / "lessons" / "written_by_kernel.txt").exists()
    # where the time went: loading and sampling happened; the kinds and "other" add up to the runtime
    prof = a["profile"]
    assert prof["loading"] > 0 and prof["sampling"] > 0 and prof["training"] == 0, prof
    assert sum(prof[k] for k in ("training", "sampling", "evaluation", "loading", "other")) == \
        pytest.approx(a["runtime_s"], abs=0.3)
    assert prof["gpu_peak_mb"] is None  # no GPU here
    assert len(prof["slowest_cells"]) == 3 and all(c["seconds"] >= 0 for c in prof["slowest_cells"])
    assert "train/sample/eval/load/other" in stdout


def test_notebooks_html_and_figures(full):
    code, stdout, stderr, out, root = full
    report = json.loads((out / "course.json").read_text())
    a, b = report["lessons"]
    executed = nbformat.read(out / a["notebook"], as_version=4)
    assert all(c.execution_count for c in executed.cells if c.cell_type == "code")
    failed_nb = nbformat.read(out / b["notebook"], as_version=4)
    assert failed_nb.cells[-1].execution_count is None  # execution stopped at the failing check
    assert "two plus two" in (out / a["html"]).read_text()
    assert (out / "lessons" / "02_fails.html").exists()
    # a plain figure and the figure inside an interact widget's output
    assert a["figures"] == ["figures/01_1.png", "figures/01_2.png"] and b["figures"] == []
    for name in a["figures"]:
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert a["captions"] == ["The curve bends upwards: the slope grows with x.", "A slider redraws the line."]


def test_gallery(full):
    code, stdout, stderr, out, root = full
    page = (out / "index.html").read_text()
    assert "<img src='figures/01_1.png'" in page
    assert "The curve bends upwards" in page
    assert "two plus two" in page and "accuracy above one half" in page
    assert "did not hold" in page and "held" in page
    assert "lessons/01_holds.html" in page
    # the claim that failed sits in lesson 02's section, after lesson 01's figure
    assert page.index("figures/01_1.png") < page.index("accuracy above one half")


def test_only_runs_a_subset(course_run, tmp_path):
    root, _ = course_run
    out = tmp_path / "only"
    code = main(["--lessons", str(root / "lessons"), "--out", str(out), "--only", "2", "--no-progress"])
    assert code == 1
    report = json.loads((out / "course.json").read_text())
    assert [x["lesson"] for x in report["lessons"]] == ["02_fails"] and report["only"] == ["2"]


def test_find_lessons_and_errors(tmp_path):
    (tmp_path / "00_a.ipynb").write_text("{}")
    (tmp_path / "03_b.ipynb").write_text("{}")
    (tmp_path / "README.md").write_text("")
    assert [p.name for p in find_lessons(tmp_path)] == ["00_a.ipynb", "03_b.ipynb"]
    assert [p.name for p in find_lessons(tmp_path, ["03"])] == ["03_b.ipynb"]
    assert [p.name for p in find_lessons(tmp_path, ["3", "00_a"])] == ["00_a.ipynb", "03_b.ipynb"]
    with pytest.raises(ValueError, match="matches no lesson; the lessons are: 00_a, 03_b"):
        find_lessons(tmp_path, ["07"])
    with pytest.raises(ValueError, match="does not exist"):
        find_lessons(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no lesson notebooks"):
        find_lessons(empty)
    assert main(["--lessons", str(empty), "--out", str(tmp_path / "o")]) == 2


def test_broken_notebook_is_reported_not_fatal(tmp_path):
    lessons = tmp_path / "lessons"
    lessons.mkdir()
    (lessons / "05_broken.ipynb").write_text("{ this is not json")
    code = main(["--lessons", str(lessons), "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 1
    report = json.loads((tmp_path / "o" / "course.json").read_text())
    assert report["lessons"][0]["status"] == "error"


def test_table_format():
    rows = [LessonResult("00_a", "00", status="passed", runtime_s=12.34, peak_mb=456.7,
                         claims=[{"status": "PASS", "name": "x", "detail": ""}])]
    table = format_table(rows)
    assert "00_a" in table and "12.3" in table and "457" in table and "1/1 claims" in table


def test_the_runner_waits_for_replies_in_slices():
    """A missed wake-up after a widget cell (jupyter/nbclient#312) cost whole 600 s timeouts: the
    runner's client asks the shell channel for at most ``shell_timeout_interval`` at a time, and a
    reply that a poll misses is picked up by the next one."""
    import asyncio
    from queue import Empty

    import nbformat

    from tools.course import _sliced_client_class

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("print(x + 1)")]
    client = _sliced_client_class()(nb, timeout=600, kernel_name="python3")
    asked = []

    with client.setup_kernel():
        channel = client.kc.shell_channel
        real = channel.get_msg

        async def missing_once(timeout=None):
            asked.append(timeout)
            if len(asked) == 1:       # the first poll misses the reply that is already there
                await asyncio.sleep(0.2)
                raise Empty
            return await real(timeout=timeout)

        channel.get_msg = missing_once
        for i, cell in enumerate(nb.cells):
            client.execute_cell(cell, i)
    assert nb.cells[1].outputs[0]["text"] == "2\n"
    assert asked and max(asked) <= client.shell_timeout_interval, asked


def test_claims_are_asserted_at_tiny_and_only_reported_at_gpt2(monkeypatch, capsys):
    """Every check-cell threshold was measured on the tiny model: at GPT-2 scale a claim prints
    its numbers, marked as reported, and a failure does not stop the notebook or fail the lesson."""
    from preflab.claims import ClaimFailed, check, parse_claims

    monkeypatch.delenv("PREFLAB_SCALE", raising=False)
    with pytest.raises(ClaimFailed):
        check("accuracy above one half", False, "accuracy 0.41")
    monkeypatch.setenv("PREFLAB_SCALE", "gpt2")
    assert check("accuracy above one half", False, "accuracy 0.41") is False       # no raise
    assert check("two plus two", True, "measured 4") is True
    with pytest.raises(ClaimFailed):                                                  # a claim measured there
        check("asserted at gpt2 too", False, "x", scales=("tiny", "gpt2"))
    got = parse_claims(capsys.readouterr().out)
    assert [(c["status"], c["asserted"]) for c in got] == [("FAIL", True), ("FAIL", False), ("PASS", False),
                                                            ("FAIL", True)]
    assert "[reported at gpt2, not asserted: its threshold was measured at tiny only]" in got[1]["detail"]
