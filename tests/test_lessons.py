"""Every lesson executes end to end, and its closing check cell (its claim) passes on this run.

The failure-mode lessons (08-14) and the after-DPO lessons (15-18: GRPO, online DPO, KTO/ORPO,
RLAIF) are also run on two more seeds, in tests marked slow.
Set PREFLAB_LESSONS="03 07" to run a subset.
"""

import json
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from preflab.course import _figures

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.ipynb"))
ONLY = os.environ.get("PREFLAB_LESSONS", "").split()
if ONLY:
    LESSONS = [p for p in LESSONS if p.name[:2] in ONLY]
FAILURE_MODES = [p for p in LESSONS if 8 <= int(p.name[:2]) <= 14]
AFTER_DPO = [p for p in LESSONS if 15 <= int(p.name[:2]) <= 18]
OTHER_SEEDS = FAILURE_MODES + AFTER_DPO


# Run before a lesson's own cells (and removed from the notebook afterwards): every figure drawn,
# at the moment it is rendered, is checked for axes that show data without naming both axes.
# Categorical axes count as named when their tick labels are words, a shared axis (twinx, sharex)
# when one of its siblings is named; axes turned off are skipped.
AUDIT_CELL = """
import matplotlib.backend_bases as _bb
_PREFLAB_UNLABELLED = []
def _preflab_named(axis, label, siblings):
    if label.strip() or any(s.get_xlabel().strip() if axis.axis_name == "x" else s.get_ylabel().strip() for s in siblings):
        return True
    ticks = [t.get_text() for t in axis.get_ticklabels() if t.get_text().strip() and "$" not in t.get_text()]
    return bool(ticks) and any(c.isalpha() for t in ticks for c in t.replace("e", "").replace("E", ""))
def _preflab_audit(self, *args, _print=_bb.FigureCanvasBase.print_figure, **kwargs):
    for ax in self.figure.axes:
        shows = ax.lines or ax.collections or ax.patches or ax.images or ax.containers
        if not ax.axison or ax.get_label() == "<colorbar>" or not shows:
            continue
        for name, axis, label, shared in (("x", ax.xaxis, ax.get_xlabel(), ax.get_shared_x_axes()),
                                          ("y", ax.yaxis, ax.get_ylabel(), ax.get_shared_y_axes())):
            if not _preflab_named(axis, label, shared.get_siblings(ax)):
                _PREFLAB_UNLABELLED.append(f"{name}-axis of '{ax.get_title() or self.figure.get_suptitle() or '(untitled)'}'")
    return _print(self, *args, **kwargs)
if not getattr(_bb.FigureCanvasBase.print_figure, "_preflab", False):
    _preflab_audit._preflab = True
    _bb.FigureCanvasBase.print_figure = _preflab_audit
"""
AUDIT_REPORT = "import json as _json; print('FIGURE AUDIT', _json.dumps(_PREFLAB_UNLABELLED))"


def execute(path: Path, seed: int) -> tuple[nbformat.NotebookNode, float]:
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(AUDIT_CELL))
    nb.cells.append(nbformat.v4.new_code_cell(AUDIT_REPORT))
    env_seed = os.environ.get("PREFLAB_SEED")
    os.environ["PREFLAB_SEED"] = str(seed)
    t0 = time.time()
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if env_seed is None:
            os.environ.pop("PREFLAB_SEED", None)
        else:
            os.environ["PREFLAB_SEED"] = env_seed
    audit = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []))
    nb.cells = nb.cells[1:-1]
    nb.metadata["figure_audit"] = audit.strip()
    return nb, time.time() - t0


def figure_problems(nb) -> list[str]:
    """Axes without a name (from the audit cell), and figures with no caption: the caption is what
    `make course` prints under each figure (preflab.course), the first paragraph of the markdown after it."""
    audit = nb.metadata.get("figure_audit", "")
    assert audit.startswith("FIGURE AUDIT"), f"the figure audit did not run: {audit!r}"
    problems = [f"unlabelled {a}" for a in json.loads(audit[len("FIGURE AUDIT"):])]
    problems += [f"figure {k} has no caption (a markdown paragraph right after it saying what to see)"
                 for k, (_, caption) in enumerate(_figures(nb), start=1) if len(caption.split()) < 8]
    return problems


def claims_of(nb) -> list[str]:
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    return [line for line in text.splitlines() if line.startswith("CLAIM ")]


@pytest.mark.lesson
@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs_and_its_claim_holds(path):
    nb, seconds = execute(path, seed=0)
    claims = claims_of(nb)
    print(f"{path.name}: {seconds:.1f} s; " + "; ".join(claims))
    assert claims, f"{path.name} has no check cell (preflab.claims.check) in its output"
    assert all(c.startswith("CLAIM PASS") for c in claims), claims
    assert not figure_problems(nb), figure_problems(nb)


@pytest.mark.slow
@pytest.mark.lesson
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("path", OTHER_SEEDS, ids=[p.stem for p in OTHER_SEEDS])
def test_failure_mode_claims_hold_on_other_seeds(path, seed):
    nb, seconds = execute(path, seed=seed)
    claims = claims_of(nb)
    print(f"{path.name} seed {seed}: {seconds:.1f} s; " + "; ".join(claims))
    assert claims and all(c.startswith("CLAIM PASS") for c in claims), claims


def test_lessons_are_numbered_and_clean():
    names = [p.name for p in sorted((ROOT / "lessons").glob("*.ipynb"))]
    assert names, "no lessons found"
    for p in sorted((ROOT / "lessons").glob("*.ipynb")):
        nb = nbformat.read(p, as_version=4)
        for c in nb.cells:
            if c.cell_type == "code":
                assert not c.get("outputs") and c.get("execution_count") is None, f"{p.name}: outputs not cleared"
