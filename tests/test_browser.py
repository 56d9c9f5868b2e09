"""The course as a student meets it: JupyterLab in a real (headless) Chromium, driven by Playwright.

1. Open lesson 03 (Bradley-Terry), run all cells, move its "temperature" slider with the
   keyboard and see the printed win probability P(a ≻ b) change.
2. Open exercise 8 as released to students and press nbgrader's Validate button; the
   validation dialog reports the cells a student still has to fill in.
3. As an instructor: grade a submission with `make grade`'s grader, open nbgrader's formgrader
   on the course it wrote, give the written answer its points, export, and find them in
   grades.csv.

Each step leaves a screenshot in build/browser/. The JupyterLab server runs on a free
localhost port with a random token, in a temporary root folder that holds copies of the two
notebooks, with its own settings, workspace and runtime folders; the server, its kernels and
the browser are stopped even when a step fails.

Needs Debian's Chromium (``apt-get install chromium chromium-driver``) and the Python
``playwright`` package (``pip install playwright``, in the dev extra); no browser is downloaded.
Set PREFLAB_CHROMIUM to use another Chromium binary.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
LESSON = REPO / "lessons" / "03_bradley_terry.ipynb"
EXERCISE = REPO / "exercises" / "ex08_the_bradley_terry_model" / "ex08_the_bradley_terry_model.ipynb"
SHOTS = REPO / "build" / "browser"
CHROMIUM = os.environ.get("PREFLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SLIDER_LABEL = "temperature"
WIN_PROB = re.compile(r"P\(a ≻ b\)\s*=\s*(-?[0-9]*\.?[0-9]+)")

HOW_TO_ENABLE = ("the browser test needs Debian's Chromium and the Python playwright package: "
                 "`apt-get install chromium chromium-driver` and `pip install playwright` "
                 "(or `pip install -e '.[dev]'`); no browser download is needed. "
                 "Set PREFLAB_CHROMIUM=/path/to/chromium to use another binary.")

if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM}: {HOW_TO_ENABLE}", allow_module_level=True)
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip(f"the playwright package is not installed: {HOW_TO_ENABLE}", allow_module_level=True)


# ----------------------------------------------------------------------------------------------
# a JupyterLab server of our own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(settings_dir: Path) -> None:
    """Lab settings for a test: every cell in the DOM (no windowing), no news or update pop-ups."""
    overrides = {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                           "checkForUpdates": False},
    }
    for rel, value in overrides.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and every process it started (kernels), by pid."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: Jupyter Server shuts its kernels down on the way out
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass


@contextmanager
def jupyterlab(work: Path, root: Path | None = None):
    """Start JupyterLab on a free port with a token; yield (base_url, token, root_dir, log_path).
    ``root`` (default: a new folder) is the server's root and working folder."""
    if root is None:
        root = work / "root"
        root.mkdir()
    write_settings(work / "settings")
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ,
               JUPYTER_CONFIG_DIR=str(work / "config"),
               JUPYTER_RUNTIME_DIR=str(work / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(work / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(work / "workspaces"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0", f"--ServerApp.token={token}",
           f"--ServerApp.root_dir={root}"]
    log_path = work / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer within 60 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield base, token, root, log_path
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    missing = [p for p in (LESSON, EXERCISE) if not p.exists()]
    if missing:
        pytest.fail(f"the browser test opens {', '.join(str(p.relative_to(REPO)) for p in missing)}, which is "
                    f"missing: restore it from git (lessons/) or run `make release` (exercises/)")
    with jupyterlab(tmp_path_factory.mktemp("lab")) as (base, token, root, log):
        shutil.copy(LESSON, root / LESSON.name)
        shutil.copy(EXERCISE, root / EXERCISE.name)
        yield base, token, root, log


@pytest.fixture(scope="module")
def page(lab, tmp_path_factory):
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            pg = ctx.pages[0] if ctx.pages else ctx.new_page()
            pg.set_default_timeout(30_000)
            yield pg
        finally:
            ctx.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / name))


