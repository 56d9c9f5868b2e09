"""Run the whole course headless: ``make course`` = ``python -m tools.course --out build``.

Every ``lessons/NN_*.ipynb`` is executed in order, each in a fresh ``python3`` kernel (the
interpreter running this module, so the course's virtual environment) with the lessons folder
as working directory and ``PREFLAB_SEED`` passed through (``--seed`` sets it). One failing
lesson does not stop the others; the exit code is non-zero if any lesson failed.

What it writes under ``--out`` (default ``build``)::

    lessons/NN_name.ipynb   the executed notebook (outputs kept)
    lessons/NN_name.html    the same, rendered by nbconvert
    lessons/NN_name.kernel.log  the kernel process's own stdout/stderr (crash messages)
    figures/NN_k.png        every image/png output of lesson NN (widget outputs included), k = 1, 2, ...
    index.html              the gallery: per lesson, its figures, its claims, and whether each held
    course.json             machine-readable results (below); ``make bench`` reads it

A lesson's claims are the lines its check cell prints through :func:`preflab.claims.check`
(``CLAIM PASS | name | detail``); they are read back with :func:`preflab.claims.parse_claims`.

Status of a lesson:

    passed   every cell ran and every claim it printed held
    failed   a claim did not hold (its check cell raised ``ClaimFailed``)
    error    a cell raised something else (the traceback's last line is kept)
    timeout  a cell ran longer than ``--timeout`` seconds

Runtime is the wall time of the whole notebook, kernel start included. Peak memory is the
largest resident set size the kernel reached: the maximum of the kernel's own high-water mark
(``VmHWM`` in ``/proc/<pid>/status``) and of the summed RSS of the kernel and its child
processes, sampled every 0.1 s.

``course.json``::

    {"seed": "0" | null, "started": ISO time, "total_runtime_s": float, "passed": bool,
     "lessons": [{"lesson": "03_bradley_terry", "number": "03", "title": str,
                  "status": "passed", "runtime_s": float, "peak_mb": float,
                  "claims": [{"status": "PASS", "name": str, "detail": str, "asserted": bool}, ...],
                  "figures": ["figures/03_1.png", ...], "captions": [str, ...],
                  "notebook": "lessons/03_bradley_terry.ipynb", "html": "lessons/03_bradley_terry.html",
                  "error": str | null,
                  "profile": {"training": s, "sampling": s, "evaluation": s, "loading": s, "other": s,
                              "gpu_peak_mb": MiB | null,
                              "slowest_cells": [{"cell": index, "seconds": s, "starts": first line}, ...]}},
                 ...]}

``profile`` charges each second of a lesson to the innermost kind of library work running (see
:data:`PROFILE_CELL`); the table printed at the end shows it per lesson.

Paths inside ``course.json`` are relative to ``--out``.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import html
import json
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from preflab.claims import parse_claims

LESSON_RE = re.compile(r"^(\d{2})_[A-Za-z0-9_\-]+\.ipynb$")
DEFAULT_TIMEOUT = 600  # seconds per cell


# ----------------------------------------------------------------------------------------------
# finding lessons


def find_lessons(lessons_dir: str | Path, only: list[str] | None = None) -> list[Path]:
    """The ``NN_*.ipynb`` notebooks of ``lessons_dir`` in number order, optionally a subset.

    ``only`` holds lesson numbers ("03", "3") or notebook names ("03_bradley_terry").
    """
    lessons_dir = Path(lessons_dir)
    if not lessons_dir.is_dir():
        raise ValueError(f"lessons folder {str(lessons_dir)!r} does not exist; run from the repository "
                         f"root or pass --lessons DIR")
    found = sorted(p for p in lessons_dir.iterdir() if LESSON_RE.match(p.name))
    if not found:
        raise ValueError(f"no lesson notebooks (NN_name.ipynb) in {str(lessons_dir)!r}")
    if not only:
        return found
    chosen = []
    for key in only:
        key = key.strip().removesuffix(".ipynb")
        if key.isdigit():
            key = f"{int(key):02d}"
        hits = [p for p in found if p.stem == key or p.name[:2] == key]
        if not hits:
            names = ", ".join(p.stem for p in found)
            raise ValueError(f"--only {key!r} matches no lesson; the lessons are: {names}")
        chosen += [p for p in hits if p not in chosen]
    return sorted(chosen)


# ----------------------------------------------------------------------------------------------
# peak memory of the kernel


def _vm_hwm_kb(pid: int) -> int:
    """The high-water mark of a process's resident set (kB), 0 if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakMemory:
    """Sample a process tree's resident memory in a background thread; ``peak_mb`` is the maximum."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def _run(self, pid: int) -> None:
        try:
            import psutil
        except ImportError:  # pragma: no cover - psutil ships with jupyter's dependencies
            psutil = None
        proc = psutil.Process(pid) if psutil is not None else None
        while True:
            total = _vm_hwm_kb(pid) * 1024
            if proc is not None:
                try:
                    tree = [proc] + proc.children(recursive=True)
                    rss = 0
                    for p in tree:
                        try:
                            rss += p.memory_info().rss
                        except psutil.Error:
                            pass
                    total = max(total, rss)
                except psutil.Error:
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.peak_mb

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


# ----------------------------------------------------------------------------------------------
# the figure audit

# Run before a lesson's own cells (with ``audit=True``; removed from the notebook afterwards): every figure drawn,
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


# ----------------------------------------------------------------------------------------------
# the time profile

# Run before a lesson's own cells (with ``profile=True``; removed afterwards): the library's functions are
# wrapped so that each second of the lesson is charged to one kind of work, the innermost one running:
# sampling (``generate``), evaluation (held-out metrics, scoring pairs), training (every ``train_*``),
# loading (models from disk). The rest (building data, plotting, kernel start) is "other". A PPO step's
# rollouts count as sampling, its evaluation callback as evaluation, its updates as training.
PROFILE_KINDS = ("training", "sampling", "evaluation", "loading")
PROFILE_CELL = """
import functools as _ft, sys as _sys, time as _t
import preflab.model, preflab.evaluate, preflab.dpo, preflab.reward_model, preflab.best_of_n
import preflab.sft, preflab.ppo, preflab.grpo, preflab.kto, preflab.orpo, preflab.online_dpo, preflab.pretrain
_PREFLAB_PROFILE = {"training": 0.0, "sampling": 0.0, "evaluation": 0.0, "loading": 0.0}
_PREFLAB_STACK = []
def _preflab_timed(kind, fn):
    @_ft.wraps(fn)
    def timed(*args, **kwargs):
        now = _t.perf_counter()
        if _PREFLAB_STACK:  # the outer call's time so far is its own; it resumes when this one returns
            _PREFLAB_PROFILE[_PREFLAB_STACK[-1][0]] += now - _PREFLAB_STACK[-1][1]
        _PREFLAB_STACK.append([kind, now])
        try:
            return fn(*args, **kwargs)
        finally:
            end = _t.perf_counter()
            k, since = _PREFLAB_STACK.pop()
            _PREFLAB_PROFILE[k] += end - since
            if _PREFLAB_STACK:
                _PREFLAB_STACK[-1][1] = end
    return timed
