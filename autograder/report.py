"""Write: ``grades.csv``, per-student feedback pages, and the record of grades kept (state.json).

The CSV is safe to open in a spreadsheet: a cell that would start a formula (``=``, ``+``,
``-``, ``@``, a tab or a carriage return) is written with a leading apostrophe. Feedback pages
are built from the grader's structured results, never from a notebook's outputs, and escape
everything: a student can print what they like, it never reaches the page. Hidden checks are
named with their points and why they failed, without their expected values or code.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

FIELDS = ["student_id", "exercise", "score", "max_score", "status", "reason",
          "auto_score", "auto_max_score", "manual_score", "file", "graded_at"]
STATUSES = ("ok", "needs_manual", "timeout", "error", "invalid", "missing")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the instructor alone, never through a
    link planted at the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def csv_cell(v) -> str:
    """A CSV cell a spreadsheet shows as text, never evaluates."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:g}"
    s = str(v)
    return "'" + s if s.startswith(_FORMULA) else s


def fmt(x) -> str:
    return "" if x is None else f"{x:g}"


@dataclass
class Row:
    """One line of grades.csv (and one feedback page)."""

    student_id: str
    exercise: str
    status: str
    reason: str
    score: float | None = None
    max_score: float | None = None
    auto_score: float | None = None
    auto_max_score: float | None = None
    manual_score: float | None = None
    file: str = ""
    graded_at: str = ""
    tests: list = field(default_factory=list)
    note: str = ""
    """A line for the feedback page only (e.g. what this run gave when an earlier grade was kept)."""


def write_csv(path: Path, rows: list[Row]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(FIELDS)
    for r in rows:
        w.writerow([csv_cell(getattr(r, f)) for f in FIELDS])
    write_private(path, buf.getvalue())


def _check_line(r: dict) -> tuple[str, str]:
    """(css class, text) of one check on the feedback page."""
    pts = r.get("points") or 0.0
    got = pts if r.get("ok") else 0.0
    label = r["name"] if not r.get("hidden") or r["name"].startswith("hidden") else f"hidden: {r['name']}"
    text = f"{label} ({got:g}/{pts:g})"
    if not r.get("ok"):
        why = r.get("message") or "failed"
        if not r.get("hidden") and r.get("expected"):
            why = f"expected {r['expected']}, {why}"
        text += f": {why}"
    return ("pass" if r.get("ok") else "fail"), text


def feedback_html(row: Row) -> str:
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(row.exercise)}: {e(row.student_id)}</title>",
             "<style>body{font-family:sans-serif;max-width:52em;margin:2em auto}"
             ".pass{color:#17692e}.fail{color:#a4161a}.part{color:#8a5a00}li{margin:.15em 0}</style>",
             f"<h1>{e(row.exercise)}</h1><p>Student: <b>{e(row.student_id)}</b></p>",
             f"<p>Score: <b>{e(fmt(row.score) or '-')}</b> of {e(fmt(row.max_score) or '-')}"
             f" &middot; status: <b>{e(row.status)}</b></p><p>{e(row.reason or '')}</p>"]
    if row.note:
        parts.append(f"<p><i>{e(row.note)}</i></p>")
    if row.tests:
        parts.append("<h2>Tests</h2><p>Each check shows the points it earned. Hidden checks try other inputs and "
                     "edge cases: their names and results are shown, their code and expected values are not.</p>")
    for t in row.tests:
        got, mx = t.get("points"), t.get("max_points") or 0.0
        got = got if got is not None else 0.0
        cls = "pass" if got >= mx else ("part" if got > 0 else "fail")
        parts.append(f"<h3 class='{cls}'>{e(str(t.get('grade_id')))}: {e(fmt(got))} of {e(fmt(mx))} points</h3><ul>")
        for r in t.get("results", []):
            c, text = _check_line(r)
            parts.append(f"<li class='{c}'>{e(text)}</li>")
        for err in t.get("errors", []):
            names = ", ".join(err.get("checks") or [])
            what = f"not checked ({names}): " if names else "not checked: "
            parts.append(f"<li class='fail'>{e(what + err.get('message', ''))}</li>")
        if got < mx and not any(not r.get("ok") for r in t.get("results", [])) and not t.get("errors"):
            parts.append("<li class='fail'>points lost: the cell's checks did not all run</li>")
        for w in t.get("warnings", [])[:5]:
            parts.append(f"<li>your code warned (no points lost): {e(w)}</li>")
        parts.append("</ul>")
    return "\n".join(parts) + "\n"


def write_feedback(path: Path, row: Row) -> None:
    write_private(path, feedback_html(row))


# ----------------------------------------------------------------------------- state: the grades kept
def load_state(path: Path) -> dict[tuple[str, str], dict]:
    """(student, exercise) -> {"kept": result dict or None, "history": [...]}."""
    if not path.exists():
        return {}
    raw = json.loads(path.read_text())
    if isinstance(raw, dict) and "entries" in raw:
        return {(e["student"], e["exercise"]): {"kept": e.get("kept"), "history": e.get("history", [])}
                for e in raw["entries"]}
    # the first format: keys "student<TAB>exercise"
    return {tuple(k.split("\t", 1)): v for k, v in raw.items() if "\t" in k}


def save_state(path: Path, state: dict[tuple[str, str], dict]) -> None:
    entries = [dict(student=s, exercise=a, kept=v.get("kept"), history=v.get("history", []))
               for (s, a), v in sorted(state.items())]
    write_private(path, json.dumps({"version": 2, "entries": entries}, indent=1, sort_keys=True))


def keep_best(prev: dict | None, new: dict) -> tuple[dict, bool]:
    """(state entry, kept the new result?): the best scored result ever given is kept; a
    result without a score never replaces one with a score."""
    kept = (prev or {}).get("kept")
    history = ((prev or {}).get("history") or [])[-19:] + [
        {k: new.get(k) for k in ("graded_at", "status", "score", "sha256", "file")}]
    if new.get("score") is not None and (kept is None or kept.get("score") is None or new["score"] >= kept["score"]):
        return dict(kept=new, history=history), True
    if kept is None and new.get("score") is None:
        return dict(kept=None, history=history), False
    return dict(kept=kept, history=history), False