@contextmanager
def step(page, lab, name: str):
    """Run a step; on failure keep a screenshot and put the server log's tail in the message."""
    try:
        yield
    except Exception as e:
        try:
            shot(page, f"FAILED_{name}.png")
        except Exception:
            pass
        try:
            title = page.title()
        except Exception:
            title = "?"
        log = lab[3].read_text(errors="replace")[-2000:]
        raise AssertionError(f"browser step '{name}' failed (page title {title!r}): {e}\n"
                             f"--- JupyterLab log (tail) ---\n{log}") from e


def open_notebook(page, lab, name: str) -> None:
    base, token = lab[0], lab[1]
    page.goto(f"{base}/lab/tree/{name}?token={token}")
    # wait until the document's tab is the current one in the main area (not an earlier notebook)
    current = page.locator("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current")
    current.filter(has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).wait_for(timeout=60_000)
    page.locator(".jp-NotebookPanel:visible .jp-Notebook").wait_for(timeout=60_000)
    page.locator("#jp-main-statusbar").get_by_text("Idle").wait_for(timeout=60_000)  # kernel started


def run_all(page, timeout_s: float) -> None:
    """Run > Run All Cells, then wait until no cell is queued or running; every code cell must have run."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    prompts = "[...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')]" \
              ".map(e => e.innerText.trim())"
    # started: some cell queued or running (or, for a very quick notebook, every cell already numbered)
    page.wait_for_function(f"() => {prompts}.some(s => s === '[*]:') || {prompts}.every(s => /^\\[\\d+\\]:$/.test(s))",
                           timeout=10_000)
    page.wait_for_function(f"() => !{prompts}.some(s => s === '[*]:')", timeout=timeout_s * 1000)
    states = page.evaluate(f"() => {prompts}")
    not_run = [i for i, s in enumerate(states) if not re.fullmatch(r"\[\d+\]:", s)]
    if not_run:
        errors = [t for t in page.locator(".jp-OutputArea-output").all_inner_texts() if "Error" in t]
        raise AssertionError(f"code cells {not_run} did not run; the first error output:\n"
                             f"{errors[0][-1500:] if errors else '(none shown)'}")


def settled_text(page, locator, quiet_s: float = 1.0, timeout_s: float = 20.0) -> str:
    """The locator's text once the kernel is idle and the text has not changed for ``quiet_s``."""
    idle = page.locator("#jp-main-statusbar").get_by_text("Idle")
    deadline = time.monotonic() + timeout_s
    last, since = locator.inner_text(), time.monotonic()
    while time.monotonic() < deadline:
        page.wait_for_timeout(200)
        text = locator.inner_text()
        if text != last:
            last, since = text, time.monotonic()
        elif time.monotonic() - since >= quiet_s and idle.count() > 0:
            return text
    return last


# ----------------------------------------------------------------------------------------------
# the tests


def test_lesson_slider_changes_its_output(page, lab):
    with step(page, lab, "open_lesson"):
        open_notebook(page, lab, LESSON.name)
        shot(page, "01_lesson_opened.png")
    with step(page, lab, "run_all"):
        run_all(page, timeout_s=90)
        shot(page, "02_lesson_ran.png")
    with step(page, lab, "slider"):
        labelled = page.locator(".widget-hslider", has=page.locator(".widget-label", has_text=SLIDER_LABEL))
        cell = page.locator(".jp-NotebookPanel:visible .jp-CodeCell", has=labelled).first
        slider = cell.locator(labelled).first
        slider.wait_for()
        output = cell.locator(".jp-Cell-outputArea")
        slider.scroll_into_view_if_needed()
        before = output.inner_text()
        found = WIN_PROB.search(before)
        assert found, f"the {SLIDER_LABEL} slider's output does not show P(a ≻ b) = ...; it shows {before!r}"
        shot(page, "03_slider_before.png")
        handle = slider.locator(".noUi-handle")
        handle.focus()
        for _ in range(5):
            page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "([el, old]) => el.innerText !== old", arg=[output.element_handle(), before], timeout=15_000)
        after = settled_text(page, output)  # the last slider value's output, not an intermediate one
        shot(page, "04_slider_after.png")
        moved = WIN_PROB.search(after)
        assert moved, f"after moving the slider the output no longer shows P(a ≻ b): {after!r}"
        assert moved.group(1) != found.group(1), (before, after)