def _preflab_kind(module, name):
    if name.startswith("train_"):
        return "training"
    if name == "generate":
        return "sampling"
    if name in ("load_policy", "load_reward_model"):
        return "loading"
    if module == "preflab.evaluate" or name in ("evaluate_pairs", "score_pairs", "pairwise_accuracy", "score"):
        return "evaluation"
    return None
_PREFLAB_WRAPPED = {}
for _m in [m for n, m in list(_sys.modules.items()) if n.startswith("preflab.")]:
    for _name, _fn in list(vars(_m).items()):
        if callable(_fn) and getattr(_fn, "__module__", "").startswith("preflab.") and not isinstance(_fn, type):
            _kind = _preflab_kind(_fn.__module__, _name)
            if _kind is not None:
                if _fn not in _PREFLAB_WRAPPED:
                    _PREFLAB_WRAPPED[_fn] = _preflab_timed(_kind, _fn)
                setattr(_m, _name, _PREFLAB_WRAPPED[_fn])
"""
PROFILE_REPORT = """
import json as _json, torch as _torch
_gpu = round(_torch.cuda.max_memory_allocated() / 2**20, 1) if _torch.cuda.is_available() else None
print('TIME PROFILE', _json.dumps({"seconds": _PREFLAB_PROFILE, "gpu_peak_mb": _gpu}))
"""


def cell_seconds(cell) -> float | None:
    """How long a cell ran, from the timestamps nbclient records in its metadata (None if it did not run)."""
    ex = cell.get("metadata", {}).get("execution", {})
    start, end = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = lambda t: _dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


def time_profile(report_text: str, nb, runtime_s: float) -> dict:
    """Seconds per kind of work (from the profile cell's report), "other" for the rest of the runtime, the peak
    GPU memory (MiB, None without a GPU) and the three slowest cells (index, seconds, first line)."""
    out = {}
    if report_text.startswith("TIME PROFILE"):
        report = json.loads(report_text[len("TIME PROFILE"):])
        out = {k: round(v, 1) for k, v in report["seconds"].items()}
        out["other"] = round(max(0.0, runtime_s - sum(out.values())), 1)
        out["gpu_peak_mb"] = report["gpu_peak_mb"]  # torch.cuda.max_memory_allocated; None without a GPU
    cells = [(i, cell_seconds(c), c.source.strip().splitlines()[0][:70] if c.source.strip() else "")
             for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    out["slowest_cells"] = [{"cell": i, "seconds": round(t, 1), "starts": first}
                            for i, t, first in sorted((c for c in cells if c[1] is not None), key=lambda c: -c[1])[:3]]
    return out




def figure_problems(audit_text: str, nb) -> list[str]:
    """Axes without a name (from the audit cell's report), and figures with no caption: the
    caption is what the gallery prints under each figure, the first paragraph of the markdown after it."""
    if not audit_text.startswith("FIGURE AUDIT"):
        return [f"the figure audit did not run: {audit_text[:200]!r}"]
    problems = [f"unlabelled {a}" for a in json.loads(audit_text[len("FIGURE AUDIT"):])]
    problems += [f"figure {k} has no caption (a markdown paragraph right after it saying what to see)"
                 for k, (_, caption) in enumerate(_figures(nb), start=1) if len(caption.split()) < 8]
    return problems


# ----------------------------------------------------------------------------------------------
# running one lesson


@dataclass
class LessonResult:
    lesson: str
    number: str
    title: str = ""
    status: str = "error"
    runtime_s: float = 0.0
    peak_mb: float = 0.0
    claims: list = field(default_factory=list)
    figures: list = field(default_factory=list)
    captions: list = field(default_factory=list)
    notebook: str = ""
    html: str = ""
    error: str | None = None
    figure_problems: list = field(default_factory=list)
    profile: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "passed"


def _title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def _stdout_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                parts.append(out.get("text", ""))
    return "".join(parts)


def _figures(nb) -> list[tuple[bytes, str]]:
    """Every image/png output with a caption: the first paragraph of the markdown cell right after it."""
    figs = []
    cells = nb.cells
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for i, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        pngs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") not in ("display_data", "execute_result"):
                continue
            data = out.get("data", {})
            if "image/png" in data:
                pngs.append(data["image/png"])
            view = data.get("application/vnd.jupyter.widget-view+json")
            if isinstance(view, dict) and view.get("model_id"):
                pngs += _widget_pngs(widgets, view["model_id"], set())
        if not pngs:
            continue
        caption = ""
        if i + 1 < len(cells) and cells[i + 1].cell_type == "markdown":
            first = cells[i + 1].source.strip().split("\n\n")[0]  # its first paragraph
            if not first.startswith("#"):
                caption = re.sub(r"\*{1,2}([^*\n]+)\*{1,2}", r"\1", " ".join(first.split()))
                if len(caption) > 400:
                    caption = caption[:397] + "..."
        for data in pngs:
            if isinstance(data, list):
                data = "".join(data)
            figs.append((base64.b64decode(data), caption))
    return figs


def _widget_pngs(state: dict, model_id: str, seen: set) -> list:
    """PNGs an executed widget shows: an Output widget's outputs, through its containers' children."""
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    w = state[model_id].get("state", {})
    pngs = [o["data"]["image/png"] for o in w.get("outputs", []) if "image/png" in o.get("data", {})]
    for child in w.get("children", []):
        if isinstance(child, str) and child.startswith("IPY_MODEL_"):
            pngs += _widget_pngs(state, child[len("IPY_MODEL_"):], seen)
    return pngs


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _error_summary(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    # CellExecutionError's text ends with the exception line ("ClaimFailed: ...")
    tail = [ln for ln in text if ln.strip() and not ln.startswith(("---", " "))]
    return (tail[-1] if tail else type(exc).__name__)[:500]


def _sliced_client_class():
    """nbclient's NotebookClient, waiting for each cell's reply in slices of
    ``shell_timeout_interval`` (5 s) up to the cell's deadline instead of in one poll as long as the
    whole timeout. After a cell that shows a widget (``interact``) the wake-up for the reply is
    sometimes missed (jupyter/nbclient#312), and the single poll then hands the reply over only when
    the timeout expires: lesson 03 lost exactly 600 s that way in a clean-clone CI, lesson 07 twice
    before. A missed wake-up now costs one slice. Everything else is nbclient's own."""
    import asyncio
    from queue import Empty

    from nbclient import NotebookClient
    from nbclient.client import timestamp
    from nbclient.exceptions import CellTimeoutError
    from nbclient.util import ensure_async

    class SlicedClient(NotebookClient):
        async def _async_poll_for_reply(self, msg_id, cell, timeout, task_poll_output_msg, task_poll_kernel_alive):
            deadline = None if timeout is None else time.monotonic() + timeout
            timed_out_reply = None
            while True:
                if timed_out_reply is not None:
                    msg = timed_out_reply
                    msg["parent_header"] = {"msg_id": msg_id}
                else:
                    try:
                        msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=self.shell_timeout_interval))
                    except Empty:
                        if deadline is not None and time.monotonic() >= deadline:
                            task_poll_kernel_alive.cancel()
                            await self._async_check_alive()
                            timed_out_reply = await self._async_handle_timeout(timeout, cell)
                        continue
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if self.record_timing:
                    cell["metadata"]["execution"]["shell.execute_reply"] = timestamp(msg)
                try:
                    await asyncio.wait_for(task_poll_output_msg, self.iopub_timeout)
                except (asyncio.TimeoutError, Empty):
                    if self.raise_on_iopub_timeout:
                        task_poll_kernel_alive.cancel()
                        raise CellTimeoutError.error_from_timeout_and_cell(
                            "Timeout waiting for IOPub output", self.iopub_timeout, cell) from None
                    self.log.warning("Timeout waiting for IOPub output")
                task_poll_kernel_alive.cancel()
                return msg

    return SlicedClient


def _remove_injected(nb) -> str:
    """Remove the first and last cells (ones the runner added) and return what the last one printed."""
    report = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", [])).strip()
    nb.cells = nb.cells[1:-1]
    return report


def run_lesson(path: Path, out: Path, timeout: int = DEFAULT_TIMEOUT, seed: str | None = None,
               audit: bool = False, profile: bool = False) -> LessonResult:
    """Execute one lesson notebook in a fresh kernel; write its executed notebook, HTML and figures.

    With ``audit``, every figure is checked as it renders (both axes named) and needs a caption;
    what is wrong lands in ``figure_problems``. The course's tests run lessons this way. With ``profile``,
    ``profile`` says where the time went (:data:`PROFILE_CELL`), as ``make course`` reports it."""
    import nbformat
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    path = Path(path)
    res = LessonResult(lesson=path.stem, number=path.name[:2])
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:
        res.error = f"{path.name} is not a readable notebook ({type(e).__name__}: {e})"[:500]
        return res
    res.title = _title(nb)
    if audit:
        nb.cells.insert(0, nbformat.v4.new_code_cell(AUDIT_CELL))
        nb.cells.append(nbformat.v4.new_code_cell(AUDIT_REPORT))
    if profile:
        nb.cells.insert(0, nbformat.v4.new_code_cell(PROFILE_CELL))
        nb.cells.append(nbformat.v4.new_code_cell(PROFILE_REPORT))
    env = dict(os.environ)
    if seed is not None:
        env["PREFLAB_SEED"] = str(seed)
    # inline figures, whatever the caller's environment says (the gallery needs the PNGs)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

    monitor = PeakMemory()
    client = _sliced_client_class()(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent.resolve())}})

    def on_start(notebook=None, **_):
        pid = getattr(client.km.provisioner, "pid", None) if client.km is not None else None
        if pid:
            monitor.start(pid)

    client.on_notebook_start = on_start
    lessons_out = out / "lessons"
    lessons_out.mkdir(parents=True, exist_ok=True)
    # the kernel process's own stdout/stderr (not the cells' output, which travels over zmq)
    kernel_log = open(lessons_out / f"{path.stem}.kernel.log", "wb")
    t0 = time.perf_counter()
    try:
        client.execute(env=env, stdout=kernel_log, stderr=kernel_log)
        res.status = "passed"
    except CellTimeoutError as e:
        res.status, res.error = "timeout", f"a cell ran longer than {timeout} s ({_error_summary(e)})"
    except CellExecutionError as e:
        res.error = _error_summary(e)
        res.status = "failed" if getattr(e, "ename", "") == "ClaimFailed" or "ClaimFailed" in str(e) else "error"
    except DeadKernelError as e:
        res.status, res.error = "error", (f"the kernel died (out of memory?): {_error_summary(e)}; "
                                          f"see lessons/{path.stem}.kernel.log")
    except Exception as e:  # a broken notebook or kernel start must not stop the course
        res.status, res.error = "error", f"{type(e).__name__}: {e}"[:500]
    finally:
        res.runtime_s = time.perf_counter() - t0
        res.peak_mb = monitor.stop()
        kernel_log.close()

    if profile:  # its cells were added last, around the audit's: removed first
        res.profile = time_profile(_remove_injected(nb), nb, res.runtime_s)
    if audit:
        report = _remove_injected(nb)
        res.figure_problems = figure_problems(report, nb) if res.status in ("passed", "failed") else []
    res.claims = parse_claims(_stdout_text(nb))
    if res.status == "passed" and any(c["status"] == "FAIL" and c.get("asserted", True) for c in res.claims):
        res.status = "failed"  # a FAIL line that did not raise still fails the lesson (unless only reported)

    nb_path = lessons_out / path.name
    nbformat.write(nb, nb_path)
    res.notebook = nb_path.relative_to(out).as_posix()
    try:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
        html_path = nb_path.with_suffix(".html")
        html_path.write_text(body, encoding="utf-8")
        res.html = html_path.relative_to(out).as_posix()
    except Exception as e:  # HTML is a convenience; never lose the run over it
        res.error = (res.error + "; " if res.error else "") + f"HTML export failed: {e}"[:300]

    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob(f"{res.number}_*.png"):
        old.unlink()
    for k, (png, caption) in enumerate(_figures(nb), start=1):
        fig_path = fig_dir / f"{res.number}_{k}.png"
        fig_path.write_bytes(png)
        res.figures.append(fig_path.relative_to(out).as_posix())
        res.captions.append(caption)
    return res


