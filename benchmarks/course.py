"""Benchmark 3: the course itself, each lesson's runtime and peak memory, from ``make course``.

``make course`` (``python -m tools.course --out build``) executes every lesson headless and
writes ``build/course.json`` with, per lesson, ``runtime_s`` (wall time of the whole notebook,
kernel start included), ``peak_mb`` (largest resident memory of the kernel and its children) and
``status``. This benchmark reads that file; it does not run the course (that takes longer than
the whole bench budget) unless ``--with-course`` asks for it.

Targets (design.md): every lesson <= 3 min, the whole course <= 30 min, peak memory <= 2 GB,
on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import REPO, row

LESSON_S, COURSE_S, PEAK_MB = 180.0, 1800.0, 2048.0


def run(quick: bool = False, course_json: str | Path | None = None, with_course: bool = False) -> dict:
    path = Path(course_json) if course_json else REPO / "build" / "course.json"
    if with_course:
        from tools.course import run_course

        run_course(REPO / "lessons", path.parent, progress=True)
    if not path.exists():
        msg = (f"{path} is missing: run `make course` first (about 15-30 min), then `make bench` again, "
               f"or run `python -m benchmarks.run --only course --with-course`")
        return {"missing": str(path), "message": msg,
                "rows": [row("course", "course.json", "missing: run `make course`", "", None)]}
    data = json.loads(path.read_text())
    lessons = data.get("lessons", [])
    rows, out = [], []
    for les in lessons:
        rt, mb, status = float(les.get("runtime_s") or 0), float(les.get("peak_mb") or 0), les.get("status", "?")
        ok = rt <= LESSON_S and mb <= PEAK_MB and status == "passed"
        out.append({"lesson": les.get("lesson"), "status": status, "runtime_s": rt, "peak_mb": mb,
                    "runtime_ok": rt <= LESSON_S, "memory_ok": mb <= PEAK_MB})
        rows.append(row("course", f"{les.get('lesson')} ({status})", f"{rt:.0f} s, {mb:.0f} MB",
                        "<= 180 s, <= 2048 MB, passed", ok))
    total = float(data.get("total_runtime_s") or sum(x["runtime_s"] for x in out))
    peak = max((x["peak_mb"] for x in out), default=0.0)
    rows.append(row("course", f"whole course ({len(out)} lessons)", f"{total:.0f} s", "<= 1800 s", total <= COURSE_S))
    rows.append(row("course", "largest peak memory", f"{peak:.0f} MB", "<= 2048 MB", peak <= PEAK_MB))
    return {"source": str(path), "started": data.get("started"), "seed": data.get("seed"), "lessons": out,
            "total_runtime_s": total, "peak_mb": peak,
            "all_within_targets": all(x["runtime_ok"] and x["memory_ok"] and x["status"] == "passed" for x in out)
            and total <= COURSE_S, "rows": rows}