def test_exercise_validates_with_nbgrader(page, lab):
    with step(page, lab, "open_exercise"):
        open_notebook(page, lab, EXERCISE.name)
        shot(page, "05_exercise_opened.png")
    with step(page, lab, "validate"):
        toolbar = page.locator(".jp-NotebookPanel:visible .jp-NotebookPanel-toolbar")
        button = toolbar.get_by_text("Validate", exact=True)
        try:
            button.wait_for(timeout=15_000)
        except Exception as e:
            raise AssertionError("no Validate button on the notebook toolbar: nbgrader's JupyterLab extension is "
                                 "missing or disabled (`jupyter labextension list` should show @jupyter/nbgrader "
                                 "enabled; `pip install nbgrader==0.9.6`)") from e
        button.click()
        dialog = page.locator(".jp-Dialog")
        dialog.wait_for(timeout=90_000)
        dialog.get_by_text("Validation Results").wait_for()
        text = dialog.inner_text()
        shot(page, "06_validation_result.png")
        # The released notebook is unanswered: nbgrader lists the failing test cells and the
        # written answer still to give.
        assert "The following cell failed" in text, text[:2000]
        assert "NotImplementedError" in text, text[:2000]
        assert "You did not provide a response" in text, text[:2000]


def test_formgrader_manual_grade_lands_in_grades_csv(page, tmp_path_factory):
    """The instructor's path for written answers: formgrader on OUT/course, then `make export`."""
    import csv

    from gradekit import EX1, nb, need_sandbox, run_grader, write

    need_sandbox()
    work = tmp_path_factory.mktemp("formgrader")
    write(work / "subs" / "alice" / f"{EX1}.ipynb", nb("solutions", EX1))
    out = work / "out"
    run_grader(work / "subs", out, "--workers", "1")
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'course' / 'gradebook.db'}", "preflab") as gb:
        sub = gb.find_submission_notebook(EX1, EX1, "alice")
        sub_id = sub.id
        written = next(g for g in sub.grades if g.cell.cell_type == "markdown")
        wid, wmax = written.name, written.max_score
    with jupyterlab(work, root=out / "course") as lab:
        base, token = lab[0], lab[1]
        with step(page, lab, "formgrader_open"):
            page.goto(f"{base}/lab?token={token}")  # log in: the server sets its cookie
            page.goto(f"{base}/formgrader/gradebook/{EX1}/{EX1}")
            link = page.get_by_role("link", name=re.compile(r"Submission #1"))
            link.wait_for(timeout=60_000)
            shot(page, "07_formgrader_submissions.png")
            link.click()  # as an instructor would
            page.wait_for_url(re.compile(rf".*/formgrader/submissions/{sub_id}/?.*"), timeout=60_000)
            box = page.locator(f"input.score#{wid}")
            box.wait_for(timeout=60_000)
            # The box is in the served HTML; its save-on-change handler is bound only once the
            # page's script has fetched the grades (and that fetch re-renders the box): a score
            # typed before then is silently dropped, as it was once on a loaded CI machine.
            page.wait_for_function("() => window.formgrader && formgrader.grades && formgrader.grades.loaded",
                                   timeout=60_000)
        with step(page, lab, "formgrader_grade"):
            box.scroll_into_view_if_needed()
            box.fill(f"{wmax:g}")
            box.press("Tab")  # leaving the field saves the score
            deadline = time.monotonic() + 30
            while True:
                with Gradebook(f"sqlite:///{out / 'course' / 'gradebook.db'}", "preflab") as gb:
                    g = next(x for x in gb.find_submission_notebook(EX1, EX1, "alice").grades if x.name == wid)
                    saved = g.manual_score
                if saved is not None or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(300)
            shot(page, "08_formgrader_graded.png")
            assert saved == wmax, f"formgrader did not save the score (manual_score {saved})"
    run_grader(None, out, "--export")
    with open(out / "grades.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["student_id"] == "alice")
    assert row["status"] == "ok" and float(row["manual_score"]) == wmax, row
    assert float(row["score"]) == float(row["auto_score"]) + wmax, row