# ----------------------------------------------------------------------------------------------
# reporting


def format_table(results: list[LessonResult]) -> str:
    """The closing table: one row per lesson, then the total."""
    kinds = PROFILE_KINDS + ("other",)
    rows = [("lesson", "status", "runtime s", "peak MB", "check", "s: train/sample/eval/load/other")]
    for r in results:
        n_pass = sum(c["status"] == "PASS" for c in r.claims)
        check = f"{n_pass}/{len(r.claims)} claims" if r.claims else "no claims"
        spent = "/".join(f"{r.profile[k]:.0f}" for k in kinds) if "other" in r.profile else ""
        rows.append((r.lesson, r.status, f"{r.runtime_s:.1f}", f"{r.peak_mb:.0f}", check, spent))
    total = sum(r.runtime_s for r in results)
    peak = max((r.peak_mb for r in results), default=0.0)
    n_ok = sum(r.ok for r in results)
    profiled = [r for r in results if "other" in r.profile]
    spent = "/".join(f"{sum(r.profile[k] for r in profiled):.0f}" for k in kinds) if profiled else ""
    rows.append(("total", f"{n_ok}/{len(results)} passed", f"{total:.1f}", f"{peak:.0f} (max)", "", spent))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 3, 5}

    def fmt(row):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(rows[0]), sep] + [fmt(r) for r in rows[1:-1]] + [sep, fmt(rows[-1])])


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .meta{color:#666;margin-top:0}
table.summary{border-collapse:collapse;margin:1em 0} table.summary td,table.summary th{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left}
section{border-top:2px solid #eee;margin-top:2em;padding-top:.5em}
.badge{display:inline-block;padding:.1em .6em;border-radius:1em;font-size:.85em;font-weight:600;color:#fff;vertical-align:middle}
.passed,.PASS{background:#1a7f37}.failed,.FAIL{background:#cf222e}.error,.timeout{background:#9a6700}
ul.claims{list-style:none;padding-left:0} ul.claims li{margin:.3em 0}
.detail{color:#555;font-family:ui-monospace,monospace;font-size:.9em}
.figs{display:flex;flex-wrap:wrap;gap:1em} figure{margin:0;max-width:520px} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444} .err{color:#cf222e;font-family:ui-monospace,monospace;font-size:.9em}
"""


def write_gallery(results: list[LessonResult], out: Path, meta: dict) -> Path:
    """``index.html``: per lesson, its figures with the claims they support and whether each held."""
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>preflab course gallery</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>Preference optimization course: figures and claims</h1>",
             f"<p class='meta'>Run {e(meta['started'])} · seed {e(str(meta['seed'] if meta['seed'] is not None else '0 (default)'))}"
             f" · {sum(r.ok for r in results)}/{len(results)} lessons passed · total {meta['total_runtime_s']:.0f} s</p>",
             "<table class='summary'><tr><th>lesson</th><th>status</th><th>runtime s</th><th>peak MB</th><th>claims held</th></tr>"]
    for r in results:
        n_pass = sum(c["status"] == "PASS" for c in r.claims)
        parts.append(f"<tr><td><a href='#l{e(r.number)}'>{e(r.lesson)}</a></td><td><span class='badge {e(r.status)}'>"
                     f"{e(r.status)}</span></td><td>{r.runtime_s:.1f}</td><td>{r.peak_mb:.0f}</td>"
                     f"<td>{n_pass}/{len(r.claims)}</td></tr>")
    parts.append("</table>")
    for r in results:
        link = f" · <a href='{e(r.html)}'>open the executed lesson</a>" if r.html else ""
        parts.append(f"<section id='l{e(r.number)}'><h2>{e(r.title or r.lesson)} "
                     f"<span class='badge {e(r.status)}'>{e(r.status)}</span></h2>"
                     f"<p class='meta'>{e(r.lesson)}.ipynb · {r.runtime_s:.1f} s · peak {r.peak_mb:.0f} MB{link}</p>")
        if r.claims:
            parts.append("<p>The claims these figures support, as checked on this run:</p><ul class='claims'>")
            for c in r.claims:
                held = "held" if c["status"] == "PASS" else "did not hold"
                parts.append(f"<li><span class='badge {e(c['status'])}'>{held}</span> {e(c['name'])} "
                             f"<span class='detail'>{e(c['detail'])}</span></li>")
            parts.append("</ul>")
        else:
            parts.append("<p class='meta'>No claim was checked on this run.</p>")
        if r.error:
            parts.append(f"<p class='err'>{e(r.error)}</p>")
        if r.figures:
            parts.append("<div class='figs'>")
            for fig, cap in zip(r.figures, r.captions):
                parts.append(f"<figure><img src='{e(fig)}' alt='{e(cap or fig)}' loading='lazy'>"
                             f"<figcaption>{e(cap)}</figcaption></figure>")
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# the whole course


def run_course(lessons_dir: str | Path = "lessons", out: str | Path = "build", only: list[str] | None = None,
               seed: str | int | None = None, timeout: int = DEFAULT_TIMEOUT, progress: bool = True) -> dict:
    """Execute the lessons in order, write notebooks, HTML, figures, ``index.html`` and ``course.json``.

    Returns the dictionary written to ``course.json``; its ``passed`` is True when every lesson passed.
    """
    if timeout is not None and timeout <= 0:
        raise ValueError(f"--timeout must be a positive number of seconds per cell, got {timeout}")
    from tqdm.auto import tqdm

    paths = find_lessons(lessons_dir, only)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed = None if seed is None else str(seed)
    started = _dt.datetime.now().isoformat(timespec="seconds")
    results: list[LessonResult] = []
    bar = tqdm(paths, desc="course", unit="lesson", disable=not progress, file=sys.stderr)
    for path in bar:
        bar.set_postfix_str(path.stem)
        r = run_lesson(path, out, timeout=timeout, seed=seed, profile=True)  # seed None: the environment's passes through
        results.append(r)
        if not r.ok:
            tqdm.write(f"{r.lesson}: {r.status}: {r.error}", file=sys.stderr)
    bar.close()

    report = {
        "seed": seed if seed is not None else os.environ.get("PREFLAB_SEED"),
        "started": started,
        "only": list(only) if only else None,
        "total_runtime_s": round(sum(r.runtime_s for r in results), 2),
        "passed": all(r.ok for r in results),
        "lessons": [],
    }
    for r in results:
        d = asdict(r)
        d["runtime_s"] = round(r.runtime_s, 2)
        d["peak_mb"] = round(r.peak_mb, 1)
        report["lessons"].append(d)
    (out / "course.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_gallery(results, out, report)
    report["table"] = format_table(results)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.course",
                                 description="Execute every lesson headless into OUT (notebooks, HTML, figures, "
                                             "gallery, course.json) and print runtime and peak memory per lesson.")
    ap.add_argument("--out", default="build", help="output folder (default: build)")
    ap.add_argument("--lessons", default="lessons", help="folder of NN_name.ipynb lessons (default: lessons)")
    ap.add_argument("--only", nargs="+", metavar="NN", help="run only these lessons, e.g. --only 03 07")
    ap.add_argument("--seed", type=int, help="PREFLAB_SEED for every lesson (default: the environment's, else 0)")
    ap.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help=f"seconds per cell (default {DEFAULT_TIMEOUT})")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        report = run_course(args.lessons, args.out, only=args.only, seed=args.seed, timeout=args.timeout,
                            progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report["table"])
    print(f"\nwrote {Path(args.out) / 'index.html'} and {Path(args.out) / 'course.json'}")
    failed = [r["lesson"] for r in report["lessons"] if r["status"] != "passed"]
    if failed:
        print(f"{len(failed)} lesson(s) did not pass: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
